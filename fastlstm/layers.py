"""The public models: ``LSTM`` (one layer), ``Bidirectional`` and ``MultiLSTM`` (a stack).

This module validates every argument, allocates every output and dispatches to the
compiled kernels; the kernels trust it.  Maths and layouts: SPEC.md Part A.
"""

import copy
import numbers
import operator
import os
import time
import weakref
from typing import NamedTuple

import numpy as np

from . import _forward, _threads, _training
from ._scalars import unwrap as _scalar
from .init import check_random_state, glorot_uniform, orthogonal

__all__ = ["LSTMState", "LSTM", "Bidirectional", "MultiLSTM", "freeze"]

ACTIVATIONS = {"tanh": 0, "relu": 1, "sigmoid": 2, "linear": 3}
RECURRENT_ACTIVATIONS = {"sigmoid": 0, "hard_sigmoid": 1, "hard_sigmoid_keras2": 2}
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_INT_MAX = 2**31 - 1
# Input projection workspace per call, in elements: bounds memory for long sequences.
_WORKSPACE_ELEMENTS = 1 << 22
# Row blocks: a call whose batch holds at least this many multiply-adds per time step and
# row block is split into row blocks that run independently (and in parallel when
# n_threads > 1).  The split depends on the problem and the machine's usable cores only,
# never on n_threads, so every n_threads gives bit-identical results.
_MIN_FLOPS_PER_CHUNK_STEP = 20_000
_MIN_ROWS_PER_CHUNK = 4
_CHUNK_CORES = _threads.usable_cores()
# Packed-weight kernel (src/fl_packed.h): layers without projection, on CPUs with AVX2 + FMA
# (and its AVX-512 tiles on CPUs with AVX-512).  A call of fewer than
# _PACKED_MIN_WORK_THREADED multiply-adds runs on one thread.  Above, threads own blocks of
# rows (no synchronisation) when every thread gets one of the kernel's row tiles
# (_PACKED_ROW_TILE rows at most); with fewer rows, threads own blocks of hidden units (a
# spinning wait per step, 0.1-0.8 us by machine) if a step holds at least
# _PACKED_MIN_STEP_WORK_UNITS multiply-adds.  Measured on a 2-core AMD EPYC (Zen 5) against
# one thread, T = 50, I = H: batch 1, 128 Ki multiply-adds a step (H = 128) 1.19x faster on
# two threads, 32 Ki (H = 64) 0.6x; batch 4, 512 Ki 1.13x (both instruction sets).  Every
# split gives bit-identical results.
_PACKED_MIN_WORK_THREADED = 1 << 21
_PACKED_MIN_STEP_WORK_UNITS = 1 << 17
_PACKED_ROW_TILE = 6
# With at most _PACKED_UNITS_MAX_ROWS rows a thread and packed weights (W and U) of at
# least _PACKED_UNITS_MIN_WEIGHT_BYTES, threads own units although rows would do.  Owning
# 4 rows, a thread reads all the weights from L2 (or beyond it) at every step for one
# 4-row tile; owning units, it reads half of them, runs every row's tile of a panel while
# the panel is in L1, and reads only the panels it packed itself.  While backing off
# (below), or with more threads than usable cores, such calls keep rows.  Measured on the
# same machine (1 MiB of L2 a core), units against rows, batch 8, float32, interleaved in
# one process: H = 256, I = 128 (1.5 MiB) 1.10-1.13x at T = 100 and 1.10x at T = 1000;
# H = 512, I = 256 1.17x; H = 192, I = 128 (0.9 MiB) 1.02x; H = 128, I = 64 (384 KiB)
# 1.01-1.06x at T = 100 but 0.94-1.01x at T = 1000-2000; H = 64 0.74-0.83x.
_PACKED_UNITS_MAX_ROWS = 4
_PACKED_UNITS_MIN_WEIGHT_BYTES = 1 << 20
# Threads owning units wait for each other at every step.  With more busy threads than
# cores (say, two processes of two threads on two cores) a partner is often not running,
# and the kernel reports those waits (over ~50 us each; they cost far more than the step).
# A call where more than 1 in _UNIT_SPLIT_SLOW_SHARE steps had one makes the next calls
# run on one thread (same results) for a while: _UNIT_SPLIT_BACKOFF seconds at first,
# doubled each time it happens again, up to _UNIT_SPLIT_BACKOFF_MAX, and halved by each
# split call that ran without them.
# The same holds for the threads that share the columns of a one-row product (at least
# _VECMAT_MIN_THREADED multiply-adds: FL_PK_VECMAT_MIN_THREADED in src/fl_packed.h).
_UNIT_SPLIT_SLOW_SHARE = 20
_VECMAT_MIN_THREADED = 1 << 18
_UNIT_SPLIT_BACKOFF = 1.0
_UNIT_SPLIT_BACKOFF_MAX = 10.0
_unit_split = {"until": 0.0, "delay": 0.0}
# The packed kernel computes the input products of a block of steps ahead of the
# recurrence, in a buffer of at most this many elements (at least one step).
_PACKED_BLOCK_ELEMENTS = 1 << 18
# Threads owning rows each pack a whole copy of the weights for themselves when the packed
# weights take at most this many bytes (a core's L2 here): no packing barrier, and no line
# of the copy written by one core and read by another at every call.  Above it, the gain
# fades (0.98-1.02x at the medium shape) and copies take L3 space from each other
# (bench/RESULTS.md, round from d558a8c).
_PACKED_OWN_MAX_BYTES = 1 << 20
_PACKED = _forward.packed_isa() >= 1
# Small kernel (src/fl_small.h, one row at a time, nothing allocated): layers without
# projection with H <= 128, for calls of at most this many multiply-adds in all.
_SMALL_MAX_WORK = 1 << 16
_SMALL_MAX_H = _forward.small_max_hidden()
# Tests and benchmarks: None (automatic), "blas", "small", "packed", "packed-rows",
# "packed-units".
_FORCE_PATH = None


class LSTMState(NamedTuple):
    """The state of one layer: cell ``c`` (N, H) and output ``h`` (N, Hout), TF's order."""

    c: np.ndarray
    h: np.ndarray


# ---------------------------------------------------------------------------------------
# argument checks (shared by every model)


def _check_dtype(dtype):
    if dtype is None:        # (np.dtype(None) would be float64)
        raise TypeError("dtype must be float32 or float64, got None")
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in _DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


class _LengthsDtypeError(ValueError, TypeError):
    """Non-integer ``lengths``: a ValueError (SPEC.md Part A: lengths must be integers in
    [0, T], others are a ValueError) that is also a TypeError (a wrong dtype)."""


def _check_size(value, name, allow_none=False):
    if value is None and allow_none:
        return None
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    if 4 * int(value) > _INT_MAX:
        raise ValueError(f"{name}={value} is too large for 32-bit BLAS indices")
    return int(value)


def _check_forget_bias(value, name="forget_bias", dtype=None):
    """forget_bias as a float: a real number (a 0-d array too, as np.load gives it), finite
    (and, given the layer's dtype, within its range: it becomes a bias value)."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {value!r}")
    value = float(value)
    limit = float(np.finfo(dtype if dtype is not None else np.float64).max)
    if not abs(value) <= limit:      # also NaN
        raise ValueError(f"{name} must be a finite float"
                         + (f" within {np.dtype(dtype).name}'s range" if dtype is not None
                            else "") + f", got {value}")
    return value


def _check_clip(value, name):
    if value is None:
        return None
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be None or a non-negative float, got {value!r}")
    value = float(value)
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"{name} must be None or a non-negative float, got {value}")
    return value


def _check_reverse(value, name):
    if value is True or value is False:     # the common case, checked first (per call)
        return value
    value = _scalar(value)
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _check_choice(value, name, choices):
    try:
        known = value in choices
    except TypeError:       # unhashable: a list, a dict
        known = False
    if not known:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def _fixed(name, why):
    """A read-only attribute kept in ``_<name>``, fixed when the model is built."""
    def fset(self, value):
        raise AttributeError(f"{name} cannot be changed after the {type(self).__name__} is "
                             f"built ({why}): build a new one")

    # (attrgetter: a C-level read, as fast as a plain attribute's, on the hot call paths)
    return property(operator.attrgetter("_" + name), fset, doc=f"{name} (read-only: {why}).")


def _checked(name, check):
    """An attribute kept in ``_<name>`` that ``check(self, value)`` validates when set."""
    key = "_" + name

    def fset(self, value):
        # (object.__setattr__, not self.__dict__[key]: reading __dict__ makes CPython keep
        # the instance's attributes in a dict, slower to read on every call)
        object.__setattr__(self, key, check(self, value))

    return property(operator.attrgetter(key), fset)


def _refuse_masked(value, name, hint):
    """A masked array with masked entries is refused: ``np.asarray`` would drop its mask
    and read the values under it."""
    if isinstance(value, np.ma.MaskedArray) and np.ma.is_masked(value):
        raise TypeError(f"{name} is a masked array with masked entries, and a mask is not "
                        f"read: {hint}")


_NARROW_FLOATS = ("bfloat16", "float8", "float6", "float4")


def _widen_narrow_floats(arr):
    """ml_dtypes' narrow floats (bfloat16, float8_*, ...: Keras, JAX), which NumPy does not
    count as floats, as float32 (exactly); other arrays (NumPy or Dask) unchanged."""
    if arr.dtype.kind == "V" and arr.dtype.name.startswith(_NARROW_FLOATS):
        return arr.astype(np.float32)
    return arr


def _numeric_array(value, name):
    """``np.asarray`` that refuses what cannot be an LSTM input (complex, object, text,
    masked arrays with masked entries: their mask would be dropped)."""
    _refuse_masked(value, name, "fill them (np.ma.filled) and pass lengths= for padded steps")
    try:
        arr = _widen_narrow_floats(np.asarray(value))
    except (ValueError, TypeError, RuntimeError) as exc:   # RuntimeError: torch's tensors
        raise TypeError(f"{name} must be a numeric array: {exc}") from exc
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must hold real numbers (float, int or bool), got dtype {arr.dtype}"
        )
    return arr


def _overflow_threshold(dtype):
    """The smallest magnitude that a cast to ``dtype`` (round to nearest) makes infinite:
    the largest finite value plus half its spacing, 2**128 - 2**103 for float32."""
    fi = np.finfo(dtype)
    two = np.longdouble(2)
    return two ** fi.maxexp - two ** (fi.maxexp - fi.nmant - 2)


_F32_OVERFLOW = float(_overflow_threshold(np.float32))


def _check_fits(arr, dtype, name, fix=None):
    """Refuse finite values of a wider float array that the cast to ``dtype`` would make
    infinite (NumPy only warns).  NaN and infinities pass.  ``fix``: the advice at the end
    of the message (default: a float64 model for float32, scaling for float64)."""
    if arr.dtype.itemsize <= dtype.itemsize or arr.dtype.kind != "f" or not arr.size:
        return                              # (the common case first: a cheap test)
    found = _forward.reaches(arr, _F32_OVERFLOW) if dtype == np.float32 else None
    if found is False:                      # (a plain float64 array: one pass in C)
        return
    if found:
        limit = _F32_OVERFLOW
    else:                                   # long double, strided, other byte order
        limit = _overflow_threshold(dtype)
        if -limit < arr.min() and arr.max() < limit:     # NaN or inf: look closer
            return
    big = np.max(np.abs(arr[np.isfinite(arr)]), initial=0)
    if big >= limit:
        fits64 = big < _overflow_threshold(np.float64)
        if fix is None:
            fix = ("build the model with dtype=np.float64" if dtype == np.float32 and fits64
                   else "scale them")
        # a long double beyond float64's range prints as itself, not as inf
        shown = f"{float(big):.3g}" if fits64 else \
            np.format_float_scientific(big, precision=2, unique=False)
        raise ValueError(f"{name} holds values up to {shown}, beyond the range of "
                         f"{dtype.name} (largest {float(np.finfo(dtype).max):.8g}): they "
                         f"would become infinite; {fix}")


def _physical_memory():
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return None


_PHYS_MEMORY = _physical_memory()


def _check_memory(nbytes, what):
    """MemoryError naming the estimate, before anything is allocated, when a call's arrays
    could not fit in this machine's physical memory."""
    if _PHYS_MEMORY and nbytes > _PHYS_MEMORY:
        raise MemoryError(
            f"{what} needs about {nbytes / 2**30:.1f} GiB ({nbytes} bytes) for its input "
            f"copy and outputs, more than this machine's {_PHYS_MEMORY / 2**30:.1f} GiB "
            f"of memory")


_SMALL_INPUT = 1 << 16  # elements; below this an input can neither overflow nor exhaust memory


def _as_input(X, dtype, input_size, time_major, name="X", out_size=0):
    """Validate a sequence input; returns a C-contiguous array of ``dtype``, N, T.

    ``out_size``: numbers per row and step the caller will allocate for its outputs; with
    the input copy they must fit in memory (checked before anything is allocated).
    """
    if (type(X) is np.ndarray and X.dtype == dtype and X.ndim == 3
            and X.shape[2] == input_size and X.flags.c_contiguous and X.size < _SMALL_INPUT):
        # fast path for small, ready-made inputs: nothing to convert, nothing can overflow
        T, N = (X.shape[0], X.shape[1]) if time_major else (X.shape[1], X.shape[0])
        return X, N, T
    X = _numeric_array(X, name)
    layout = "[time, batch, features]" if time_major else "[batch, time, features]"
    if X.ndim != 3:
        raise ValueError(
            f"{name} must be 3-D {layout} with features={input_size}, got shape {X.shape}"
        )
    if X.shape[2] != input_size:
        raise ValueError(
            f"{name} must have {input_size} features on its last axis {layout}, "
            f"got shape {X.shape}"
        )
    T, N = (X.shape[0], X.shape[1]) if time_major else (X.shape[1], X.shape[0])
    for what, size in (("batch*time", N * T), ("batch*features", N * max(input_size, 1))):
        if size > _INT_MAX:
            raise ValueError(f"{name} of shape {X.shape} is too large: {what} = {size} must "
                             "stay below 2**31 for 32-bit BLAS")
    copy = 0 if X.flags.c_contiguous and X.dtype == dtype else input_size
    _check_memory(N * T * (copy + out_size) * np.dtype(dtype).itemsize,
                  f"{name} of shape {X.shape}")
    _check_fits(X, dtype, name)
    return np.ascontiguousarray(X, dtype=dtype), N, T


def _as_lengths(lengths, N, T, name="lengths"):
    """Validate per-row lengths; returns an int64 array, or None when all rows are full."""
    if lengths is None:
        return None
    _refuse_masked(lengths, name, "give every row's length")
    L = np.asarray(lengths)
    if L.dtype.kind not in "iu" and not (L.shape == (0,) and L.dtype.kind == "f"):
        # (an empty list, for an empty batch, is an empty float array)
        raise _LengthsDtypeError(f"{name} must be integers, got dtype {L.dtype}")
    if L.shape != (N,):
        raise ValueError(f"{name} must have shape ({N},) (one per batch row), got {L.shape}")
    if N and (L.min() < 0 or L.max() > T):
        raise ValueError(
            f"{name} must be in [0, T={T}], got values from {L.min()} to {L.max()}"
        )
    L = np.array(L, dtype=np.int64, order="C")     # a copy: a training cache keeps it
    if N and L.min() == T:
        return None
    return L


def _as_state(state, N, H, Hout, dtype, name):
    """A fresh, writable copy of a (c, h) state in ``dtype``; zeros when ``state`` is None."""
    if state is None:
        return np.zeros((N, H), dtype), np.zeros((N, Hout), dtype)
    if isinstance(state, np.ndarray) or not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError(f"{name} must be an LSTMState(c, h) or a (c, h) pair of arrays")
    c = _numeric_array(state[0], f"{name}.c")
    h = _numeric_array(state[1], f"{name}.h")
    if c.shape != (N, H):
        raise ValueError(f"{name}.c must have shape ({N}, {H}) [batch, hidden_size], got {c.shape}")
    if h.shape != (N, Hout):
        raise ValueError(f"{name}.h must have shape ({N}, {Hout}) [batch, output_size], got {h.shape}")
    _check_fits(c, dtype, f"{name}.c")
    _check_fits(h, dtype, f"{name}.h")
    return np.array(c, dtype=dtype, order="C", copy=True), np.array(h, dtype=dtype, order="C", copy=True)


def _unit_split_done(slow, T):
    """Back-off bookkeeping after a call whose threads owned units (see _unit_split)."""
    state = _unit_split
    if slow * _UNIT_SPLIT_SLOW_SHARE > T:
        state["delay"] = min(max(2 * state["delay"], _UNIT_SPLIT_BACKOFF),
                             _UNIT_SPLIT_BACKOFF_MAX)
        state["until"] = time.monotonic() + state["delay"]
    elif state["delay"]:
        state["delay"] = state["delay"] / 2 if state["delay"] > _UNIT_SPLIT_BACKOFF else 0.0


def _check_time_major(time_major):
    return _check_reverse(time_major, "time_major")    # the same check: a bool flag


# ---------------------------------------------------------------------------------------
# parameters in one flat buffer


def _lstm_layers(module):
    """The LSTM layers of a module, bottom first (an LSTM: itself)."""
    if isinstance(module, LSTM):
        return [module]
    if isinstance(module, Bidirectional):
        return [module.forward_layer, module.backward_layer]
    return [leaf for layer in module.layers for leaf in _lstm_layers(layer)]


class _Module:
    """Parameters kept as named views into one flat buffer (``flat_params``)."""

    # for MultiLSTM and Bidirectional (LSTM has its own)
    @property
    def n_threads(self):
        """OpenMP threads of every layer's kernels (None: the process default).  Setting it
        sets each layer's ``n_threads``; reading it gives their common value, and is a
        ValueError when the layers differ (read each layer's)."""
        values = {layer.n_threads for layer in _lstm_layers(self)}
        if len(values) > 1:
            raise ValueError(f"the layers have different n_threads ({sorted(values, key=str)}):"
                             " read each layer's n_threads")
        return values.pop()

    @n_threads.setter
    def n_threads(self, value):
        value = _threads.check_n_threads(value)     # checked once, before any layer changes
        for layer in _lstm_layers(self):
            layer.n_threads = value

    def _param_shapes(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _views(self, buffer):
        """Named views into ``buffer`` (1-D, this module's size), in parameter order."""
        views = {}
        offset = 0
        for name, shape in self._param_shapes():
            size = int(np.prod(shape))
            views[name] = buffer[offset:offset + size].reshape(shape)
            offset += size
        return views

    def _bind(self, buffer):
        """Make the parameters views into ``buffer`` (1-D, this module's size)."""
        views = self._views(buffer)
        self._flat = buffer
        return views

    def _children(self):
        """Sub-modules whose parameters fill this module's buffer, in order (containers)."""
        return ()

    # the container whose buffer holds this module's parameters (a weak reference), or None
    _owner = None
    # True: another container may take this one's children (which then stops being used)
    _lends_layers = False

    def _check_adoptable(self, children, names):
        """Refuse children that another live container holds (also a Bidirectional about
        to be nested beside one of its own halves): a layer's parameters are views into
        one buffer, so a second container would silently take them from the first, whose
        optimiser would then update a stale copy."""
        for child, name in zip(children, names):
            owner = child._owner() if child._owner is not None else None
            # (fastlstm.tf1's stacks lend their cells' layers: see MultiRNNCell there)
            if child._frozen:
                raise ValueError(
                    f"{name} is frozen (fastlstm.freeze): a container copies its layers' "
                    "parameters into its own buffer; build it from trainable layers and "
                    "freeze the container")
            if owner is not None and owner is not self and not owner._lends_layers:
                raise ValueError(
                    f"{name} already belongs to a {type(owner).__name__} (its parameters are "
                    "views into that model's buffer); pass copy.deepcopy(layer) for an "
                    "independent copy, or build the layer anew")

    def _adopt(self):
        for child in self._children():
            child._owner = weakref.ref(self)

    def _rebind(self, buffer):
        """Move the parameters (values kept) into ``buffer``, 1-D of this module's size."""
        if not self._children():
            buffer[...] = self._flat
            self._params = self._bind(buffer)
            return
        self._split(buffer, "_rebind")
        self._flat = buffer

    def _rebind_grads(self, buffer):
        """Move the gradients (values kept) into ``buffer``, laid out like ``flat_params``."""
        if not self._children():
            buffer[...] = self._gflat
        else:
            self._split(buffer, "_rebind_grads")
        self._gflat = buffer

    def _split(self, buffer, method):
        offset = 0
        for child in self._children():
            n = child.n_params
            getattr(child, method)(buffer[offset:offset + n])
            offset += n

    @property
    def n_params(self):
        return sum(int(np.prod(shape)) for _, shape in self._param_shapes())

    # a frozen model (fastlstm.freeze): read-only parameters, weights packed once
    _frozen = False
    _pack = None

    @property
    def frozen(self):
        """True for a model made by ``fastlstm.freeze``: its parameters are read-only."""
        return self._frozen

    def _lock(self):
        """Freeze this module and its children: the parameters move into read-only memory
        (a bytes object, so that no one can set the arrays' WRITEABLE flag back)."""
        self._use_buffer(np.frombuffer(self._flat.tobytes(), self._dtype))
        self._set_frozen()

    def _use_buffer(self, buffer):
        """Make the parameters views into ``buffer`` as it is (no copy)."""
        if not self._children():
            self._params = self._bind(buffer)
            return
        self._split(buffer, "_use_buffer")
        self._flat = buffer

    def _set_frozen(self):
        self._frozen = True
        self._pack = None
        for child in self._children():
            child._set_frozen()

    def _refuse_frozen(self, what):
        if self._frozen:
            raise ValueError(f"this model is frozen (fastlstm.freeze): {what} is refused, its "
                             "parameters are read-only; change the model it was frozen from "
                             "and freeze that again")

    @property
    def flat_params(self):
        """All parameters as one 1-D array; the named parameters are views into it."""
        return self._flat

    # the attributes a copy keeps (besides views, containers and scratch: see
    # __getstate__), read by name: reading an instance's __dict__ makes CPython 3.11 keep
    # its attributes in a dict from then on, slower to read at every call (~0.1 us, 10 %
    # of a tiny step); a subclass of the user's own is read through __dict__
    _STATE = ("_dtype", "_flat", "_gflat", "_frozen", "_lends_layers", "_extra")

    def _attributes(self):
        """The instance's attributes (a new dict), read by name (see _STATE)."""
        if type(self).__module__ in (__name__, "fastlstm.readout"):
            return {k: getattr(self, k) for k in self._STATE + self._TRANSIENT + self._extra
                    if hasattr(self, k)}
        return self.__dict__.copy()

    # attributes of the user's own set on a model (model.name = ...), kept by copies
    _extra = ()

    @classmethod
    def _is_extra(cls, name):
        return name not in cls._STATE and name not in cls._TRANSIENT and not hasattr(cls, name)

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)
        if name not in self._extra and self._is_extra(name):
            object.__setattr__(self, "_extra", self._extra + (name,))

    # what a copy drops: views rebuilt on loading, container links, scratch, packed weights
    _TRANSIENT = ("_params", "_owner", "_train_buffers", "_pack")

    def __getstate__(self):
        # pickle/deepcopy turn views into copies: keep the flat buffers only and rebuild
        # the views on loading, so that they stay live (spawn, joblib and Dask workers)
        state = self._attributes()
        state.pop("_params", None)
        state.pop("_owner", None)             # a copy belongs to no container
        state.pop("_train_buffers", None)     # training scratch (fastlstm/_training.py)
        state.pop("_pack", None)              # a frozen layer's packed weights: packed again
        return state

    def __copy__(self):
        # an independent model, as copy.deepcopy (and as NumPy's arrays copy their data):
        # a copy sharing the buffers (and a container's layers) could not keep the rule
        # that a layer belongs to one container; the pickle route re-adopted the layers,
        # taking them from the original, and a shared buffer went stale as soon as either
        # side was put into a container
        return copy.deepcopy(self)

    # attributes kept as "_<name>" behind a property (pickles made before keep "<name>")
    _PROPERTIES = ()

    def __setstate__(self, state):
        state = dict(state)
        for name in self._PROPERTIES:
            if name in state:
                state["_" + name] = state.pop(name)
        if isinstance(state.get("_layers"), list):
            state["_layers"] = tuple(state["_layers"])
        # buffers handed over read-only (pickle protocol 5 out-of-band, shared memory)
        # are copied: the parameters are written in place by training and set_weights
        for key in ("_flat", "_gflat"):
            buf = state.get(key)
            if isinstance(buf, np.ndarray) and not buf.flags.writeable:
                state[key] = buf.copy()
        for key, value in state.items():        # not through __dict__: see _STATE
            object.__setattr__(self, key, value)
        extra = tuple(k for k in state if k not in self._extra and self._is_extra(k))
        if extra:           # a pickle made before _extra, or a subclass's own attributes
            object.__setattr__(self, "_extra", self._extra + extra)
        self._rebind(self._flat)
        if "_gflat" in state:
            self._rebind_grads(self._gflat)
        self._adopt()
        if self._frozen:
            self._lock()

    # -- training (forward with a cache, backward: fastlstm/_training.py) ----------------

    @property
    def grads(self):
        """Dict of the gradient arrays, same keys and shapes as ``params``.

        ``backward`` overwrites them (it does not accumulate); they are views into
        ``flat_grads``.
        """
        return self._views(self._gflat)

    @property
    def flat_grads(self):
        """All gradients as one 1-D array, laid out like ``flat_params``."""
        return self._gflat

    def zero_grad(self):
        """Set every gradient to 0 (for summing the grads of several backward calls by hand)."""
        self._gflat[...] = 0
        return self

    @property
    def dtype(self):
        return self._dtype


# random_state for a layer whose parameters the caller fills at once (loading a saved
# model): skips the initialisation (the orthogonal U's QR is most of building a big layer)
_UNSET = object()


class LSTM(_Module):
    """One LSTM layer (TF1 ``BasicLSTMCell`` / ``LSTMCell`` + ``dynamic_rnn``).

    Parameters
    ----------
    input_size, hidden_size : int
        Features per step (I) and cell units (H).
    proj_size : int or None
        Width P of the projection ``m @ P`` (TF ``num_proj``); the output and ``h`` are then
        P wide.  None: no projection, output width H.
    peepholes : bool
        Diagonal peephole connections (TF ``use_peepholes``).
    cell_clip, proj_clip : float or None
        Clamp the cell state / the projected output to [-clip, clip] (TF semantics; 0.0
        clamps to zero, None is off).  ``proj_clip`` is ignored without a projection.
    forget_bias : float
        Initial value of the forget-gate block of ``b`` (nothing is added at call time;
        set later, it is used by the next ``reset_parameters()`` and leaves ``b`` as is).
    activation : {"tanh", "relu", "sigmoid", "linear"}
        Cell activation, used on the candidate and on the cell output.
    recurrent_activation : {"sigmoid", "hard_sigmoid", "hard_sigmoid_keras2"}
        Gate function; the hard sigmoids are Keras 3's ``clip(x/6 + 0.5)`` and Keras 2's
        ``clip(0.2x + 0.5)``, for exact imports.
    dtype : float32 (default) or float64
    random_state : None, int, numpy Generator or RandomState
    n_threads : int or None
        OpenMP threads for this model's kernels; None uses the process default.
    reverse : bool
        The direction of a call that does not choose one: False runs forward, True walks
        each row's valid prefix backwards (an ONNX ``direction="reverse"`` node; outputs
        stay in time order, the final state is the state after step 0).  A stack runs the
        layer in this direction.  In a ``Bidirectional`` the forward half must keep
        False and the backward half runs in reverse whatever its own flag.

    Attributes ``W`` (I, 4H), ``U`` (Hout, 4H), ``b`` (4H,), ``peepholes`` (3, H) or None
    and ``P`` (H, Hout) or None are writable arrays in gate order (i, f, g, o); writing
    into them (``layer.W[...] = ...`` or ``layer.W = ...``) changes the model.
    """

    def __init__(self, input_size, hidden_size, *, proj_size=None, peepholes=False,
                 cell_clip=None, proj_clip=None, forget_bias=1.0, activation="tanh",
                 recurrent_activation="sigmoid", dtype=np.float32, random_state=None,
                 n_threads=None, reverse=False):
        self._input_size = _check_size(input_size, "input_size")
        self._hidden_size = _check_size(hidden_size, "hidden_size")
        self._proj_size = _check_size(proj_size, "proj_size", allow_none=True)
        peepholes = _scalar(peepholes)
        if not isinstance(peepholes, (bool, np.bool_)):
            raise TypeError(f"peepholes must be a bool, got {peepholes!r}")
        self._use_peepholes = bool(peepholes)
        self._dtype = _check_dtype(dtype)
        self.cell_clip = cell_clip
        self.proj_clip = proj_clip
        self.forget_bias = forget_bias
        self.activation = activation
        self.recurrent_activation = recurrent_activation
        self.n_threads = _threads.check_n_threads(n_threads)
        self.reverse = reverse
        self._params = self._bind(np.empty(self.n_params, self._dtype))
        self._gflat = np.zeros(self.n_params, self._dtype)
        if random_state is not _UNSET:
            self.reset_parameters(random_state)

    _reverse = False      # for layers pickled before the option existed

    # The sizes and the peephole switch shape the parameter arrays: fixed.  The options
    # are checked whenever they are set, as in the constructor.
    _WHY = "the parameter arrays have its shape"
    input_size = _fixed("input_size", _WHY)
    hidden_size = _fixed("hidden_size", _WHY)
    proj_size = _fixed("proj_size", _WHY)
    use_peepholes = _fixed("use_peepholes", _WHY)
    del _WHY
    _PROPERTIES = ("input_size", "hidden_size", "proj_size", "use_peepholes", "cell_clip",
              "proj_clip", "forget_bias", "activation", "recurrent_activation")
    _STATE = _Module._STATE + ("_input_size", "_hidden_size", "_proj_size", "_use_peepholes",
                               "_cell_clip", "_proj_clip", "_forget_bias", "_activation",
                               "_recurrent_activation", "_n_threads", "_reverse")
    cell_clip = _checked("cell_clip", lambda self, v: _check_clip(v, "cell_clip"))
    proj_clip = _checked("proj_clip", lambda self, v: _check_clip(v, "proj_clip"))
    forget_bias = _checked("forget_bias", lambda self, v: _check_forget_bias(
        v, dtype=self._dtype))
    activation = _checked("activation", lambda self, v: _check_choice(
        v, "activation", ACTIVATIONS))
    recurrent_activation = _checked("recurrent_activation", lambda self, v: _check_choice(
        v, "recurrent_activation", RECURRENT_ACTIVATIONS))

    @property
    def reverse(self):
        """The direction of calls that do not choose one (and of this layer in a stack)."""
        return self._reverse

    @reverse.setter
    def reverse(self, value):
        value = _check_reverse(value, "reverse")
        owner = self._owner() if self._owner is not None else None
        if value and isinstance(owner, Bidirectional) and owner._forward_layer is self:
            raise ValueError("this layer is a Bidirectional's forward_layer, which runs "
                             "forward: reverse=True is refused (the backward_layer runs "
                             "in reverse whatever its own flag)")
        self._reverse = value

    @property
    def n_threads(self):
        """OpenMP threads for this layer's kernels; None uses the process default."""
        return self._n_threads

    @n_threads.setter
    def n_threads(self, value):
        self._n_threads = _threads.check_n_threads(value)

    # -- parameters --------------------------------------------------------------------

    @property
    def output_size(self):
        """Width of the output and of ``h``: ``proj_size`` or ``hidden_size``."""
        return self._proj_size or self._hidden_size

    def _param_shapes(self):
        I, H, Ho = self.input_size, self.hidden_size, self.output_size
        shapes = [("W", (I, 4 * H)), ("U", (Ho, 4 * H)), ("b", (4 * H,))]
        if self.use_peepholes:
            shapes.append(("peepholes", (3, H)))
        if self.proj_size is not None:
            shapes.append(("P", (H, Ho)))
        return shapes

    def reset_parameters(self, random_state=None):
        """Fresh default initialisation (see ``fastlstm.init``), reproducible from a seed."""
        self._refuse_frozen("reset_parameters()")
        rng = check_random_state(random_state)
        H, Ho, dt = self.hidden_size, self.output_size, self._dtype
        p = self._params
        p["W"][...] = glorot_uniform((self.input_size, 4 * H), rng, dt)
        p["U"][...] = orthogonal((Ho, 4 * H), rng, dt)
        p["b"][...] = 0
        p["b"][H:2 * H] = self.forget_bias
        if "peepholes" in p:
            p["peepholes"][...] = 0
        if "P" in p:
            p["P"][...] = glorot_uniform((H, Ho), rng, dt)
        return self

    @property
    def params(self):
        """Dict of the live parameter arrays ("W", "U", "b", and "peepholes", "P" if on)."""
        return dict(self._params)

    def _get(name):
        def fget(self):
            return self._params.get(name)

        def fset(self, value):
            if name not in self._params:
                raise AttributeError(f"this layer has no {name!r} (it was built without it)")
            self._refuse_frozen(f"setting {name}")
            target = self._params[name]
            value = _numeric_array(value, name)
            if value.shape != target.shape:
                raise ValueError(f"{name} must have shape {target.shape}, got {value.shape}")
            _check_fits(value, target.dtype, name)
            target[...] = value

        return property(fget, fset)

    W = _get("W")
    U = _get("U")
    b = _get("b")
    peepholes = _get("peepholes")
    P = _get("P")
    del _get

    def __repr__(self):
        opts = [f"{self.input_size}", f"{self.hidden_size}"]
        if self.proj_size is not None:
            opts.append(f"proj_size={self.proj_size}")
        if self.use_peepholes:
            opts.append("peepholes=True")
        for name in ("cell_clip", "proj_clip"):
            if getattr(self, name) is not None:
                opts.append(f"{name}={getattr(self, name)}")
        if self.activation != "tanh":
            opts.append(f"activation={self.activation!r}")
        if self.recurrent_activation != "sigmoid":
            opts.append(f"recurrent_activation={self.recurrent_activation!r}")
        if self._dtype != np.float32:
            opts.append(f"dtype={self._dtype.name}")
        if self.reverse:
            opts.append("reverse=True")
        if self.n_threads is not None:
            opts.append(f"n_threads={self.n_threads}")
        return f"LSTM({', '.join(opts)})"

    # -- running -----------------------------------------------------------------------

    def zero_state(self, batch_size):
        """``LSTMState`` of zeros: c (batch_size, H), h (batch_size, Hout)."""
        batch_size = _scalar(batch_size)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (numbers.Integral,
                                                                       np.integer)):
            raise TypeError(f"batch_size must be a non-negative int, got {batch_size!r}")
        if batch_size < 0:
            raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
        return LSTMState(np.zeros((int(batch_size), self.hidden_size), self._dtype),
                         np.zeros((int(batch_size), self.output_size), self._dtype))

    def _chunks_for(self, N):
        """How many row blocks a batch of N rows is split into (independent of n_threads)."""
        H, Ho = self._hidden_size, self.output_size
        flops_per_row = 4 * H * (self._input_size + Ho) + (H * Ho if self._proj_size else 0)
        by_work = (N * flops_per_row) // _MIN_FLOPS_PER_CHUNK_STEP
        return int(max(1, min(_CHUNK_CORES, N // _MIN_ROWS_PER_CHUNK, by_work)))

    def _packed_plan(self, N, T):
        """(n_threads, by_rows) for the packed kernel, or None for the BLAS kernel."""
        force = _FORCE_PATH
        if self._proj_size is not None or (force is None and not _PACKED) or force == "blas":
            return None
        if force is None and N == 1 and T == 1:
            # one row, one step (a step() call): BLAS's matrix-vector products read each
            # weight once, where packing would copy them all first (1.5-6x the time)
            return None
        step_work = N * 4 * self._hidden_size * (self._input_size + self._hidden_size)
        if force is None and (step_work * T < _PACKED_MIN_WORK_THREADED or (
                N < _PACKED_ROW_TILE + 1 and step_work < _PACKED_MIN_STEP_WORK_UNITS)):
            return 1, True      # one thread whatever n_threads is (decided before asking)
        nt = _threads.resolve_n_threads(self.n_threads)
        if force == "packed-rows" or force == "packed-units":
            return nt, force == "packed-rows"
        if nt > 1 and (N + _PACKED_ROW_TILE - 1) // _PACKED_ROW_TILE >= nt:
            weights = step_work // N * np.dtype(self._dtype).itemsize     # bytes packed
            if (N <= _PACKED_UNITS_MAX_ROWS * nt and weights >= _PACKED_UNITS_MIN_WEIGHT_BYTES
                    and time.monotonic() >= _unit_split["until"]
                    and _threads.usable_cores() >= nt):
                return nt, False    # few rows a thread: see _PACKED_UNITS_MAX_ROWS
            return nt, True
        if nt > 1 and step_work >= _PACKED_MIN_STEP_WORK_UNITS:
            if force is None and time.monotonic() < _unit_split["until"]:
                return 1, True      # backing off: see _UNIT_SPLIT_SLOW_SHARE
            # threads that wait for each other at every step: never more than the cores
            # (an explicit n_threads above them made every wait a scheduler time slice)
            nt = min(nt, _threads.usable_cores())
            return (nt, False) if nt > 1 else (1, True)
        return 1, True

    def _prepacked(self):
        """A frozen layer's weights, packed at its first packed-kernel call; else None."""
        if not self._frozen:
            return None
        pw = self._pack
        if pw is None:
            p = self._params
            pw = self._pack = _forward.pack_weights(p["W"], p["U"], p["b"],
                                                     p.get("peepholes"))
        return pw

    def _uses_small(self, N, T):
        """Whether a call of N rows and T steps runs on the small kernel."""
        force = _FORCE_PATH
        return self._proj_size is None and self._hidden_size <= _SMALL_MAX_H and (
            force == "small" or force is None and N * T * 4 * self._hidden_size
            * (self._input_size + self._hidden_size) <= _SMALL_MAX_WORK)

    def _row_threads(self, kb):
        """Threads for a batch of one row on the BLAS kernel (kb: steps per input block).

        They share each step's products (without projection: the step, fl_pk_rowstep) and
        wait for each other at its end: from _VECMAT_MIN_THREADED multiply-adds, never more
        than the cores, one thread while backing off (see _UNIT_SPLIT_SLOW_SHARE).  As the
        kernels do, at most one thread per 16 of the 4H gate columns (fl_pk_rowstep) and
        none for products of fewer than 32 columns (fl_pk_vecmat)."""
        H4, Ho = 4 * self._hidden_size, self.output_size
        inputs = self._input_size if kb == 1 else 0
        if self._proj_size is None:
            large = H4 * (Ho + inputs)      # both products in one step
            cap = H4 // 16
        else:
            large = max(H4 * Ho if H4 >= 32 else 0, H4 * inputs if H4 >= 32 else 0,
                        self._hidden_size * Ho if Ho >= 32 else 0)
            cap = _threads._MAX_THREADS
        if (large < _VECMAT_MIN_THREADED or cap < 2
                or time.monotonic() < _unit_split["until"]):
            return 1
        return min(_threads.resolve_n_threads(self.n_threads), _threads.usable_cores(), cap)

    def _kernel(self, X2, N, T, time_major, c, h, Y2, lengths, reverse, cache=None):
        """Call the forward kernel on validated arrays (state c, h updated in place)."""
        p = self._params
        if self._uses_small(N, T):
            cache = cache or {}
            _forward.forward_small(
                X2, N, T, time_major, p["W"], p["U"], p["b"], p.get("peepholes"), c, h, Y2,
                lengths, reverse, ACTIVATIONS[self._activation],
                RECURRENT_ACTIVATIONS[self._recurrent_activation], self._cell_clip,
                cache.get("gates"), cache.get("c"))
            return
        plan = self._packed_plan(N, T)
        if plan is not None:
            cache = cache or {}
            if plan[0] > 1:
                _threads._state["omp_used"] = True   # fork safety (see _threads)
            slow = _forward.forward_packed(
                X2, N, T, time_major, p["W"], p["U"], p["b"], p.get("peepholes"), c, h, Y2,
                lengths, reverse, ACTIVATIONS[self._activation],
                RECURRENT_ACTIVATIONS[self._recurrent_activation], self._cell_clip, plan[0],
                plan[1], _PACKED_BLOCK_ELEMENTS, cache.get("gates"), cache.get("c"),
                cache.get("xo_same"), cache.get("xo_next"), _PACKED_OWN_MAX_BYTES,
                self._prepacked())
            if "xo_same" in cache or "xo_next" in cache:
                cache["xo_done"] = True     # the training cache's h rows (_training.py)
            if plan[0] > 1 and not plan[1]:
                # the steps that ran: the longest row's (padding is skipped)
                _unit_split_done(slow, T if lengths is None or not len(lengths)
                                 else int(np.max(lengths)))
            return
        kb = int(max(1, min(T, _WORKSPACE_ELEMENTS // max(1, N * 4 * self._hidden_size))))
        chunks = self._chunks_for(N)
        H4, Ho = 4 * self._hidden_size, self.output_size
        if N == 1:
            nt = self._row_threads(kb)
        else:
            nt = _threads.resolve_n_threads(self.n_threads) if chunks > 1 else 1
        shared = N == 1 and nt > 1
        cache = cache or {}
        args = (X2, N, T, time_major, p["W"], p["U"], p["b"], p.get("peepholes"), p.get("P"),
                c, h, Y2, lengths, reverse, ACTIVATIONS[self._activation],
                RECURRENT_ACTIVATIONS[self._recurrent_activation], self._cell_clip,
                self._proj_clip if self._proj_size else None, kb, chunks, nt,
                cache.get("gates"), cache.get("c"), cache.get("m"), cache.get("hp"))
        # Single-threaded BLAS whatever n_threads, OMP_NUM_THREADS or threadpoolctl say,
        # for one block or many: BLAS's summation order may depend on its thread count,
        # and so would the results.  (OpenBLAS runs gemms this small on one thread by
        # itself: no limit to set for them.)
        # the largest BLAS gemm (products of one row run in the kernel's own loop, without
        # BLAS: a batch of one row only calls BLAS for the input products of kb > 1 steps)
        biggest = (max(N * kb * self._input_size * H4, N * Ho * H4,
                       N * self._hidden_size * Ho if self._proj_size else 0) if N > 1
                   else kb * self._input_size * H4 if kb > 1 else 0)
        if chunks == 1 and biggest <= _threads.OPENBLAS_SERIAL_GEMM and (
                biggest == 0 or _threads.blas_is_openblas()):
            if nt > 1:
                _threads._state["omp_used"] = True   # fork safety (see _threads)
            slow = _forward.forward(*args)
        else:
            with _threads.blas_single_thread(openmp=nt > 1):
                slow = _forward.forward(*args)
        if shared:
            _unit_split_done(slow, T)

    def __call__(self, X, initial_state=None, lengths=None, time_major=False, reverse=None):
        """Run the layer over a sequence (TF ``dynamic_rnn``).

        X : (N, T, I), or (T, N, I) with ``time_major=True``; any real dtype, cast to the
            layer's dtype.
        initial_state : LSTMState / (c (N, H), h (N, Hout)) or None for zeros.
        lengths : (N,) integers in [0, T] or None.  Outputs at t >= lengths[n] are 0 and
            the state is carried unchanged; a length of 0 returns the initial state.
        reverse : walk each row's valid prefix backwards (outputs stay in time order);
            None (default): the layer's own ``reverse``.

        Returns ``Y`` (N, T, Hout) (or (T, N, Hout)) and the final ``LSTMState``.
        The caller's arrays are never written.
        """
        time_major = _check_time_major(time_major)
        X, N, T = _as_input(X, self._dtype, self.input_size, time_major,
                            out_size=self.output_size)
        L = _as_lengths(lengths, N, T)
        c, h = _as_state(initial_state, N, self.hidden_size, self.output_size, self._dtype,
                         "initial_state")
        reverse = self.reverse if reverse is None else _check_reverse(reverse, "reverse")
        Y = self._run(X, N, T, time_major, c, h, L, reverse)
        return Y, LSTMState(c, h)

    def _run(self, X, N, T, time_major, c, h, L, reverse, cache=None, out=None):
        Ho = self.output_size
        shape = (T, N, Ho) if time_major else (N, T, Ho)
        if out is not None and out.shape == shape and out.dtype == self._dtype:
            Y = out          # a buffer to reuse (padded steps must read 0)
            if L is not None:
                Y.fill(0)
        else:
            Y = np.zeros(shape, self._dtype) if L is not None else np.empty(shape, self._dtype)
        if N and T:
            self._kernel(X.reshape(N * T, self._input_size), N, T, time_major, c, h,
                         Y.reshape(N * T, Ho), L, reverse, cache)
        return Y

    def forward(self, X, initial_state=None, lengths=None, time_major=False, reverse=None):
        """Training forward: like calling the layer, and also returns a cache for ``backward``.

        Returns ``Y``, the final ``LSTMState`` and an opaque ``TrainingCache``.  The cache
        holds its own copy of the input rows (``X`` may change before ``backward``) and
        serves one ``backward`` call.
        """
        reverse = self.reverse if reverse is None else _check_reverse(reverse, "reverse")
        return _training.lstm_forward(self, X, initial_state, lengths, time_major, reverse)

    def backward(self, dY, cache, dstate=None, input_grad=True):
        """Backpropagation through time for the ``forward`` call that made ``cache``.

        dY : (N, T, Hout) (or time-major), the loss gradient w.r.t. ``Y``; entries at
            padded steps (t >= lengths[n]) are ignored.
        dstate : LSTMState / (dc (N, H), dh (N, Hout)), the gradient w.r.t. the final
            state, or None for zeros.
        input_grad : False skips the gradient w.r.t. ``X`` (returned as None), when only
            the parameters' gradients are wanted (one gemm less).

        Returns ``dX`` (shaped like X) and ``dstate0``, the ``LSTMState`` of gradients
        w.r.t. the initial state.  Fills ``grads`` (and ``flat_grads``), overwriting what
        was there; use ``zero_grad`` and sum by hand to accumulate over several calls.
        """
        return _training.lstm_backward(self, dY, cache, dstate, input_grad)

    def step(self, x, state=None):
        """One time step (TF ``cell(x, state)``).

        x : (N, I); state : LSTMState / (c, h) or None for zeros.
        Returns ``output`` (N, Hout) and the new ``LSTMState`` (its ``h`` equals output).
        A layer built with ``reverse=True`` has no step (its first step is the last of
        each row's sequence): TypeError.
        """
        if self.reverse:
            raise TypeError("this layer has reverse=True and cannot run one step at a time "
                            "(its steps start from the end of each row's sequence): call it "
                            "on the whole sequence, or set reverse=False")
        if self._proj_size is None:
            # fast path: plain arrays of the right dtype and shape, a small step
            p = self._params
            fast = _forward.step_fast(x, state, p["W"], p["U"], p["b"], p.get("peepholes"),
                                      ACTIVATIONS[self._activation],
                                      RECURRENT_ACTIVATIONS[self._recurrent_activation],
                                      self._cell_clip, LSTMState)
            if fast is not None:
                return fast
            if (_FORCE_PATH is None and type(x) is np.ndarray and x.shape[:1] == (1,)
                    and not self._uses_small(1, 1)):
                # one row of a larger cell: the BLAS kernel's one-row step, called directly
                # (threads planned only for it: planning marks the process, see _threads)
                nt = self._row_threads(1)
                fast = _forward.step_row(x, state, p["W"], p["U"], p["b"], p.get("peepholes"),
                                         ACTIVATIONS[self._activation],
                                         RECURRENT_ACTIVATIONS[self._recurrent_activation],
                                         self._cell_clip, LSTMState, nt)
                if fast is not None:
                    if nt > 1:
                        _unit_split_done(fast[2], 1)
                    return fast[0], fast[1]
        x = _numeric_array(x, "x")
        if x.ndim != 2 or x.shape[1] != self._input_size:
            raise ValueError(
                f"x must be 2-D [batch, features] with features={self._input_size}, "
                f"got shape {x.shape}")
        N = x.shape[0]
        if N > _INT_MAX:
            raise ValueError(f"x of shape {x.shape} is too large: the batch must stay below "
                             "2**31 for 32-bit BLAS")
        if N * max(self._input_size, 1) > _INT_MAX:    # as a call's batch*features
            raise ValueError(f"x of shape {x.shape} is too large: batch*features = "
                             f"{N * self._input_size} must stay below 2**31 for 32-bit BLAS")
        _check_memory(N * (self._input_size + self._hidden_size + 2 * self.output_size)
                      * self._dtype.itemsize, f"x of shape {x.shape}")
        _check_fits(x, self._dtype, "x")
        x = np.ascontiguousarray(x, dtype=self._dtype)
        c, h = _as_state(state, N, self._hidden_size, self.output_size, self._dtype, "state")
        out = np.empty((N, self.output_size), self._dtype)
        if N:
            self._kernel(x, N, 1, False, c, h, out, None, False)
        return out, LSTMState(c, h)


class Bidirectional(_Module):
    """A forward and a reverse LSTM over the same input (TF ``bidirectional_dynamic_rnn``).

    The output is ``[forward | backward]`` on the feature axis; the state is
    ``(forward_state, backward_state)``.  The backward layer walks each row's valid prefix
    from its last valid step down to 0 (TF ``reverse_sequence``, ONNX ``reverse``) whatever
    its own ``reverse`` flag (a layer built with ``reverse=True``, like a Keras backward
    layer with ``go_backwards=True``, is accepted).  The forward layer runs forward: one
    with ``reverse=True`` is refused, here and when its flag is set later.
    """

    def __init__(self, forward_layer, backward_layer):
        for name, layer in (("forward_layer", forward_layer), ("backward_layer", backward_layer)):
            if not isinstance(layer, LSTM):
                raise TypeError(f"{name} must be a fastlstm.LSTM, got {type(layer).__name__}")
        if forward_layer.reverse:
            raise ValueError("forward_layer has reverse=True: Bidirectional runs its forward "
                             "half forward and its backward half in reverse itself")
        if forward_layer is backward_layer:
            raise ValueError("forward_layer and backward_layer must be two different LSTM objects")
        if forward_layer.input_size != backward_layer.input_size:
            raise ValueError(
                f"forward_layer.input_size={forward_layer.input_size} and "
                f"backward_layer.input_size={backward_layer.input_size} must match")
        if forward_layer.dtype != backward_layer.dtype:
            raise TypeError("forward_layer and backward_layer must have the same dtype, got "
                            f"{forward_layer.dtype} and {backward_layer.dtype}")
        self._check_adoptable((forward_layer, backward_layer),
                              ("forward_layer", "backward_layer"))
        self._forward_layer = forward_layer
        self._backward_layer = backward_layer
        self._dtype = forward_layer.dtype
        self._flat = np.empty(self.n_params, self._dtype)
        self._rebind(self._flat)
        self._rebind_grads(np.zeros(self.n_params, self._dtype))
        self._adopt()

    _WHY = "its parameter buffer holds the halves'"
    forward_layer = _fixed("forward_layer", _WHY)
    backward_layer = _fixed("backward_layer", _WHY)
    del _WHY
    _PROPERTIES = ("forward_layer", "backward_layer")
    _STATE = _Module._STATE + ("_forward_layer", "_backward_layer")

    def _param_shapes(self):
        return ([("fw." + k, s) for k, s in self.forward_layer._param_shapes()]
                + [("bw." + k, s) for k, s in self.backward_layer._param_shapes()])

    def _children(self):
        return (self.forward_layer, self.backward_layer)

    def forward(self, X, initial_state=None, lengths=None, time_major=False):
        """Training forward: like calling the model, and also returns a cache for ``backward``.

        Returns ``Y`` (N, T, Hout_fw + Hout_bw), ``(forward_state, backward_state)`` and an
        opaque ``TrainingCache`` (usable for one ``backward`` call).
        """
        return _training.bidirectional_forward(self, X, initial_state, lengths, time_major)

    def backward(self, dY, cache, dstate=None, input_grad=True):
        """Gradients of a training forward; see ``LSTM.backward``.

        dY : like ``Y``; dstate : (forward, backward) pair of (dc, dh) or None.  Returns
        ``dX`` (None with ``input_grad=False``) and the (forward, backward) pair of
        initial-state gradients; fills ``grads`` ("fw.W", ..., "bw.W", ...), overwriting
        them.
        """
        return _training.bidirectional_backward(self, dY, cache, dstate, input_grad)

    @property
    def params(self):
        out = {"fw." + k: v for k, v in self.forward_layer.params.items()}
        out.update({"bw." + k: v for k, v in self.backward_layer.params.items()})
        return out

    @property
    def input_size(self):
        return self.forward_layer.input_size

    @property
    def output_size(self):
        return self.forward_layer.output_size + self.backward_layer.output_size

    def zero_state(self, batch_size):
        return (self.forward_layer.zero_state(batch_size),
                self.backward_layer.zero_state(batch_size))

    def __repr__(self):
        return f"Bidirectional({self.forward_layer!r}, {self.backward_layer!r})"

    def _split_state(self, initial_state, name):
        if initial_state is None:
            return None, None
        if isinstance(initial_state, LSTMState) or not isinstance(initial_state, (tuple, list)) \
                or len(initial_state) != 2:
            raise TypeError(f"{name} must be a (forward_state, backward_state) pair")
        return initial_state

    def __call__(self, X, initial_state=None, lengths=None, time_major=False):
        """X (N, T, I) -> Y (N, T, Hout_fw + Hout_bw), (forward_state, backward_state)."""
        time_major = _check_time_major(time_major)
        X, N, T = _as_input(X, self._dtype, self.input_size, time_major,
                            out_size=2 * self.output_size)
        L = _as_lengths(lengths, N, T)
        Y, states = self._run_validated(X, N, T, time_major, initial_state, L, "initial_state")
        return Y, states

    def _check_states(self, initial_state, N, name):
        """Both halves' (c, h), validated fresh copies: checked before either half runs."""
        fw0, bw0 = self._split_state(initial_state, name)
        return [_as_state(s0, N, layer.hidden_size, layer.output_size, self._dtype, name + tag)
                for layer, s0, tag in ((self.forward_layer, fw0, "[0]"),
                                       (self.backward_layer, bw0, "[1]"))]

    def _run_validated(self, X, N, T, time_major, initial_state, L, name, checked=None):
        checked = checked or self._check_states(initial_state, N, name)
        # each half is copied into the joint output as soon as it is done, through one
        # buffer: beside the output, one half's worth of memory (was two halves)
        out, half, at = None, None, 0
        for layer, (c, h), rev in zip((self.forward_layer, self.backward_layer), checked,
                                      (False, True)):
            half = layer._run(X, N, T, time_major, c, h, L, rev, out=half)
            if out is None:
                out = np.empty(half.shape[:-1] + (self.output_size,), half.dtype)
            out[..., at:at + half.shape[-1]] = half
            at += half.shape[-1]
        return out, tuple(LSTMState(c, h) for c, h in checked)


class MultiLSTM(_Module):
    """A stack of layers (TF ``MultiRNNCell``), bottom first.

    ``layers`` holds ``LSTM`` and ``Bidirectional`` items; layer k+1's ``input_size`` must
    equal layer k's ``output_size``.  The state is a tuple with one state per layer; only
    the top layer's output is returned.  All parameters live in one flat buffer
    (``flat_params``); the layers' arrays become views into it.
    """

    def __init__(self, layers):
        try:
            layers = list(layers) if not isinstance(layers, (LSTM, Bidirectional)) else None
        except TypeError:
            raise TypeError("layers must be a non-empty list of LSTM / Bidirectional layers, "
                            f"got {type(layers).__name__}") from None
        if not layers:
            raise ValueError("layers must be a non-empty list of LSTM / Bidirectional layers")
        seen = set()
        for k, layer in enumerate(layers):
            if not isinstance(layer, (LSTM, Bidirectional)):
                raise TypeError(f"layers[{k}] must be an LSTM or Bidirectional, "
                                f"got {type(layer).__name__}")
            if id(layer) in seen:
                raise ValueError(f"layers[{k}] appears twice: each layer needs its own object")
            seen.add(id(layer))
            if layer.dtype != layers[0].dtype:
                raise TypeError(f"all layers must share one dtype: layers[0] is "
                                f"{layers[0].dtype}, layers[{k}] is {layer.dtype}")
            if k and layer.input_size != layers[k - 1].output_size:
                raise ValueError(
                    f"layers[{k}].input_size={layer.input_size} must equal "
                    f"layers[{k - 1}].output_size={layers[k - 1].output_size}")
        self._check_adoptable(layers, [f"layers[{k}]" for k in range(len(layers))])
        self._layers = tuple(layers)
        self._dtype = layers[0].dtype
        # widest moment of a call: one layer's input and its outputs (twice for a
        # Bidirectional's halves), per row and step, for the memory check
        self._peak_width = max(
            (k and layers[k - 1].output_size)
            + layer.output_size * (2 if isinstance(layer, Bidirectional) else 1)
            for k, layer in enumerate(layers))
        self._flat = np.empty(self.n_params, self._dtype)
        self._rebind(self._flat)
        self._rebind_grads(np.zeros(self.n_params, self._dtype))
        self._adopt()

    layers = _fixed("layers", "its parameter buffer holds theirs")
    _PROPERTIES = ("layers",)
    _STATE = _Module._STATE + ("_layers", "_peak_width")

    def _param_shapes(self):
        return [(f"{k}.{name}", shape) for k, layer in enumerate(self.layers)
                for name, shape in layer._param_shapes()]

    def _children(self):
        return self.layers

    def forward(self, X, initial_state=None, lengths=None, time_major=False):
        """Training forward: like calling the model, and also returns a cache for ``backward``.

        Returns the top layer's ``Y``, the tuple of final states and an opaque
        ``TrainingCache`` (usable for one ``backward`` call).
        """
        return _training.multi_forward(self, X, initial_state, lengths, time_major)

    def backward(self, dY, cache, dstate=None, input_grad=True):
        """Gradients of a training forward; see ``LSTM.backward``.

        dY : like the top layer's ``Y``; dstate : a tuple with one final-state gradient per
        layer (shaped like the state; any entry may be None) or None.  Returns ``dX``
        (None with ``input_grad=False``: the first layer's input gradient is skipped) and
        the tuple of initial-state gradients; fills ``grads`` ("0.W", "1.fw.U", ...),
        overwriting them.
        """
        return _training.multi_backward(self, dY, cache, dstate, input_grad)

    @property
    def params(self):
        return {f"{k}.{name}": v for k, layer in enumerate(self.layers)
                for name, v in layer.params.items()}

    @property
    def input_size(self):
        return self.layers[0].input_size

    @property
    def output_size(self):
        return self.layers[-1].output_size

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, k):
        return self.layers[k]

    def __repr__(self):
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"MultiLSTM([\n  {inner}\n])"

    def zero_state(self, batch_size):
        return tuple(layer.zero_state(batch_size) for layer in self.layers)

    def _layer_states(self, initial_state, name):
        if initial_state is None:
            return [None] * len(self.layers)
        if isinstance(initial_state, LSTMState) or not isinstance(initial_state, (tuple, list)) \
                or len(initial_state) != len(self.layers):
            raise TypeError(f"{name} must be a tuple with one state per layer "
                            f"({len(self.layers)} layers), bottom layer first")
        return list(initial_state)

    def __call__(self, X, initial_state=None, lengths=None, time_major=False):
        """X (N, T, I) -> top layer's Y (N, T, Hout_top), tuple of per-layer final states."""
        if (initial_state is None and lengths is None and time_major is False
                and type(X) is np.ndarray and X.dtype == self._dtype and X.ndim == 3
                and X.shape[2] == self.input_size and X.flags.c_contiguous
                and X.size < _SMALL_INPUT and _FORCE_PATH is None):
            out = self._small_call(X)
            if out is not None:
                return out
        time_major = _check_time_major(time_major)
        X, N, T = _as_input(X, self._dtype, self.input_size, time_major,
                            out_size=self._peak_width)
        L = None if lengths is None else _as_lengths(lengths, N, T)
        if initial_state is None:
            checked = [None] * len(self.layers)
        else:
            s0 = self._layer_states(initial_state, "initial_state")
            # every layer's state is checked before the first layer runs
            checked = [layer._check_states(s0[k], N, f"initial_state[{k}]")
                       if isinstance(layer, Bidirectional) else
                       _as_state(s0[k], N, layer.hidden_size, layer.output_size, self._dtype,
                                 f"initial_state[{k}]")
                       for k, layer in enumerate(self.layers)]
        states = []
        inp = X
        for layer, state in zip(self.layers, checked):
            if type(layer) is Bidirectional:
                inp, s = layer._run_validated(inp, N, T, time_major, None, L,
                                              "initial_state", state)
            else:
                c, h = state or (np.zeros((N, layer.hidden_size), self._dtype),
                                 np.zeros((N, layer.output_size), self._dtype))
                inp = layer._run(inp, N, T, time_major, c, h, L, layer.reverse)
                s = LSTMState(c, h)
            states.append(s)
        return inp, tuple(states)

    def _small_specs(self):
        """Per layer (W, U, b, peepholes, act, rec, cell_clip) when every layer is a plain
        LSTM (no projection, not reversed) small enough for the small kernel, else None."""
        specs = []
        for layer in self.layers:
            if (type(layer) is not LSTM or layer._proj_size is not None or layer.reverse
                    or layer._hidden_size > _SMALL_MAX_H):
                return None
            p = layer._params
            specs.append((p["W"], p["U"], p["b"], p.get("peepholes"),
                          ACTIVATIONS[layer._activation],
                          RECURRENT_ACTIVATIONS[layer._recurrent_activation], layer._cell_clip))
        return specs

    def _small_call(self, X):
        """A small, ready-made call without state or lengths through plain layers, straight
        to the small kernel (what ``__call__`` would run, without its general checks), or
        None when the call is anything else."""
        N, T = X.shape[0], X.shape[1]
        if N == 0 or T == 0:
            return None
        specs = self._small_specs()
        if specs is None or any(
                N * T * 4 * layer._hidden_size * (layer._input_size + layer._hidden_size)
                > _SMALL_MAX_WORK for layer in self.layers):
            return None
        return _forward.stack_small(X, specs, LSTMState)

    def step(self, x, state=None):
        """One time step through every layer: x (N, I) -> top output, tuple of states."""
        # plain arrays through small plain layers: one compiled call, what the layers' own
        # steps compute (the same bits)
        specs = self._small_specs()
        fast = None if specs is None else _forward.stack_step(x, state, specs, LSTMState)
        if fast is not None:
            return fast
        for k, layer in enumerate(self.layers):
            if isinstance(layer, Bidirectional):
                raise TypeError(f"layers[{k}] is Bidirectional, which cannot run one step at a "
                                "time (its backward half needs the whole sequence)")
            if layer.reverse:
                raise TypeError(f"layers[{k}] has reverse=True, which cannot run one step at a "
                                "time (its steps start from the end of each row's sequence)")
        s0 = self._layer_states(state, "state")
        x = _numeric_array(x, "x")
        if x.ndim == 2:  # (a bad x is reported by layer 0) every state is checked first
            for k, layer in enumerate(self.layers):
                try:
                    s0[k] = _as_state(s0[k], x.shape[0], layer.hidden_size, layer.output_size,
                                      self._dtype, "state")
                except (TypeError, ValueError) as exc:
                    raise type(exc)(f"layer {k}: {exc}") from exc
        states = []
        out = x
        for k, layer in enumerate(self.layers):
            try:
                out, s = layer.step(out, s0[k])
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"layer {k}: {exc}") from exc
            states.append(s)
        return out, tuple(states)


def freeze(model):
    """A frozen copy of ``model`` (an ``LSTM``, ``Bidirectional`` or ``MultiLSTM``), for
    inference: what an ONNX Runtime session or a scripted module is to the frameworks.

    The copy's parameters are read-only arrays over read-only memory (an in-place write,
    or setting their ``WRITEABLE`` flag back, raises NumPy's ``ValueError``; setting ``W``,
    ``reset_parameters()`` and optimisers refuse it), so its
    layers pack their weights into the packed kernel's panels once, at their first call,
    instead of at every call.  Results are those of ``model``, bit for bit.  ``model``
    itself is neither changed nor frozen: train it, and freeze it again to use the new
    weights.  Options (``cell_clip``, ``activation``, ``n_threads``, ...) may still be set
    on the copy; a frozen layer cannot go into a new container (freeze the container).
    Pickles and deep copies of a frozen model are frozen; ``fastlstm.save`` / ``load``
    give a trainable model.  The packed weights take about as much memory as the
    parameters.
    """
    if not isinstance(model, (LSTM, Bidirectional, MultiLSTM)):
        raise TypeError("model must be a fastlstm LSTM, Bidirectional or MultiLSTM, got "
                        f"{type(model).__name__}")
    frozen = copy.deepcopy(model)
    frozen._lock()
    return frozen
