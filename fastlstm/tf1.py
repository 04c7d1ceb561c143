"""TensorFlow-1-style API on top of fastlstm: ``import fastlstm.tf1 as tf``.

``BasicLSTMCell``, ``LSTMCell``, ``MultiRNNCell``, ``LSTMStateTuple``, ``dynamic_rnn`` and
``bidirectional_dynamic_rnn`` take TF1's argument names and return TF1's structures, so
classic TF1 LSTM code runs with the import line changed and the graph/session lines
(placeholders, ``Session``, ``sess.run``) replaced by plain NumPy arrays.  The names are
also reachable as ``tf.contrib.rnn.*``, ``tf.nn.rnn_cell.*``, ``tf.nn.dynamic_rnn`` and
``tf.compat.v1.nn.*``.

As in TF, a cell creates its weights on its first call, from the input width, with TF1's
default initialisation (SPEC.md §9): ``kernel`` Glorot-uniform over its combined
(I + Hout, 4H) shape, ``bias`` zeros, peepholes U(±sqrt(3/H)), projection Glorot-uniform
(H, P); an ``initializer`` replaces all but the bias.  Random numbers come from NumPy
(``random_state=`` seeds them), so fresh weights are not TF's numbers: load TF's with
``cell.set_weights`` or ``fastlstm.from_tf1_checkpoint``.

Differences from TF: inputs are NumPy arrays and results are computed at once;
``sequence_length`` values must lie in [0, T] (TF silently treats larger values as T),
and float values must be whole numbers (TF truncates them to int32);
``parallel_iterations``, ``swap_memory`` and ``scope`` are accepted and ignored.
"""

import contextlib
import numbers
from types import SimpleNamespace

import numpy as np

from .init import check_random_state
from .interop.tf1 import activation_name, from_tf1, to_tf1
from .layers import (LSTMState, MultiLSTM, _as_lengths, _check_clip, _check_forget_bias,
                     _check_time_major, _scalar)

__all__ = [
    "BasicLSTMCell",
    "LSTMCell",
    "LSTMStateTuple",
    "MultiRNNCell",
    "RNNCell",
    "bidirectional_dynamic_rnn",
    "dynamic_rnn",
    "constant_initializer",
    "glorot_uniform_initializer",
    "random_uniform_initializer",
    "zeros_initializer",
    "float32",
    "float64",
    "int32",
    "int64",
    "tanh",
    "sigmoid",
    "relu",
    "identity",
    "nn",
    "contrib",
    "compat",
]

float32 = np.float32
float64 = np.float64
int32 = np.int32
int64 = np.int64

LSTMStateTuple = LSTMState
"""TF's ``LSTMStateTuple(c, h)``: the same named tuple as ``fastlstm.LSTMState``."""


def tanh(x):
    return np.tanh(x)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x)))


def relu(x):
    return np.maximum(x, 0)


def identity(x):
    return np.asarray(x)


# ---------------------------------------------------------------------------------------
# initializers: callables (shape, dtype=None, partition_info=None) -> array, as in TF


class _Initializer:
    def __init__(self, fn, seed):
        self._fn = fn
        self._rng = np.random.default_rng(seed)

    def __call__(self, shape, dtype=None, partition_info=None):
        return np.asarray(self._fn(tuple(shape), self._rng), dtype=dtype or np.float32)


def random_uniform_initializer(minval=0.0, maxval=None, seed=None, dtype=float32):
    """U(minval, maxval) (maxval defaults to 1, as in TF).  NumPy's stream, not TF's."""
    hi = 1.0 if maxval is None else maxval
    return _Initializer(lambda shape, rng: rng.uniform(minval, hi, size=shape), seed)


def glorot_uniform_initializer(seed=None, dtype=float32):
    """U(±sqrt(6 / (fan_in + fan_out))); a 1-D shape (n,) has fan_in = fan_out = n."""
    def draw(shape, rng):
        fan_in, fan_out = (shape[0], shape[0]) if len(shape) == 1 else (shape[-2], shape[-1])
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=shape)
    return _Initializer(draw, seed)


def constant_initializer(value=0, dtype=float32):
    return _Initializer(lambda shape, rng: np.broadcast_to(np.asarray(value, np.float64), shape),
                        None)


def zeros_initializer(dtype=float32):
    return constant_initializer(0.0)


# ---------------------------------------------------------------------------------------
# cells


def _resolve_dtype(*candidates):
    for c in candidates:
        if c is None:
            continue
        dt = np.dtype(c)
        if dt in (np.dtype(np.float32), np.dtype(np.float64)):
            return dt
    return np.dtype(np.float32)


def _float_dtype(dtype, name="dtype"):
    """An explicit dtype argument: float32 or float64 (TF's cells take floats only, and
    fastlstm computes in these two), or None."""
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{name} must be float32 or float64 (fastlstm computes in these), "
                        f"got {dt}")
    return dt


def _input_dtype(x, state):
    """The dtype an unbuilt cell takes from its first call: the inputs' when they are
    float32 / float64, else the state's (integer inputs, as fed to a float placeholder,
    are cast), else None (the default, float32)."""
    for a in [x] + [np.asarray(p) for p in _leaves(state)]:
        if a.dtype in (np.dtype(np.float32), np.dtype(np.float64)):
            return a.dtype
    return None


def _batch_size(batch_size):
    """zero_state's batch_size: a non-negative int (or a 0-d integer array)."""
    value = _scalar(batch_size)
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)) \
            or value < 0:
        raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
    return int(value)


def _given_state(state):
    """A cell call's state: TF's cells take no None (its cells raise); neither do these, so
    that code run here runs in TF too."""
    if state is None:
        raise TypeError("state must be the cell's state (an LSTMStateTuple(c, h), or a tuple "
                        "of them for a MultiRNNCell), got None: start from "
                        "cell.zero_state(batch_size, dtype), as in TF")


def _leaves(state):
    if state is None:
        return []
    if isinstance(state, (tuple, list)):
        return [leaf for part in state for leaf in _leaves(part)]
    return [state]


def _rng_state(random_state):
    if isinstance(random_state, np.random.RandomState):
        return random_state.get_state()
    if isinstance(random_state, np.random.Generator):
        return random_state.bit_generator.state
    return None     # None or an int: every build draws from a fresh generator


@contextlib.contextmanager
def _building(cells):
    """A call that builds cells is all or nothing: when it fails (bad inputs or state),
    the cells it built are unbuilt again, and a generator given as their random_state is
    put back, so that the failed call changes nothing (a wrong first call does not fix
    the input width, and the same seed then draws the same weights)."""
    fresh = [(c, _rng_state(c._random_state)) for c in cells if not c.built]
    try:
        yield
    except BaseException:
        for c, state in fresh:
            c._layer = None
            if isinstance(c._random_state, np.random.RandomState):
                c._random_state.set_state(state)
            elif isinstance(c._random_state, np.random.Generator):
                c._random_state.bit_generator.state = state
        raise


def _cells_of(*cells):
    """The LSTM cells of ``cells`` (a MultiRNNCell's own; anything else is left to
    ``_check_cell`` to refuse)."""
    return [c for cell in cells
            for c in (cell._cells if isinstance(cell, MultiRNNCell) else [cell])
            if isinstance(c, _LSTMCellBase)]


class RNNCell:
    """Base of the cells: ``state_size``, ``output_size``, ``zero_state``, ``__call__``."""

    def zero_state(self, batch_size, dtype):
        raise NotImplementedError  # pragma: no cover


class _StateTupleError(ValueError, TypeError):
    """A stack's state that is not one state per cell: TF raises a ValueError ("Expected
    state to be a tuple of length ..."); also a TypeError (a wrong type)."""


class _LSTMCellBase(RNNCell):
    _tf_name = "lstm_cell"

    def __init__(self, num_units, *, use_peepholes, cell_clip, initializer, num_proj,
                 proj_clip, forget_bias, state_is_tuple, activation, name, dtype,
                 random_state):
        num_units, num_proj = _scalar(num_units), _scalar(num_proj)
        if isinstance(num_units, bool) or not isinstance(
                num_units, (numbers.Integral, np.integer)) or num_units <= 0:
            raise ValueError(f"num_units must be a positive int, got {num_units!r}")
        if num_proj is not None and (isinstance(num_proj, bool) or not isinstance(
                num_proj, (numbers.Integral, np.integer)) or num_proj <= 0):
            raise ValueError(f"num_proj must be None or a positive int, got {num_proj!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable(shape, dtype), got {initializer!r}")
        self._num_units = int(num_units)
        self._use_peepholes = bool(use_peepholes)
        self._cell_clip = _check_clip(cell_clip, "cell_clip")
        self._initializer = initializer
        self._num_proj = None if num_proj is None else int(num_proj)
        # TF ignores proj_clip without a projection
        self._proj_clip = _check_clip(proj_clip, "proj_clip") if num_proj is not None else None
        self._forget_bias = _check_forget_bias(forget_bias)
        self._state_is_tuple = bool(state_is_tuple)
        self._activation = activation_name(activation)
        self.name = name or self._tf_name
        self._dtype = _float_dtype(dtype)
        self._random_state = random_state
        self._layer = None
        self._bias_f = None     # (TF's f block as loaded, fastlstm's f block made from it)

    # -- TF attributes ---------------------------------------------------------------

    @property
    def state_size(self):
        H, Ho = self._num_units, self._num_proj or self._num_units
        return LSTMStateTuple(H, Ho) if self._state_is_tuple else H + Ho

    @property
    def output_size(self):
        return self._num_proj or self._num_units

    @property
    def built(self):
        return self._layer is not None

    @property
    def dtype(self):
        return self._layer.dtype if self._layer is not None else self._dtype

    @property
    def layer(self):
        """The fastlstm ``LSTM`` holding this cell's weights (None before the first call)."""
        return self._layer

    def zero_state(self, batch_size, dtype):
        batch_size = _batch_size(batch_size)
        dt = _float_dtype(dtype)
        if dt is None:
            raise TypeError("dtype must be float32 or float64, got None")
        H, Ho = self._num_units, self.output_size
        if self._state_is_tuple:
            return LSTMStateTuple(np.zeros((batch_size, H), dt), np.zeros((batch_size, Ho), dt))
        return np.zeros((batch_size, H + Ho), dt)

    # -- weights ---------------------------------------------------------------------

    def build(self, inputs_shape, dtype=None):
        """Create the weights for inputs of width ``inputs_shape[-1]`` (or an int)."""
        depth = inputs_shape if isinstance(inputs_shape, (numbers.Integral, np.integer)) \
            else inputs_shape[-1]
        if depth is None or int(depth) <= 0:
            raise ValueError(f"inputs must have a known, positive width (features), got "
                             f"{depth!r}: fastlstm's layers take at least one input feature")
        I, H, Ho = int(depth), self._num_units, self.output_size
        dt = _resolve_dtype(self._dtype, _float_dtype(dtype))
        rng = check_random_state(self._random_state)
        init = self._initializer

        def draw(shape, limit):
            if init is not None:
                arr = np.asarray(init(shape, dtype=dt), dtype=np.float64)
                if arr.shape != tuple(shape):
                    raise ValueError(f"initializer returned shape {arr.shape}, wanted {shape}")
                return arr
            return rng.uniform(-limit, limit, size=shape)

        kernel = draw((I + Ho, 4 * H), np.sqrt(6.0 / (I + Ho + 4 * H)))
        extra = {}
        if self._use_peepholes:  # TF creates them in the order f, i, o
            for k in ("w_f_diag", "w_i_diag", "w_o_diag"):
                extra[k] = draw((H,), np.sqrt(3.0 / H))
        if self._num_proj is not None:
            extra["projection_kernel"] = draw((H, Ho), np.sqrt(6.0 / (H + Ho)))
        self._make(kernel.astype(dt), np.zeros(4 * H, dt), extra, dt)
        return self

    def _make(self, kernel, bias, extra, dt):
        self._layer = from_tf1(kernel, bias, self._forget_bias, cell_clip=self._cell_clip,
                               proj_clip=self._proj_clip, activation=self._activation,
                               dtype=dt, **extra)
        self._remember_bias(bias)
        return self._layer

    def _remember_bias(self, bias):
        """Keep the f block of the TF bias just loaded beside the one fastlstm made of it
        (b_f + forget_bias, rounded), so that ``get_weights`` gives the loaded bias back
        bit for bit while the layer's f block is unchanged; subtracting forget_bias again
        would round in the last bit."""
        H, b = self._num_units, self._layer.b
        tf_f = np.zeros(H, b.dtype) if bias is None else \
            np.asarray(bias)[2 * H:3 * H].astype(b.dtype, copy=True)
        self._bias_f = (tf_f, b[H:2 * H].copy())

    def get_weights(self):
        """TF's variables in creation order: [kernel, bias] (+ [w_f_diag, w_i_diag,
        w_o_diag] with peepholes) (+ [projection kernel] with ``num_proj``)."""
        if self._layer is None:
            return []
        v = to_tf1(self._layer, self._forget_bias)
        H = self._num_units
        memo = getattr(self, "_bias_f", None)
        if memo is not None and np.array_equal(self._layer.b[H:2 * H], memo[1], equal_nan=True):
            v["bias"][2 * H:3 * H] = memo[0]    # unchanged since loaded: as loaded
        out = [v["kernel"], v["bias"]]
        if self._use_peepholes:
            out += [v["w_f_diag"], v["w_i_diag"], v["w_o_diag"]]
        if self._num_proj is not None:
            out.append(v["projection/kernel"])
        return out

    def set_weights(self, weights):
        """Load TF's variables (the ``get_weights`` order).  Builds the cell if needed: the
        input width is read from the kernel."""
        weights = [np.asarray(w) for w in weights]
        n = 2 + 3 * self._use_peepholes + (self._num_proj is not None)
        if len(weights) != n:
            raise ValueError(f"expected {n} arrays (kernel, bias"
                             + (", w_f_diag, w_i_diag, w_o_diag" if self._use_peepholes else "")
                             + (", projection kernel" if self._num_proj is not None else "")
                             + f"), got {len(weights)}")
        kernel, bias = weights[0], weights[1]
        H, Ho = self._num_units, self.output_size
        if kernel.ndim != 2 or kernel.shape[1] != 4 * H or kernel.shape[0] <= Ho:
            raise ValueError(f"kernel must have shape (input_size + {Ho}, {4 * H}), "
                             f"got {kernel.shape}")
        if self._layer is not None and kernel.shape[0] - Ho != self._layer.input_size:
            raise ValueError(f"kernel is for input width {kernel.shape[0] - Ho}, the cell was "
                             f"built for {self._layer.input_size}")
        extra = {}
        rest = weights[2:]
        if self._use_peepholes:
            extra.update(w_f_diag=rest[0], w_i_diag=rest[1], w_o_diag=rest[2])
            rest = rest[3:]
        if self._num_proj is not None:
            P = rest[0]
            if P.shape != (H, Ho):
                raise ValueError(f"projection kernel must have shape ({H}, {Ho}), got {P.shape}")
            extra["projection_kernel"] = P
        dt = self.dtype or _resolve_dtype(kernel.dtype)
        if self._layer is None:
            self._make(kernel, bias, extra, dt)
            return
        # built: the values go into the existing layer (as TF assigns its variables), so
        # that cell.layer, a MultiRNNCell's model and optimisers made on them stay live
        new = from_tf1(kernel, bias, self._forget_bias, cell_clip=self._cell_clip,
                       proj_clip=self._proj_clip, activation=self._activation, dtype=dt,
                       **extra)
        self._layer.flat_params[...] = new.flat_params
        self._remember_bias(bias)

    # -- running ---------------------------------------------------------------------

    def _ensure_built(self, depth, dtype):
        if self._layer is None:
            self.build(depth, dtype)
        elif self._layer.input_size != depth:
            raise ValueError(f"{self.name} was built for input width {self._layer.input_size}, "
                             f"got inputs of width {depth}")
        return self._layer

    def _split_state(self, state, name="state"):
        if state is None or self._state_is_tuple:
            return state
        s = np.asarray(state)
        H, Ho = self._num_units, self.output_size
        if s.ndim != 2 or s.shape[1] != H + Ho:
            raise ValueError(f"{name} must have shape (batch, {H + Ho}) [c, h] with "
                             f"state_is_tuple=False, got {s.shape}")
        return LSTMStateTuple(s[:, :H], s[:, H:])

    def _join_state(self, state):
        return state if self._state_is_tuple else np.concatenate([state.c, state.h], axis=1)

    def __call__(self, inputs, state, scope=None):
        """One step: inputs (N, I), state ``LSTMStateTuple(c, h)`` -> (output, new_state)."""
        x = np.asarray(inputs)
        if x.ndim != 2:
            raise ValueError(f"inputs must be 2-D [batch, features], got shape {x.shape}")
        _given_state(state)
        with _building([self]):
            layer = self._ensure_built(x.shape[1], _input_dtype(x, state))
            out, new = layer.step(x, self._split_state(state))
        return out, self._join_state(new)

    def __repr__(self):
        return f"{type(self).__name__}({self._num_units})"


class BasicLSTMCell(_LSTMCellBase):
    """TF1 ``BasicLSTMCell(num_units, forget_bias=1.0, state_is_tuple=True, activation=None,
    reuse=None, name=None, dtype=None)``; ``random_state`` seeds the initial weights."""

    _tf_name = "basic_lstm_cell"

    def __init__(self, num_units, forget_bias=1.0, state_is_tuple=True, activation=None,
                 reuse=None, name=None, dtype=None, random_state=None, **kwargs):
        _no_extra(kwargs, "BasicLSTMCell")
        super().__init__(num_units, use_peepholes=False, cell_clip=None, initializer=None,
                         num_proj=None, proj_clip=None, forget_bias=forget_bias,
                         state_is_tuple=state_is_tuple, activation=activation, name=name,
                         dtype=dtype, random_state=random_state)


class LSTMCell(_LSTMCellBase):
    """TF1 ``LSTMCell(num_units, use_peepholes=False, cell_clip=None, initializer=None,
    num_proj=None, proj_clip=None, num_unit_shards=None, num_proj_shards=None,
    forget_bias=1.0, state_is_tuple=True, activation=None, reuse=None, name=None,
    dtype=None)``; the shard arguments only split TF's variables and are ignored."""

    def __init__(self, num_units, use_peepholes=False, cell_clip=None, initializer=None,
                 num_proj=None, proj_clip=None, num_unit_shards=None, num_proj_shards=None,
                 forget_bias=1.0, state_is_tuple=True, activation=None, reuse=None, name=None,
                 dtype=None, random_state=None, **kwargs):
        _no_extra(kwargs, "LSTMCell")
        super().__init__(num_units, use_peepholes=use_peepholes, cell_clip=cell_clip,
                         initializer=initializer, num_proj=num_proj, proj_clip=proj_clip,
                         forget_bias=forget_bias, state_is_tuple=state_is_tuple,
                         activation=activation, name=name, dtype=dtype,
                         random_state=random_state)


def _no_extra(kwargs, name):
    if kwargs:
        raise TypeError(f"{name}() got unexpected keyword arguments {sorted(kwargs)}")


class MultiRNNCell(RNNCell):
    """TF1 ``MultiRNNCell(cells, state_is_tuple=True)``: a stack, state one entry per cell."""

    def __init__(self, cells, state_is_tuple=True):
        cells = list(cells)
        if not cells:
            raise ValueError("Must specify at least one cell for MultiRNNCell.")
        for k, c in enumerate(cells):
            if isinstance(c, MultiRNNCell):
                raise TypeError(f"cells[{k}] is a MultiRNNCell: nested stacks are not "
                                "supported; list its cells in this MultiRNNCell instead")
            if not isinstance(c, _LSTMCellBase):
                raise TypeError(f"cells[{k}] must be a BasicLSTMCell or LSTMCell, "
                                f"got {type(c).__name__}")
        if len({id(c) for c in cells}) != len(cells):
            raise ValueError("each cell of a MultiRNNCell must be its own object "
                             "(build a new cell per layer: [BasicLSTMCell(n) for n in sizes])")
        if not state_is_tuple and any(c._state_is_tuple for c in cells):
            raise ValueError("Some cells return tuples of states, but the flag state_is_tuple "
                             "is not set.")
        self._cells = cells
        self._state_is_tuple = bool(state_is_tuple)
        self._model = None
        self._model_key = None

    @property
    def cells(self):
        return list(self._cells)

    @property
    def state_size(self):
        sizes = tuple(c.state_size for c in self._cells)
        return sizes if self._state_is_tuple else sum(sizes)

    @property
    def output_size(self):
        return self._cells[-1].output_size

    @property
    def dtype(self):
        return self._cells[0].dtype

    def zero_state(self, batch_size, dtype):
        batch_size = _batch_size(batch_size)
        states = tuple(c.zero_state(batch_size, dtype) for c in self._cells)
        return states if self._state_is_tuple else np.concatenate(states, axis=1)

    def _split_state(self, state, name="state"):
        if state is None:
            return None
        if self._state_is_tuple:
            if not isinstance(state, (tuple, list)) or isinstance(state, LSTMState) \
                    or len(state) != len(self._cells):
                raise _StateTupleError(f"{name} must be a tuple with one state per cell: "
                                       f"expected a tuple of length {len(self._cells)}, "
                                       f"got {type(state).__name__}")
            return tuple(c._split_state(s, f"{name}[{k}]")
                         for k, (c, s) in enumerate(zip(self._cells, state)))
        widths = [c.state_size for c in self._cells]
        try:
            s = np.asarray(state)
        except ValueError:                   # ragged: a tuple of per-cell states
            s = None
        if s is None or s.dtype == object:
            raise TypeError(f"{name} must be one array (batch, {sum(widths)}) with "
                            "state_is_tuple=False (the cells' [c, h] side by side), got a "
                            f"{type(state).__name__} of {len(state)} states")
        if s.ndim != 2 or s.shape[1] != sum(widths):
            raise ValueError(f"{name} must have shape (batch, {sum(widths)}), got {s.shape}")
        parts = np.split(s, np.cumsum(widths)[:-1], axis=1)
        return tuple(c._split_state(p) for c, p in zip(self._cells, parts))

    def _join_state(self, states):
        joined = tuple(c._join_state(s) for c, s in zip(self._cells, states))
        return joined if self._state_is_tuple else np.concatenate(joined, axis=1)

    def _ensure_built(self, depth, dtype):
        width = depth
        for cell in self._cells:
            cell._ensure_built(width, dtype)
            width = cell.output_size
            dtype = cell.dtype
        dts = {c.dtype for c in self._cells}
        if len(dts) > 1:
            raise TypeError("the cells of a MultiRNNCell must share one dtype, got "
                            f"{sorted(map(str, dts))}")
        return self._current_model()

    def _current_model(self):
        # The cells' layers in one MultiLSTM.  As in TF, built cells may be wrapped again in
        # another MultiRNNCell, which then shares their weights: the layers move to the stack
        # that runs (a lending MultiLSTM lets another one take them), and a stack whose
        # layers have moved builds its MultiLSTM anew before running.
        key = tuple(id(c.layer) for c in self._cells)
        if self._model_key != key or any(
                c.layer._owner is None or c.layer._owner() is not self._model
                for c in self._cells):
            self._model = None
            self._model = MultiLSTM([c.layer for c in self._cells])
            self._model._lends_layers = True
            self._model_key = key
        return self._model

    @property
    def model(self):
        """The fastlstm ``MultiLSTM`` of the cells' layers (None before the first call)."""
        return self._current_model() if all(c.built for c in self._cells) else None

    def __call__(self, inputs, state, scope=None):
        x = np.asarray(inputs)
        if x.ndim != 2:
            raise ValueError(f"inputs must be 2-D [batch, features], got shape {x.shape}")
        _given_state(state)
        with _building(self._cells):
            model = self._ensure_built(x.shape[1], _input_dtype(x, state))
            out, states = model.step(x, self._split_state(state))
        return out, self._join_state(states)

    def get_weights(self):
        """The cells' ``get_weights`` lists, bottom cell first (TF's variable order)."""
        return [w for c in self._cells for w in c.get_weights()]

    def set_weights(self, weights):
        """Load the cells' weights from one list in the ``get_weights`` order (TF's
        variables: per cell kernel, bias, then peepholes and projection when it has
        them).  Unbuilt cells are built from the kernels' shapes."""
        weights = list(weights)
        counts = [2 + 3 * c._use_peepholes + (c._num_proj is not None) for c in self._cells]
        if len(weights) != sum(counts):
            raise ValueError(f"expected {sum(counts)} arrays ({', '.join(map(str, counts))} "
                             f"for the {len(counts)} cells), got {len(weights)}")
        at, width = 0, None
        for k, (cell, n) in enumerate(zip(self._cells, counts)):
            kernel = np.asarray(weights[at])
            if width is not None and kernel.ndim == 2 and \
                    kernel.shape[0] - cell.output_size != width:
                raise ValueError(f"cell {k}'s kernel is for input width "
                                 f"{kernel.shape[0] - cell.output_size}, but cell {k - 1} "
                                 f"outputs {width}")
            at += n
            width = cell.output_size
        # all or nothing: a cell refusing its arrays puts back the cells set before it
        before = [(cell, cell.get_weights() if cell.built else None) for cell in self._cells]
        at = 0
        try:
            for cell, n in zip(self._cells, counts):
                cell.set_weights(weights[at:at + n])
                at += n
        except BaseException:
            for cell, saved in before:
                if saved is None:
                    cell._layer = None
                else:
                    cell.set_weights(saved)
            raise


# ---------------------------------------------------------------------------------------
# dynamic_rnn


def _as_inputs(inputs):
    x = np.asarray(inputs)
    if x.ndim != 3:
        raise ValueError(f"inputs must be 3-D [batch, time, depth] (or [time, batch, depth] "
                         f"with time_major=True), got shape {x.shape}")
    return x


def _check_cell(cell, name="cell"):
    if not isinstance(cell, (_LSTMCellBase, MultiRNNCell)):
        raise TypeError(f"{name} must be a BasicLSTMCell, LSTMCell or MultiRNNCell, "
                        f"got {type(cell).__name__}")


def _whole_lengths(sequence_length):
    """TF casts sequence_length to int32: float values that are whole numbers are taken
    as those integers; others are refused (TF would truncate them)."""
    if sequence_length is None or isinstance(sequence_length, np.ndarray) and \
            sequence_length.dtype.kind in "iu":
        return sequence_length
    L = np.asarray(sequence_length)
    if L.dtype.kind == "f":
        if not np.all(np.isfinite(L) & (L == np.round(L))):
            raise ValueError(f"sequence_length must hold whole numbers, got {L.tolist()}")
        return L.astype(np.int64)
    return L


def _prepare(cell, inputs, sequence_length, initial_state, dtype, time_major, reverse, name):
    """Check a dynamic_rnn call and build the cell: returns the function that runs it.
    Everything the run would refuse is refused here, before any kernel runs (call it
    inside ``_building``: a refused call leaves the cell as it was)."""
    _check_cell(cell, name)
    x = _as_inputs(inputs)
    if isinstance(time_major, (numbers.Integral, np.integer)):   # TF tests its truth value
        time_major = bool(time_major)
    time_major = _check_time_major(time_major)
    N, T = (x.shape[1], x.shape[0]) if time_major else x.shape[:2]
    sequence_length = _as_lengths(_whole_lengths(sequence_length), N, T, "sequence_length")
    if initial_state is None and dtype is None:
        raise ValueError("If there is no initial_state, you must give a dtype.")
    dtype = _float_dtype(dtype)
    # the argument that holds this cell's state: initial_state, initial_state_fw / _bw
    state_name = "initial_state" + name[len("cell"):]
    s0 = cell._split_state(initial_state, state_name)
    if initial_state is None and dtype is not None and cell.dtype is not None and \
            _resolve_dtype(dtype) != cell.dtype:
        # TF: the zero state takes dtype, the cell's variables keep theirs: they do not mix
        raise TypeError(f"dtype={np.dtype(dtype).name} does not match {name}'s dtype "
                        f"{cell.dtype.name} (its weights were made in {cell.dtype.name})")
    model = cell._ensure_built(x.shape[2], _resolve_dtype(cell.dtype, dtype, x.dtype))
    layers = model.layers if isinstance(cell, MultiRNNCell) else [model]
    states = [None] * len(layers) if s0 is None else (
        list(s0) if isinstance(cell, MultiRNNCell) else [s0])
    # the layers' own checks of the inputs and states, on no time steps (no kernel runs)
    out = x[:0] if time_major else x[:, :0]
    for k, (layer, state) in enumerate(zip(layers, states)):
        try:
            out = layer(out, state, time_major=time_major)[0]
        except (TypeError, ValueError) as exc:
            # the layer names its state "initial_state": say which argument and cell
            msg = str(exc)
            if state is None or not msg.startswith("initial_state"):
                raise
            where = f"{state_name}[{k}]" if isinstance(cell, MultiRNNCell) else state_name
            raise type(exc)(where + msg[len("initial_state"):]) from None

    def run():
        out = x
        final = []
        for layer, state in zip(layers, states):
            out, s = layer(out, state, lengths=sequence_length, time_major=time_major,
                           reverse=reverse)
            final.append(s)
        return out, cell._join_state(tuple(final) if isinstance(cell, MultiRNNCell)
                                     else final[0])

    return run


def _run(cell, inputs, sequence_length, initial_state, dtype, time_major, reverse, name):
    # the run too: checks that depend on the time steps (sizes, memory) come with it
    with _building(_cells_of(cell)):
        run = _prepare(cell, inputs, sequence_length, initial_state, dtype, time_major,
                       reverse, name)
        return run()


def dynamic_rnn(cell, inputs, sequence_length=None, initial_state=None, dtype=None,
                parallel_iterations=None, swap_memory=False, time_major=False, scope=None):
    """TF1 ``dynamic_rnn``: returns ``(outputs, state)``.

    inputs : [batch, time, depth] ([time, batch, depth] with ``time_major``).
    sequence_length : [batch] ints in [0, time]: outputs past a row's length are 0 and its
        state is carried; a length of 0 returns the initial state.
    initial_state : the cell's state structure; without it ``dtype`` is required.
    """
    return _run(cell, inputs, sequence_length, initial_state, dtype, time_major, False, "cell")


def bidirectional_dynamic_rnn(cell_fw, cell_bw, inputs, sequence_length=None,
                              initial_state_fw=None, initial_state_bw=None, dtype=None,
                              parallel_iterations=None, swap_memory=False, time_major=False,
                              scope=None):
    """TF1 ``bidirectional_dynamic_rnn``: ``((output_fw, output_bw), (state_fw, state_bw))``.

    The backward cell reads each row's valid prefix in reverse (TF ``reverse_sequence``)
    and its outputs are returned in the original time order.  With ``MultiRNNCell`` cells
    each stack runs whole in its direction, as in TF.
    """
    if cell_fw is cell_bw:
        raise ValueError("cell_fw and cell_bw must be two different cell objects")
    with _building(_cells_of(cell_fw, cell_bw)):    # both checked before either runs
        run_fw = _prepare(cell_fw, inputs, sequence_length, initial_state_fw, dtype,
                          time_major, False, "cell_fw")
        run_bw = _prepare(cell_bw, inputs, sequence_length, initial_state_bw, dtype,
                          time_major, True, "cell_bw")
        out_fw, st_fw = run_fw()
        out_bw, st_bw = run_bw()
    return (out_fw, out_bw), (st_fw, st_bw)


# ---------------------------------------------------------------------------------------
# TF-style namespaces: tf.nn.*, tf.nn.rnn_cell.*, tf.contrib.rnn.*, tf.compat.v1.*

_cells = dict(BasicLSTMCell=BasicLSTMCell, LSTMCell=LSTMCell, MultiRNNCell=MultiRNNCell,
              LSTMStateTuple=LSTMStateTuple, RNNCell=RNNCell)
nn = SimpleNamespace(dynamic_rnn=dynamic_rnn, bidirectional_dynamic_rnn=bidirectional_dynamic_rnn,
                     rnn_cell=SimpleNamespace(**_cells), tanh=tanh, sigmoid=sigmoid, relu=relu)
contrib = SimpleNamespace(rnn=SimpleNamespace(**_cells))
compat = SimpleNamespace(v1=SimpleNamespace(nn=nn, float32=float32, float64=float64,
                                            random_uniform_initializer=random_uniform_initializer,
                                            glorot_uniform_initializer=glorot_uniform_initializer,
                                            constant_initializer=constant_initializer,
                                            zeros_initializer=zeros_initializer))
del _cells
