"""scikit-learn estimators over fastlstm: ``LSTMRegressor``, ``LSTMClassifier``, ``LSTMEncoder``.

Input
-----
``X`` is 3-D ``(n_samples, n_timesteps, n_features)``, or 2-D ``(n_samples, n_timesteps)``
read as univariate sequences (one feature per step).  ``n_features_in_`` is therefore the
number of features *per time step* (1 for 2-D input), and a different number of time steps
at predict time is valid input: a recurrent network reads sequences of any length.

Variable lengths, either way:

- ``lengths=`` (one int in ``[1, n_timesteps]`` per sample) on ``fit``, ``predict``, ... :
  the steps past a sample's length are ignored (they may hold anything, NaN included);
- NaN padding: a time step whose features are *all* NaN is padding, and padding may only
  trail (every later step is padding too).  A sample's length is its number of leading
  non-padding steps.  This works where no extra argument can travel with ``X`` (Pipeline,
  GridSearchCV, cross_val_score).  Any other NaN, and any infinity, is a ``ValueError``.

Network: a stack of LSTM layers (``hidden_sizes``, optionally bidirectional), pooled into
one feature vector per sample (``pooling``: the last valid step's output, or the mean over
the valid steps), then a dense readout.  Training is mini-batch backpropagation through
time with Adam or SGD, L2 penalty ``alpha`` on the kernels (not the biases), gradient-norm
clipping, and MLPRegressor's stopping rules (``tol``, ``n_iter_no_change``,
``early_stopping``).

Inference runs in batches of at most 256 samples (fewer for long sequences, see
``_inference_batch_size``), each computed on its own: a sample's result depends only on
its batch.  ``fastlstm.dask`` aligns chunk boundaries to these batches, which is why a
Dask prediction is bit-identical to ``predict``.
"""

import contextlib
import math
import numbers
import os
import sys
import time
import warnings

import numpy as np

try:
    from sklearn.base import (BaseEstimator, ClassifierMixin, RegressorMixin,
                              TransformerMixin, _fit_context)
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils._param_validation import Interval, StrOptions
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import (_get_feature_names, assert_all_finite,
                                          check_array, check_is_fitted, column_or_1d)
except ImportError:
    from ._optional import need
    need("sklearn", "fastlstm's estimators (LSTMRegressor, LSTMClassifier, LSTMEncoder)")
    raise

from . import _threads
from .dask import _with_threads
from .layers import (_UNSET, LSTM, Bidirectional, LSTMState, MultiLSTM, _LengthsDtypeError,
                     _refuse_masked)
from .optim import SGD, Adam, clip_grad_norm
from .readout import Dense, _log_softmax64, mse_loss, softmax_cross_entropy

__all__ = ["LSTMRegressor", "LSTMClassifier", "LSTMEncoder"]

# Inference: at most this many samples per kernel call, and at most this many numbers in
# one layer's output for a batch (bounds memory for long sequences).
_MAX_INFERENCE_BATCH = 256
_INFERENCE_ELEMENTS = 1 << 23


# ---------------------------------------------------------------------------------------
# input checks


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return dt


def _check_hidden_sizes(hidden_sizes):
    sizes = [hidden_sizes] if isinstance(hidden_sizes, numbers.Integral) else hidden_sizes
    try:
        sizes = list(sizes)
    except TypeError:
        sizes = None
    if not sizes or any(isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1
                        for h in sizes):
        raise ValueError("hidden_sizes must be a positive int or a non-empty sequence of "
                         f"positive ints (units per layer, bottom first), got {hidden_sizes!r}")
    return tuple(int(h) for h in sizes)


def _check_lengths(lengths, X):
    """Validated explicit ``lengths``: int64 (n,) in [1, T]; None when every row is full."""
    n, T = X.shape[:2]
    _refuse_masked(lengths, "lengths", "give every row's length")
    L = np.asarray(lengths)
    if L.dtype.kind not in "iu":
        raise _LengthsDtypeError(f"lengths must be integers, got dtype {L.dtype}")
    if L.shape != (n,):
        raise ValueError(f"lengths must have shape ({n},) (one per sample), got {L.shape}")
    if n and (L.min() < 1 or L.max() > T):
        raise ValueError(f"lengths must be in [1, n_timesteps={T}], got values from "
                         f"{L.min()} to {L.max()}")
    valid = np.arange(T)[None, :] < L[:, None]                  # (n, T)
    if (~np.isfinite(X)).any(axis=2)[valid].any():
        raise ValueError("Input X contains NaN or infinity within the valid steps "
                         "(t < lengths); only the steps past a sample's length may hold them")
    L = L.astype(np.int64)
    return None if (not n or L.min() == T) else L


def _nan_lengths(X):
    """Lengths from trailing NaN padding (a step whose features are all NaN); None if none."""
    finite = np.isfinite(X)
    if finite.all():
        return None
    if np.isinf(X).any():
        raise ValueError("Input X contains infinity; only NaN padding of trailing time "
                         "steps is allowed")
    bad = ~finite
    pad = bad.all(axis=2)                                       # (n, T) padding steps
    if (bad.any(axis=2) & ~pad).any():
        n, t = np.argwhere(bad.any(axis=2) & ~pad)[0]
        raise ValueError(
            f"Input X contains NaN: sample {n}, step {t} has both NaN and finite features; "
            "NaN is only allowed as padding, with every feature of a trailing step NaN")
    gap = pad[:, :-1] & ~pad[:, 1:]
    if gap.any():
        n, t = np.argwhere(gap)[0]
        raise ValueError(
            f"Input X contains NaN: sample {n}, step {t} is NaN but step {t + 1} is not; "
            "NaN padding must trail (all steps after the first padded one are NaN)")
    L = X.shape[1] - pad.sum(axis=1)
    if L.min() < 1:
        raise ValueError(f"Input X contains NaN in every step of sample {int(np.argmin(L))}: "
                         "each sample needs at least one valid (non-NaN) step")
    return L.astype(np.int64)


def _check_column_names(est, X, reset):
    """``feature_names_in_`` from a DataFrame's column names (2-D X: one column per time
    step), checked as scikit-learn checks them, except that fewer or more columns are
    shorter or longer sequences: the names the two have in common must match, in order."""
    names = _get_feature_names(X)
    fitted = getattr(est, "feature_names_in_", None)
    if reset:
        if names is not None:
            est.feature_names_in_ = names
        elif hasattr(est, "feature_names_in_"):
            del est.feature_names_in_
        return
    cls = type(est).__name__
    if names is None and fitted is not None:
        warnings.warn(f"X does not have valid feature names, but {cls} was fitted with "
                      "feature names", UserWarning, stacklevel=_caller_stacklevel())
    elif names is not None and fitted is None:
        warnings.warn(f"X has feature names, but {cls} was fitted without feature names",
                      UserWarning, stacklevel=_caller_stacklevel())
    elif names is not None:
        common = min(len(names), len(fitted))
        bad = [k for k in range(common) if names[k] != fitted[k]]
        if bad:
            k = bad[0]
            raise ValueError(
                "The feature names should match those that were passed during fit.\n"
                f"Column {k} is {names[k]!r}, fitted as {fitted[k]!r}: X's columns are "
                "the time steps, in order (fewer or more columns are shorter or longer "
                "sequences, but the columns they share must keep their names)")


def _validate_X(est, X, *, reset, lengths=None, check_names=True):
    """X -> (3-D array (n, T, F) of the estimator's dtype, lengths (n,) int64 or None).

    2-D X is read as (n_samples, n_timesteps) univariate sequences.  Sets
    ``n_features_in_`` (features per step) when ``reset``, checks it otherwise.
    """
    if not reset and hasattr(est, "model_"):
        dtype = est.model_.dtype    # the fitted network's: set_params(dtype=) is for a refit
    else:
        dtype = _check_dtype(est.dtype)
    other = np.float64 if dtype == np.float32 else np.float32
    if check_names:        # (not per chunk of a Dask array, which has no names)
        _check_column_names(est, X, reset)
    if isinstance(X, np.ma.MaskedArray) and np.ma.is_masked(X):
        # check_array would drop the mask and read the values under it
        raise TypeError("X is a masked array with masked entries, and a mask is not read: "
                        "fill them with NaN (X.filled(np.nan): trailing all-NaN steps are "
                        "padding) or pass lengths=")
    if isinstance(getattr(X, "dtype", None), np.dtype) and X.dtype.kind == "f" \
            and X.dtype.itemsize > 8:
        # long double: to float64 first (check_array would cast it straight to a float32
        # network's dtype, past the range check below)
        X = np.asarray(X, np.float64)
    elif isinstance(X, (list, tuple)) or (isinstance(X, np.ndarray) and X.dtype == object):
        # nested lists and object arrays likewise: check_array would cast them straight to
        # the first dtype it accepts (float32), turning values beyond its range into inf
        try:
            X = np.asarray(X, np.float64)
        except (TypeError, ValueError):
            pass                # check_array's own error, for what is not numbers
    elif hasattr(X, "to_numpy") and any(getattr(d, "kind", "") == "O"
                                        for d in getattr(X, "dtypes", ())):
        # a DataFrame with object columns: the same (its missing values, pd.NA, as NaN)
        try:
            values = X.to_numpy(dtype=object, copy=True)
            values[np.asarray(X.isna(), bool)] = np.nan
            X = values.astype(np.float64)
        except (AttributeError, TypeError, ValueError):
            pass
    X = check_array(X, accept_sparse=False, dtype=[dtype, other], ensure_all_finite=False,
                    allow_nd=True, ensure_min_samples=1, ensure_min_features=1,
                    estimator=est, input_name="X")
    columns = X.shape[-1]      # what a previous step names: time steps (2-D) or features
    if X.ndim == 2:
        X = X[:, :, None]
    elif X.ndim != 3:
        raise ValueError(
            "X must be 2-D (n_samples, n_timesteps) (univariate sequences) or 3-D "
            f"(n_samples, n_timesteps, n_features), got a {X.ndim}-D array of shape {X.shape}")
    n, T, F = X.shape
    if T < 1 or F < 1:
        raise ValueError(f"X of shape {X.shape} needs at least 1 time step and 1 feature "
                         "(n_samples, n_timesteps, n_features)")
    if reset:
        est.n_features_in_ = F
        est._n_columns_in = columns
    elif F != est.n_features_in_:
        raise ValueError(
            f"X has {F} features per time step, but {type(est).__name__} is expecting "
            f"{est.n_features_in_} features per time step as input (X is "
            "(n_samples, n_timesteps, n_features); 2-D X has 1 feature per step)")
    L = _nan_lengths(X) if lengths is None else _check_lengths(lengths, X)
    if X.dtype.itemsize > dtype.itemsize and X.size:
        # float64 input to a float32 network: a finite value of a valid step beyond
        # float32's range would turn into infinity on the way in (a NaN model from a fit,
        # NaN predictions); padded steps may hold anything
        big = _largest_valid(X, L)
        if big > float(np.finfo(dtype).max):
            raise ValueError(
                f"Input X holds values up to {big:.3g}, beyond the range of "
                f"dtype={dtype.name} (largest {np.finfo(dtype).max:.3g}): scale X, or use "
                "dtype='float64'")
    return X, L


def _largest_valid(X, L, block_bytes=1 << 20):
    """max |x| over the finite values of the valid steps of X, read in blocks of samples
    (the memory it takes stays bounded for large or memory-mapped X)."""
    n, T = X.shape[:2]
    rows = max(1, block_bytes // max(1, X[0].nbytes))
    top = 0.0
    for s in range(0, n, rows):
        block = X[s:s + rows]
        if L is not None:
            block = block[np.arange(T)[None, :] < L[s:s + rows, None]]
        top = max(top, float(np.fmax.reduce(np.abs(block), axis=None, initial=0.0)))
    return top


def _forget_targets(est):
    """Drop what a previous fit learnt of its targets (an encoder refit with another
    objective must not keep ``classes_`` or ``n_outputs_``)."""
    for name in ("classes_", "n_outputs_", "_y_ndim", "_y_mean", "_y_scale"):
        est.__dict__.pop(name, None)


@contextlib.contextmanager
def _unchanged_on_error(est):
    """Leave ``est``'s attributes as they were when the block raises (a failed refit
    keeps the fitted model, as scikit-learn's estimators do)."""
    saved = dict(est.__dict__)
    try:
        yield
    except BaseException:
        est.__dict__.clear()
        est.__dict__.update(saved)
        raise


def _batch_input(X, idx, L, dtype):
    """Rows ``idx`` (slice or index array) of X as a C-contiguous array of ``dtype``, with
    padded steps set to 0, and their lengths."""
    # valid steps were checked to fit in ``dtype``; padded steps may hold anything and
    # are zeroed below, so their overflow in the cast is not worth a warning
    with np.errstate(over="ignore", invalid="ignore"):
        Xb = np.ascontiguousarray(X[idx], dtype=dtype)
    if L is None:
        return Xb, None
    Lb = L[idx]
    pad = np.arange(Xb.shape[1])[None, :] >= Lb[:, None]
    if pad.any():
        if np.shares_memory(Xb, X):
            Xb = Xb.copy()
        Xb[pad] = 0
    return Xb, (None if Lb.min() == Xb.shape[1] else Lb)


# ---------------------------------------------------------------------------------------
# the network: LSTM stack -> pooled features -> dense readout


def _build_stack(n_features, hidden_sizes, bidirectional, dtype, n_threads, rng):
    layers = []
    width = n_features
    for h in hidden_sizes:
        if bidirectional:
            layers.append(Bidirectional(
                LSTM(width, h, dtype=dtype, random_state=rng, n_threads=n_threads),
                LSTM(width, h, dtype=dtype, random_state=rng, n_threads=n_threads)))
            width = 2 * h
        else:
            layers.append(LSTM(width, h, dtype=dtype, random_state=rng, n_threads=n_threads))
            width = h
    return MultiLSTM(layers)


def _set_threads(module, n_threads):
    """Set ``n_threads`` on every LSTM of ``module`` (in place)."""
    if isinstance(module, MultiLSTM):
        for layer in module.layers:
            _set_threads(layer, n_threads)
    elif isinstance(module, Bidirectional):
        _set_threads(module.forward_layer, n_threads)
        _set_threads(module.backward_layer, n_threads)
    else:
        module.n_threads = n_threads


def _top_final_h(states):
    """The top layer's final h (n, D): [forward | backward] for a bidirectional top."""
    top = states[-1]
    if isinstance(top, LSTMState):
        return top.h
    return np.concatenate([top[0].h, top[1].h], axis=1)


def _pool(Y, states, L, pooling):
    if pooling == "last":
        return _top_final_h(states)
    if L is None:
        return Y.mean(axis=1)
    return Y.sum(axis=1) / L[:, None].astype(Y.dtype)   # padded outputs are 0


# scikit-learn's decorators around estimator methods: (function, file)
_SKLEARN_WRAPPERS = {("wrapper", "base.py"), ("wrapped", "_set_output.py")}


def _caller_stacklevel():
    """``stacklevel`` for a warning issued by the function that calls this one, pointing at
    the first frame outside fastlstm and scikit-learn's method wrappers (``_fit_context``,
    ``set_output``), however many of their frames lie in between: the user's line, or the
    scikit-learn code (a Pipeline, a search) that called the method."""
    here = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame = sys._getframe(2)        # the caller of the function that warns
    level = 2
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        wrapper = ((frame.f_code.co_name, os.path.basename(name)) in _SKLEARN_WRAPPERS
                   and os.path.basename(os.path.dirname(name)) in ("sklearn", "utils"))
        if not name.startswith(here) and not wrapper:
            return level
        frame = frame.f_back
        level += 1
    return 1


class _BaseLSTM(BaseEstimator):
    """Parameters, validation, training loop and batched inference shared by the three."""

    _parameter_constraints = {
        "hidden_sizes": ["array-like", Interval(numbers.Integral, 1, None, closed="left")],
        "bidirectional": ["boolean"],
        "pooling": [StrOptions({"last", "mean"})],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left"),
                       StrOptions({"auto"})],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "optimizer": [StrOptions({"adam", "sgd"})],
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "clip_norm": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "shuffle": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "dtype": [StrOptions({"float32", "float64"}), type, np.dtype],
        "n_threads": [Interval(numbers.Integral, None, None, closed="neither"), None],
    }

    def __init__(self, hidden_sizes=(32,), *, bidirectional=False, pooling="last",
                 max_iter=100, batch_size="auto", learning_rate=1e-3, optimizer="adam",
                 alpha=1e-4, clip_norm=5.0, shuffle=True, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, tol=1e-4, random_state=None,
                 warm_start=False, verbose=False, dtype="float32", n_threads=None):
        self.hidden_sizes = hidden_sizes
        self.bidirectional = bidirectional
        self.pooling = pooling
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.alpha = alpha
        self.clip_norm = clip_norm
        self.shuffle = shuffle
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.dtype = dtype
        self.n_threads = n_threads

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        return tags

    # -- parameters beyond the constraint table ---------------------------------------

    def _check_params(self):
        _check_dtype(self.dtype)
        _check_hidden_sizes(self.hidden_sizes)
        _threads.check_n_threads(self.n_threads)

    # -- network -----------------------------------------------------------------------

    def _init_network(self, n_features, n_outputs, rng):
        dtype = _check_dtype(self.dtype)
        sizes = _check_hidden_sizes(self.hidden_sizes)
        self._arch = (n_features, sizes, bool(self.bidirectional), dtype.name)
        self.model_ = _build_stack(n_features, sizes, bool(self.bidirectional), dtype,
                                   self.n_threads, rng)
        D = self.model_.output_size
        self.readout_ = (None if n_outputs is None                  # reservoir encoder
                         else Dense(D, n_outputs, dtype=dtype, random_state=rng))
        self._fit_pooling = self.pooling
        self._model_threads = self.n_threads
        self._optimizer = None

    def _inference_batch_size(self, n_timesteps):
        """Samples per inference batch for sequences of ``n_timesteps`` steps (a function
        of the fitted network and T only, so that Dask chunks can be aligned to it)."""
        width = max(layer.output_size for layer in self.model_.layers)
        width = max(width, self.model_.input_size)
        b = _MAX_INFERENCE_BATCH
        while b > 1 and b * n_timesteps * width > _INFERENCE_ELEMENTS:
            b //= 2
        return b

    def _inference_model(self, n_threads):
        """The fitted stack, as a shallow copy with other thread settings when needed."""
        n_threads = self.n_threads if n_threads is None else n_threads
        if n_threads == self._model_threads:
            return self.model_
        return _with_threads(self.model_, n_threads)

    def _infer(self, X, L, n_threads=None, readout=True):
        """Batched inference on validated X (n, T, F): the readout output (n, K), or the
        pooled features (n, D) with ``readout=False``; model dtype."""
        model = self._inference_model(n_threads)
        n, T = X.shape[:2]
        dtype = model.dtype
        width = self.readout_.out_features if readout else model.output_size
        out = np.empty((n, width), dtype)
        B = self._inference_batch_size(T)
        # Everything per batch and BLAS on one thread: a sample's result depends on its
        # batch only, not on the BLAS threading (exact Dask / in-process agreement).
        with _threads.blas_single_thread(openmp=False):
            for s in range(0, n, B):
                Xb, Lb = _batch_input(X, slice(s, s + B), L, dtype)
                Y, states = model(Xb, lengths=Lb)
                F = _pool(Y, states, Lb, self._fit_pooling)
                if readout:
                    out[s:s + B] = self.readout_(F)
                else:
                    out[s:s + B] = F
        return out

    # -- training ---------------------------------------------------------------------

    def _decay_mask(self):
        """1 for the kernels (W, U, P) in ``model_.flat_params``, 0 for biases/peepholes."""
        flat = self.model_.flat_params
        mask = np.zeros(flat.shape, flat.dtype)
        base = flat.__array_interface__["data"][0]
        for name, view in self.model_.params.items():
            if name.rsplit(".", 1)[-1] in ("W", "U", "P"):
                start = (view.__array_interface__["data"][0] - base) // flat.itemsize
                mask[start:start + view.size] = 1
        return mask

    def _param_pairs(self):
        return [self.model_, self.readout_]

    def _train_batch(self, Xb, Lb, tb):
        """One optimiser step on a batch; returns the batch loss (with the L2 term).  BLAS
        on one thread (the readout's products too): the same bits whatever BLAS's thread
        count (joblib workers of GridSearchCV(n_jobs=2) limit it)."""
        with _threads.blas_single_thread(openmp=False):
            loss = self._loss_grads(Xb, Lb, tb)
            if self.clip_norm is not None:
                clip_grad_norm(self._param_pairs(), self.clip_norm)
            self._optimizer.step()
        return loss

    def _loss_grads(self, Xb, Lb, tb):
        """Batch loss (with the L2 term); its gradients are written to ``model_.flat_grads``
        and the readout's gradient buffer."""
        model = self.model_
        nb = Xb.shape[0]
        Y, states, cache = model.forward(Xb, lengths=Lb)
        F = _pool(Y, states, Lb, self._fit_pooling)
        Z, head_cache = self.readout_.forward(F)
        loss, dZ = self._loss_grad(Z, tb)                      # dZ: d(mean loss)/dZ
        dF = self.readout_.backward(dZ, head_cache)
        dY = np.zeros_like(Y)
        dstate = None
        if self._fit_pooling == "last":
            top = model.layers[-1]
            if isinstance(top, Bidirectional):
                hf = top.forward_layer.output_size
                c_f = np.zeros((nb, top.forward_layer.hidden_size), Y.dtype)
                c_b = np.zeros((nb, top.backward_layer.hidden_size), Y.dtype)
                top_d = (LSTMState(c_f, dF[:, :hf]), LSTMState(c_b, dF[:, hf:]))
            else:
                top_d = LSTMState(np.zeros((nb, top.hidden_size), Y.dtype), dF)
            dstate = (None,) * (len(model.layers) - 1) + (top_d,)
        elif Lb is None:
            dY[...] = dF[:, None, :] / Y.shape[1]
        else:
            valid = np.arange(Y.shape[1])[None, :] < Lb[:, None]
            dY[...] = (dF / Lb[:, None].astype(Y.dtype))[:, None, :]
            dY[~valid] = 0
        model.backward(dY, cache, dstate, input_grad=False)
        if self.alpha:                        # L2 on the kernels, as MLPRegressor scales it
            w = model.flat_params
            a = self.alpha / nb
            wd = w * self._decay
            W = self.readout_.W
            loss += 0.5 * a * (float(np.dot(wd, w)) + float(np.sum(W * W)))
            wd *= wd.dtype.type(a)
            model.flat_grads[...] += wd
            self.readout_.grads["W"][...] += W.dtype.type(a) * W
        return loss

    def _new_optimizer(self, kind=None):
        """A fresh optimiser of ``kind`` ("adam" or "sgd"; default: the ``optimizer``
        parameter's)."""
        if (self.optimizer if kind is None else kind) == "adam":
            return Adam(self._param_pairs(), lr=self.learning_rate)
        return SGD(self._param_pairs(), lr=self.learning_rate)

    def _snapshot(self):
        return self.model_.flat_params.copy(), self.readout_.flat_params.copy()

    def _restore(self, snap):
        self.model_.flat_params[...] = snap[0]
        self.readout_.flat_params[...] = snap[1]

    def _fit(self, X, y, lengths, incremental, classes=None):
        # Everything up to the first epoch checks the call and sets the fit up; when any
        # of it fails, the estimator is left as it was (a fitted model stays usable).
        with _unchanged_on_error(self):
            setup = self._fit_setup(X, y, lengths, incremental, classes)
        return self._fit_epochs(*setup, incremental)

    def _fit_setup(self, X, y, lengths, incremental, classes):
        fitted = hasattr(self, "model_")
        if incremental and fitted:
            # scikit-learn's _fit_context checks the constraint table on fit and on a first
            # partial_fit only; parameters set since (set_params) are checked here
            self._validate_params()
        self._check_params()
        first = not fitted or (not incremental and not self.warm_start)
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True (no data is "
                             "held out for validation): set early_stopping=False, or use fit")
        X, L = _validate_X(self, X, reset=first, lengths=lengths)
        n = X.shape[0]
        targets = self._encode_targets(y, n, first, classes)
        n_val = math.ceil(self.validation_fraction * n)   # train_test_split's rule
        if self.early_stopping and not incremental and n_val < 2:
            raise ValueError(
                f"The validation set is too small: validation_fraction="
                f"{self.validation_fraction} of {n} samples holds out {n_val}; increase "
                "validation_fraction or the size of the dataset")
        rng = check_random_state(self.random_state)
        if first:
            self._init_network(X.shape[2], self._n_readout(), rng)
            self.n_iter_ = 0
            self.t_ = 0
            self.loss_curve_ = []
            self._no_improvement_count = 0
            self._best_weights = None
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.validation_scores_ = None
                self.best_validation_score_ = None
                self.best_loss_ = np.inf
        else:
            self._check_warm_arch(X.shape[2])
        self._decay = self._decay_mask()
        wanted = Adam if self.optimizer == "adam" else SGD
        if not incremental or type(self._optimizer) is not wanted:
            self._optimizer = self._new_optimizer()
        self._optimizer.lr = float(self.learning_rate)

        early = self.early_stopping and not incremental
        idx = np.arange(n)
        if early:
            stratify = targets if self._stratify else None
            try:
                idx, val = train_test_split(idx, random_state=rng, stratify=stratify,
                                            test_size=self.validation_fraction)
            except ValueError as exc:
                raise ValueError(
                    f"early_stopping=True cannot hold out validation_fraction="
                    f"{self.validation_fraction} of these {n} samples"
                    + (" in proportion to every class" if stratify is not None else "")
                    + f": {exc}") from exc
            X_val, L_val, t_val = X[val], (None if L is None else L[val]), targets[val]
            if self.best_validation_score_ is None:           # warm start from no early stopping
                self.validation_scores_, self.best_validation_score_ = [], -np.inf
                self._best_weights = None
        else:
            X_val = L_val = t_val = None
        return X, L, targets, rng, idx, early, (X_val, L_val, t_val)

    def _fit_epochs(self, X, L, targets, rng, idx, early, validation, incremental):
        self._sync_threads()
        X_val, L_val, t_val = validation
        n_train = idx.shape[0]
        if self.batch_size != "auto" and not 1 <= self.batch_size <= n_train:
            warnings.warn(f"batch_size={self.batch_size} is larger than the {n_train} training "
                          "samples: it is clipped", UserWarning, stacklevel=_caller_stacklevel())
        bs = min(32 if self.batch_size == "auto" else self.batch_size, n_train)
        dtype = self.model_.dtype
        epochs = 1 if incremental else self.max_iter
        for _ in range(epochs):
            t0 = time.perf_counter()
            order = idx[rng.permutation(n_train)] if self.shuffle else idx
            total = 0.0
            for s in range(0, n_train, bs):
                rows = order[s:s + bs]
                Xb, Lb = _batch_input(X, rows, L, dtype)
                total += self._train_batch(Xb, Lb, targets[rows]) * rows.shape[0]
            self.n_iter_ += 1
            self.t_ += n_train
            loss = total / n_train
            self.loss_curve_.append(loss)
            if not np.isfinite(loss):
                # as scikit-learn's MLP: a diverged fit is an error, not NaN predictions
                raise ValueError(
                    f"{type(self).__name__}: the training diverged (loss = {loss} at epoch "
                    f"{self.n_iter_}): the weights are not usable. Lower "
                    "learning_rate, set clip_norm, or scale X (and y), then fit again.")
            msg = f"Epoch {self.n_iter_}, loss = {loss:.8f}"
            if early:
                score = self._score_encoded(self._infer(X_val, L_val), t_val)
                self.validation_scores_.append(score)
                msg += f", validation score = {score:.6f}"
                if score < self.best_validation_score_ + self.tol:
                    self._no_improvement_count += 1
                else:
                    self._no_improvement_count = 0
                if score > self.best_validation_score_:
                    self.best_validation_score_ = score
                    self._best_weights = self._snapshot()
            else:
                if self.best_loss_ is None:                   # warm start after early stopping
                    self.best_loss_ = np.inf
                if loss > self.best_loss_ - self.tol:
                    self._no_improvement_count += 1
                else:
                    self._no_improvement_count = 0
                self.best_loss_ = min(self.best_loss_, loss)
            if self.verbose:
                print(f"{msg}, time = {time.perf_counter() - t0:.3f} s", flush=True)
            if not incremental and self._no_improvement_count > self.n_iter_no_change:
                what = "validation score" if early else "training loss"
                if self.verbose:
                    print(f"{what} did not improve by more than tol={self.tol} for "
                          f"{self.n_iter_no_change} consecutive epochs; stopping.", flush=True)
                self._no_improvement_count = 0
                break
        else:
            if not incremental:
                warnings.warn(f"{type(self).__name__}: max_iter={self.max_iter} epochs reached "
                              "and the optimisation has not converged yet.",
                              ConvergenceWarning, stacklevel=_caller_stacklevel())
        if early and getattr(self, "_best_weights", None) is not None:
            # the best epoch's weights, also when a warm-started fit never beat the
            # best score of the fits before it (as MLPClassifier keeps _best_coefs)
            self._restore(self._best_weights)
        return self

    def _check_warm_arch(self, n_features):
        arch = (n_features, _check_hidden_sizes(self.hidden_sizes), bool(self.bidirectional),
                _check_dtype(self.dtype).name)
        if arch != self._arch or self.pooling != self._fit_pooling:
            raise ValueError(
                "warm_start / partial_fit continue the fitted network, whose hidden_sizes, "
                "bidirectional, pooling and dtype cannot change: fitted with "
                f"hidden_sizes={self._arch[1]}, bidirectional={self._arch[2]}, "
                f"pooling={self._fit_pooling!r}, dtype={self._arch[3]!r}")

    def _sync_threads(self):
        """The network's layers run on ``n_threads`` (set after every check of a fit: a
        refused refit leaves them as they were)."""
        if self.n_threads != self._model_threads:
            _set_threads(self.model_, self.n_threads)
            self._model_threads = self.n_threads

    # -- pickling: keep the network as flat arrays, rebuild the views on loading ---------

    def __getstate__(self):
        state = super().__getstate__()
        if "model_" in state:
            state = dict(state)
            state["model_"] = ("fastlstm.MultiLSTM", self.model_.flat_params.copy())
            if self.readout_ is not None:
                state["readout_"] = ("fastlstm.Dense", self.readout_.flat_params.copy())
            opt = state.pop("_optimizer", None)
            state["_optimizer"] = None if opt is None else opt.state_dict()
            state.pop("_decay", None)
        return state

    def __setstate__(self, state):
        model = state.get("model_")
        readout = state.get("readout_")
        opt = state.get("_optimizer")
        super().__setstate__(state)
        if isinstance(model, tuple):
            n_features, sizes, bidirectional, dtype = self._arch
            self.model_ = _build_stack(n_features, sizes, bidirectional, np.dtype(dtype),
                                       self._model_threads, _UNSET)   # filled just below
            self.model_.flat_params[...] = model[1]
            if readout is not None:
                D = self.model_.output_size
                self.readout_ = Dense(D, readout[1].size // (D + 1), dtype=np.dtype(dtype))
                self.readout_.flat_params[...] = readout[1]
            self._optimizer = None
            if opt is not None:
                # the optimiser that was in use, which need not be the one the
                # ``optimizer`` parameter names now (set_params after fitting)
                kind = "adam" if opt.get("optimizer") == "Adam" else "sgd"
                self._optimizer = self._new_optimizer(kind)
                self._optimizer.load_state_dict(opt)


# ---------------------------------------------------------------------------------------
# objectives: target encoding, loss and its gradient, validation score


class _RegressionObjective:
    """Mean squared error on targets standardised per output (``loss_curve_`` is in
    those units)."""

    _stratify = False

    def _n_readout(self):
        return self.n_outputs_

    def _encode_targets(self, y, n, first, classes=None):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the "
                             "target y is None")
        y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
        if y.ndim not in (1, 2):
            raise ValueError(f"y must be 1-D (n_samples,) or 2-D (n_samples, n_outputs), got "
                             f"shape {y.shape}")
        if y.shape[0] != n:
            raise ValueError(f"Found input variables with inconsistent numbers of samples: "
                             f"X has {n} samples, y has {y.shape[0]}")
        Y = y.reshape(n, -1)
        if first:
            self._y_ndim = y.ndim
            self.n_outputs_ = Y.shape[1]
            with np.errstate(over="ignore", invalid="ignore"):
                self._y_mean = Y.mean(axis=0)
                scale = Y.std(axis=0)
            if not (np.isfinite(self._y_mean).all() and np.isfinite(scale).all()) or (
                    (scale < 1e-150) & (Y.max(axis=0) != Y.min(axis=0))).any():
                # targets near float64's limits: the sums of squares overflow, or underflow
                # (a spread below ~1e-154 has a subnormal or zero variance); scaled first
                top = np.abs(Y).max(axis=0)
                top[top == 0] = 1.0
                self._y_mean = (Y / top).mean(axis=0) * top
                scale = (Y / top).std(axis=0) * top
            # a constant target (its spread within the rounding of its mean, scikit-learn's
            # rule for StandardScaler) is not scaled; any other spread is, however small
            # (a floor of 1e-12 left targets of spread 1e-13 unscaled: R2 of -4.5e22)
            eps = np.finfo(np.float64).eps
            scale[scale <= n * eps * np.abs(self._y_mean)] = 1.0
            self._y_scale = scale
        elif Y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {Y.shape[1]} outputs, but {type(self).__name__} was "
                             f"fitted with {self.n_outputs_}")
        return (Y - self._y_mean) / self._y_scale

    @staticmethod
    def _loss_grad(Z, t):
        return mse_loss(Z, t)

    @staticmethod
    def _score_encoded(Z, t):
        return r2_score(t, Z.astype(np.float64))

    def _decode(self, Z):
        pred = Z.astype(np.float64) * self._y_scale + self._y_mean
        return pred.ravel() if self._y_ndim == 1 else pred


class _ClassificationObjective:
    """Softmax cross-entropy over ``classes_`` (two outputs for a binary problem too)."""

    _stratify = True

    def _n_readout(self):
        return len(self.classes_)

    def _encode_targets(self, y, n, first, classes=None):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the "
                             "target y is None")
        y = column_or_1d(y, warn=True)
        if y.shape[0] != n:
            raise ValueError(f"Found input variables with inconsistent numbers of samples: "
                             f"X has {n} samples, y has {y.shape[0]}")
        # a missing label (NaN, also among strings: np.unique could not sort it) is an error
        # of its own, as in scikit-learn's classifiers
        assert_all_finite(y, input_name="y", estimator_name=type(self).__name__)
        check_classification_targets(y)
        if first:
            labels = np.unique(y if classes is None else np.asarray(classes))
            if labels.shape[0] < 2:
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes "
                                 f"in the data, but the data contains only one class: "
                                 f"{labels.tolist()[0]!r}")
            self.classes_ = labels
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes={classes!r} is not the same as on the first call to "
                             f"partial_fit: {self.classes_!r}")
        unseen = np.setdiff1d(y, self.classes_)
        if unseen.size:
            raise ValueError(f"y contains labels {unseen!r} not in classes_ {self.classes_!r} "
                             "(warm_start and partial_fit keep the classes of the first fit)")
        return np.searchsorted(self.classes_, y)

    @staticmethod
    def _loss_grad(Z, t):
        return softmax_cross_entropy(Z, t)

    @staticmethod
    def _score_encoded(Z, t):
        return accuracy_score(t, np.argmax(Z, axis=1))

    @staticmethod
    def _log_proba(Z):
        return _log_softmax64(Z)


# ---------------------------------------------------------------------------------------
# public estimators

_SHARED_DOC = """
    Parameters
    ----------
    hidden_sizes : int or sequence of int, default=(32,)
        Units of each LSTM layer, bottom first.
    bidirectional : bool, default=False
        Make every layer bidirectional (forward and reverse halves, outputs concatenated).
    pooling : {"last", "mean"}, default="last"
        Sequence -> features: the top layer's output at each sample's last valid step
        (both halves' final states when bidirectional), or its mean over the valid steps.
    max_iter : int, default=100
        Maximum number of epochs (passes over the training data).
    batch_size : int or "auto", default="auto"
        Samples per mini-batch; "auto" is min(32, n_samples).
    learning_rate : float, default=1e-3
        Step size of the optimiser.
    optimizer : {"adam", "sgd"}, default="adam"
    alpha : float, default=1e-4
        L2 penalty on the kernels (not the biases), scaled like MLPRegressor's.
    clip_norm : float or None, default=5.0
        Clip the global norm of each mini-batch gradient to this value (None: off).
    shuffle : bool, default=True
        Shuffle the samples every epoch.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data (stratified for
        classification), stop when its score (R² or accuracy) has not improved by ``tol``
        for ``n_iter_no_change`` epochs, and keep the best epoch's weights.  ``fit`` only:
        ``partial_fit`` refuses it, as scikit-learn's MLPs do.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=10
    tol : float, default=1e-4
        Without early stopping, training stops when the training loss has not improved by
        ``tol`` for ``n_iter_no_change`` consecutive epochs.
    random_state : int, RandomState instance or None, default=None
        Seeds the weights, the shuffling and the validation split.  A fixed seed and a
        fixed ``n_threads`` give identical results.
    warm_start : bool, default=False
        ``fit`` continues from the current weights (a new optimiser state).
    verbose : bool or int, default=False
        Print one line per epoch: loss, validation score, time.
    dtype : {"float32", "float64"}, default="float32"
        Precision of the network.
    n_threads : int or None, default=None
        OpenMP threads of the LSTM kernels; None uses fastlstm's process default.
"""


class LSTMRegressor(RegressorMixin, _RegressionObjective, _BaseLSTM):
    __doc__ = """Sequence regression: an LSTM stack, pooled, with a linear readout, trained on
    squared error.

    ``X``: (n_samples, n_timesteps, n_features), or (n_samples, n_timesteps) univariate
    sequences; variable lengths via ``lengths=`` or trailing all-NaN steps.  ``y``:
    (n_samples,) or (n_samples, n_outputs); targets are standardised internally (mean 0,
    variance 1 per output), and ``loss_curve_`` is the mean squared error in those units.
    """ + _SHARED_DOC + """
    Attributes
    ----------
    model_ : fastlstm.MultiLSTM
        The trained LSTM stack.
    readout_ : fastlstm.Dense
        The linear readout (pooled features -> standardised targets).
    n_features_in_ : int
        Features per time step (1 for 2-D X).
    feature_names_in_ : ndarray of str
        The column names of a 2-D DataFrame X (one per time step), when it had string
        names; later DataFrames must keep the names of the columns they share with it.
    n_outputs_ : int
    loss_curve_ : list of float
        Training loss after each epoch (with the L2 term).
    n_iter_ : int
        Epochs run in all, over warm-started fits and ``partial_fit`` calls, as
        ``loss_curve_`` and ``t_`` count (scikit-learn's MLPs count the last call's only).
    t_ : int
        Training samples seen.
    best_loss_ : float or None
        Lowest training loss (None with early stopping).
    validation_scores_, best_validation_score_ : list of float, float or None
        R² on the held-out data with early stopping (None otherwise).
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, *, lengths=None):
        """Train on X (n_samples, n_timesteps[, n_features]) and y (n_samples[, n_outputs])."""
        return self._fit(X, y, lengths, incremental=False)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, *, lengths=None):
        """One epoch over (X, y), continuing from the current state (Adam's too)."""
        return self._fit(X, y, lengths, incremental=True)

    def predict(self, X, *, lengths=None):
        """Predicted targets: (n_samples,) or (n_samples, n_outputs), float64."""
        check_is_fitted(self)
        X, L = _validate_X(self, X, reset=False, lengths=lengths)
        return self._decode(self._infer(X, L))

    def _predict_chunk(self, X, n_threads, method, lengths=None):
        """``method`` on a chunk with ``n_threads`` threads (fastlstm.dask's entry)."""
        check_is_fitted(self)
        X, L = _validate_X(self, X, reset=False, lengths=lengths, check_names=False)
        return self._decode(self._infer(X, L, n_threads))

    def score(self, X, y, sample_weight=None, *, lengths=None):
        """R² of ``predict(X, lengths=lengths)`` (RegressorMixin.score)."""
        return r2_score(y, self.predict(X, lengths=lengths), sample_weight=sample_weight)


class LSTMClassifier(ClassifierMixin, _ClassificationObjective, _BaseLSTM):
    __doc__ = """Sequence classification (binary and multiclass): an LSTM stack, pooled, with a
    softmax readout, trained on cross-entropy.

    ``X`` as for ``LSTMRegressor``; ``y``: (n_samples,) labels of any type.
    """ + _SHARED_DOC + """
    Attributes
    ----------
    classes_ : ndarray (n_classes,)
    model_, readout_, n_features_in_, feature_names_in_, loss_curve_, n_iter_, t_,
    best_loss_, validation_scores_, best_validation_score_ :
        As for ``LSTMRegressor`` (loss: mean cross-entropy; score: accuracy).
    """

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, *, lengths=None):
        """Train on X (n_samples, n_timesteps[, n_features]) and labels y (n_samples,)."""
        return self._fit(X, y, lengths, incremental=False)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None, *, lengths=None):
        """One epoch over (X, y); ``classes`` (all labels) is required on the first call."""
        if not hasattr(self, "classes_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        return self._fit(X, y, lengths, incremental=True, classes=classes)

    def predict_proba(self, X, *, lengths=None):
        """Class probabilities (n_samples, n_classes), columns in ``classes_`` order."""
        return np.exp(self.predict_log_proba(X, lengths=lengths))

    def predict_log_proba(self, X, *, lengths=None):
        """Log of ``predict_proba`` (computed stably)."""
        check_is_fitted(self)
        X, L = _validate_X(self, X, reset=False, lengths=lengths)
        return self._log_proba(self._infer(X, L))

    def predict(self, X, *, lengths=None):
        """Most probable class per sample (n_samples,)."""
        check_is_fitted(self)
        X, L = _validate_X(self, X, reset=False, lengths=lengths)
        return self.classes_[np.argmax(self._infer(X, L), axis=1)]

    def _predict_chunk(self, X, n_threads, method, lengths=None):
        """``method`` on a chunk with ``n_threads`` threads (fastlstm.dask's entry)."""
        check_is_fitted(self)
        X, L = _validate_X(self, X, reset=False, lengths=lengths, check_names=False)
        Z = self._infer(X, L, n_threads)
        if method == "predict":
            return self.classes_[np.argmax(Z, axis=1)]
        logp = self._log_proba(Z)
        return logp if method == "predict_log_proba" else np.exp(logp)

    def score(self, X, y, sample_weight=None, *, lengths=None):
        """Accuracy of ``predict(X, lengths=lengths)`` (ClassifierMixin.score)."""
        return accuracy_score(y, self.predict(X, lengths=lengths), sample_weight=sample_weight)


class LSTMEncoder(TransformerMixin, _BaseLSTM):
    __doc__ = """Sequences -> fixed-width features for any downstream estimator.

    ``transform`` returns the pooled output of an LSTM stack (n_samples, n_features_out):
    the last valid step (``pooling="last"``) or the mean over the valid steps.

    objective : {"reservoir", "regression", "classification"}, default="reservoir"
        "reservoir": the weights stay at their random initialisation (seeded by
        ``random_state``): ``fit`` only records the input width, y is ignored, and the
        encoder is a fast fixed featuriser ("echo state" style).  "regression" /
        "classification": ``fit(X, y)`` trains the stack with a readout on y (as
        ``LSTMRegressor`` / ``LSTMClassifier`` do) and keeps the trained stack; the
        readout is kept as ``readout_`` (a ``fastlstm.Dense``) but not used by
        ``transform``.
    """ + _SHARED_DOC + """
    Attributes
    ----------
    model_ : fastlstm.MultiLSTM
    n_features_in_ : int
        Features per time step (1 for 2-D X).
    feature_names_in_ : ndarray of str
        As for ``LSTMRegressor``.
    loss_curve_, n_iter_, t_, best_loss_, validation_scores_, best_validation_score_ :
        As for ``LSTMRegressor``; a reservoir is not trained (``n_iter_ == 0``).
    """

    _parameter_constraints = {
        **_BaseLSTM._parameter_constraints,
        "objective": [StrOptions({"reservoir", "regression", "classification"})],
    }

    def __init__(self, hidden_sizes=(32,), *, objective="reservoir", bidirectional=False,
                 pooling="last", max_iter=100, batch_size="auto", learning_rate=1e-3,
                 optimizer="adam", alpha=1e-4, clip_norm=5.0, shuffle=True,
                 early_stopping=False, validation_fraction=0.1, n_iter_no_change=10,
                 tol=1e-4, random_state=None, warm_start=False, verbose=False,
                 dtype="float32", n_threads=None):
        super().__init__(
            hidden_sizes, bidirectional=bidirectional, pooling=pooling, max_iter=max_iter,
            batch_size=batch_size, learning_rate=learning_rate, optimizer=optimizer,
            alpha=alpha, clip_norm=clip_norm, shuffle=shuffle, early_stopping=early_stopping,
            validation_fraction=validation_fraction, n_iter_no_change=n_iter_no_change,
            tol=tol, random_state=random_state, warm_start=warm_start, verbose=verbose,
            dtype=dtype, n_threads=n_threads)
        self.objective = objective

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = self.objective != "reservoir"
        try:
            dtype = self.model_.dtype if hasattr(self, "model_") else _check_dtype(self.dtype)
            tags.transformer_tags.preserves_dtype = [dtype.name]
        except ValueError:
            pass
        return tags

    # the objective is chosen by a parameter: dispatch to the two objective classes
    def _objective(self):
        if self._fit_objective == "regression":
            return _RegressionObjective
        return _ClassificationObjective

    @property
    def _stratify(self):
        return self._objective()._stratify

    def _n_readout(self):
        return self._objective()._n_readout(self)

    def _encode_targets(self, y, n, first, classes=None):
        if first:
            _forget_targets(self)
            self._fit_objective = self.objective
        elif self.objective != self._fit_objective:
            raise ValueError(f"objective={self.objective!r} differs from the fitted "
                             f"objective {self._fit_objective!r}; refit without warm_start")
        return self._objective()._encode_targets(self, y, n, first, classes)

    def _loss_grad(self, Z, t):
        return self._objective()._loss_grad(Z, t)

    def _score_encoded(self, Z, t):
        return self._objective()._score_encoded(Z, t)

    def _fit_reservoir(self, X, lengths, incremental):
        with _unchanged_on_error(self):
            return self._fit_reservoir_checked(X, lengths, incremental)

    def _fit_reservoir_checked(self, X, lengths, incremental):
        self._check_params()
        if (incremental or self.warm_start) and hasattr(self, "model_"):   # keep the weights
            X, _ = _validate_X(self, X, reset=False, lengths=lengths)
            self._check_warm_arch(X.shape[2])
            self._sync_threads()
            return self
        X, _ = _validate_X(self, X, reset=True, lengths=lengths)
        _forget_targets(self)
        self._fit_objective = "reservoir"
        self._init_network(X.shape[2], None, check_random_state(self.random_state))
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_curve_ = []
        self.best_loss_ = None
        self.validation_scores_ = None
        self.best_validation_score_ = None
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, lengths=None):
        """Build the encoder (reservoir) or train it on y (regression/classification)."""
        if self.objective == "reservoir":
            return self._fit_reservoir(X, lengths, incremental=False)
        if hasattr(self, "model_") and self.warm_start and self._fit_objective == "reservoir":
            raise ValueError("warm_start cannot turn a reservoir encoder into a trained one; "
                             "set warm_start=False")
        return self._fit(X, y, lengths, incremental=False)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None, classes=None, *, lengths=None):
        """One training epoch (trained objectives); a reservoir is built on the first call."""
        if self.objective == "reservoir":
            return self._fit_reservoir(X, lengths, incremental=True)
        if self.objective == "classification" and not hasattr(self, "classes_") \
                and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        return self._fit(X, y, lengths, incremental=True, classes=classes)

    def transform(self, X, *, lengths=None):
        """Pooled LSTM features (n_samples, n_features_out), in the network's dtype."""
        check_is_fitted(self)
        X, L = _validate_X(self, X, reset=False, lengths=lengths)
        return self._infer(X, L, readout=False)

    def fit_transform(self, X, y=None, *, lengths=None):
        return self.fit(X, y, lengths=lengths).transform(X, lengths=lengths)

    def _predict_chunk(self, X, n_threads, method, lengths=None):
        """``method`` on a chunk with ``n_threads`` threads (fastlstm.dask's entry)."""
        check_is_fitted(self)
        X, L = _validate_X(self, X, reset=False, lengths=lengths, check_names=False)
        return self._infer(X, L, n_threads, readout=False)

    @property
    def _n_features_out(self):
        return self.model_.output_size

    def get_feature_names_out(self, input_features=None):
        """Output feature names: ``"lstmencoder0"``, ``"lstmencoder1"``, ...

        input_features : None, or the names of the columns of the X seen in ``fit``, as a
            previous step of a Pipeline or a ColumnTransformer passes them: one per time
            step for 2-D X (so not ``n_features_in_`` of them), one per feature for 3-D X.
            Only their number is checked; the outputs do not correspond to input columns.
        """
        check_is_fitted(self)
        if input_features is not None:
            n = getattr(self, "_n_columns_in", self.n_features_in_)
            names = np.asarray(input_features, dtype=object)
            if names.ndim != 1 or names.shape[0] != n:
                raise ValueError(
                    f"input_features should have length equal to the number of columns of "
                    f"the X seen in fit ({n}: time steps of 2-D X, features of 3-D X), got "
                    f"{names.shape[0] if names.ndim == 1 else names.shape}")
        prefix = type(self).__name__.lower()
        return np.asarray([f"{prefix}{i}" for i in range(self._n_features_out)], dtype=object)
