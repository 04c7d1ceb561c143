"""A dense readout and the losses that make an LSTM trainable end to end.

- ``Dense(in_features, out_features)``: ``out = H @ W + b`` on the last axis of any
  array (a final state ``(N, F)`` or every step ``(N, T, F)``), with ``forward`` /
  ``backward`` / ``params`` / ``grads`` / ``flat_params`` / ``flat_grads`` like the LSTM
  models, so the optimisers in ``fastlstm.optim`` take it too.
- ``last_output`` / ``last_output_backward``: each row's output at its last valid step.
- ``sequence_mask``: which steps are valid, for losses over every step.
- ``mse_loss`` and ``softmax_cross_entropy`` return ``(loss, dpred)``: the mean loss
  over the valid samples and its gradient w.r.t. the predictions / logits.

Gradients, like the LSTM's, are overwritten by each ``backward`` call.
"""

import numpy as np

from . import init as _init
from . import layers as _layers

__all__ = ["Dense", "last_output", "last_output_backward", "sequence_mask", "mse_loss",
           "softmax", "softmax_cross_entropy"]


class Dense(_layers._Module):
    """Linear layer ``out = H @ W + b`` on the last axis.

    Parameters: ``W`` (in_features, out_features), Glorot-uniform; ``b`` (out_features,),
    zero.  dtype float32 (default) or float64; random_state as for ``LSTM``.
    """

    def __init__(self, in_features, out_features, *, dtype=np.float32, random_state=None):
        self._in_features = _layers._check_size(in_features, "in_features")
        self._out_features = _layers._check_size(out_features, "out_features")
        self._dtype = _layers._check_dtype(dtype)
        self._params = self._bind(np.empty(self.n_params, self._dtype))
        self._gflat = np.zeros(self.n_params, self._dtype)
        self.reset_parameters(random_state)

    in_features = _layers._fixed("in_features", "the parameter arrays have its shape")
    out_features = _layers._fixed("out_features", "the parameter arrays have its shape")
    _PROPERTIES = ("in_features", "out_features")
    _STATE = _layers._Module._STATE + ("_in_features", "_out_features")

    def _param_shapes(self):
        return [("W", (self.in_features, self.out_features)), ("b", (self.out_features,))]

    def reset_parameters(self, random_state=None):
        rng = _init.check_random_state(random_state)
        self._params["W"][...] = _init.glorot_uniform((self.in_features, self.out_features),
                                                      rng, self._dtype)
        self._params["b"][...] = 0
        return self

    @property
    def params(self):
        return dict(self._params)

    @property
    def W(self):
        return self._params["W"]

    @W.setter
    def W(self, value):
        self._set("W", value)

    @property
    def b(self):
        return self._params["b"]

    @b.setter
    def b(self, value):
        self._set("b", value)

    def _set(self, name, value):
        target = self._params[name]
        value = _layers._numeric_array(value, name)
        if value.shape != target.shape:
            raise ValueError(f"{name} must have shape {target.shape}, got {value.shape}")
        _layers._check_fits(value, target.dtype, name)
        target[...] = value

    def __repr__(self):
        dt = "" if self._dtype == np.float32 else f", dtype={self._dtype.name}"
        return f"Dense({self.in_features}, {self.out_features}{dt})"

    def _as_features(self, H, name):
        H = _layers._numeric_array(H, name)
        if H.ndim < 1 or H.shape[-1] != self.in_features:
            raise ValueError(f"{name} must have {self.in_features} features on its last "
                             f"axis, got shape {H.shape}")
        _layers._check_fits(H, self._dtype, name)
        return np.ascontiguousarray(H, dtype=self._dtype)

    def __call__(self, H):
        """H (..., in_features) -> (..., out_features)."""
        H = self._as_features(H, "H")
        return H @ self._params["W"] + self._params["b"]

    def forward(self, H):
        """Training forward: returns ``out`` and a cache for ``backward``.

        The cache is ``H`` itself when it is already a C-contiguous array of the layer's
        dtype (no copy): do not modify it before ``backward``."""
        H = self._as_features(H, "H")
        return H @ self._params["W"] + self._params["b"], H

    def backward(self, dout, cache):
        """dout (..., out_features) -> dH (..., in_features); overwrites ``grads``.

        dH is taken with the current ``W``: call it before changing the parameters (an
        optimiser step), as for the LSTM layers."""
        H = cache
        if not (isinstance(H, np.ndarray) and H.dtype == self._dtype and H.ndim >= 1
                and H.shape[-1] == self.in_features and H.flags.c_contiguous):
            raise TypeError("cache must be the cache returned by this Dense's forward() (its "
                            f"input, (..., {self.in_features}) {self._dtype.name}), got "
                            + (f"{H.dtype} {H.shape}" if isinstance(H, np.ndarray)
                               else type(H).__name__))
        dout = _layers._numeric_array(dout, "dout")
        if dout.shape != H.shape[:-1] + (self.out_features,):
            raise ValueError(f"dout must have shape {H.shape[:-1] + (self.out_features,)}, "
                             f"got {dout.shape}")
        _layers._check_fits(dout, self._dtype, "dout")
        dout = np.ascontiguousarray(dout, dtype=self._dtype)
        d2 = dout.reshape(-1, self.out_features)
        g = self._views(self._gflat)
        np.matmul(H.reshape(-1, self.in_features).T, d2, out=g["W"])
        np.sum(d2, axis=0, out=g["b"])
        return dout @ self._params["W"].T


# ---------------------------------------------------------------------------------------
# picking outputs


def _lengths(lengths, N, T):
    if lengths is None:
        return None
    _layers._refuse_masked(lengths, "lengths", "give every row's length")
    L = np.asarray(lengths)
    if L.shape == (0,) and L.dtype.kind == "f":   # an empty list, for an empty batch
        L = L.astype(np.int64)
    if L.dtype.kind not in "iu" or L.shape != (N,):
        raise ValueError(f"lengths must be ({N},) integers, got {L.dtype} {L.shape}")
    if N and (L.min() < 0 or L.max() > T):
        raise ValueError(f"lengths must be in [0, T={T}]")
    return L.astype(np.int64)


def sequence_mask(lengths, T, time_major=False):
    """Boolean mask of valid steps, (N, T) (or (T, N) with ``time_major``)."""
    T = _layers._scalar(T)
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 0:
        raise ValueError(f"T must be a non-negative int (the number of steps), got {T!r}")
    L = lengths if isinstance(lengths, np.ma.MaskedArray) else np.asarray(lengths)
    if L.ndim != 1:
        raise ValueError(f"lengths must be 1-D (one per batch row), got shape {L.shape}")
    L = _lengths(L, L.shape[0], T)
    mask = np.arange(T)[None, :] < L[:, None]
    return mask.T if time_major else mask


def last_output(Y, lengths=None, time_major=False):
    """Each row's output at its last valid step, (N, F); zeros for rows of length 0.

    For a forward LSTM this equals the final ``h``.  (For a Bidirectional, read the
    final states instead: the reverse half's last step is t = 0.)
    """
    Y = _layers._numeric_array(Y, "Y")
    if Y.ndim != 3:
        raise ValueError(f"Y must be 3-D, got shape {Y.shape}")
    Yb = Y.swapaxes(0, 1) if time_major else Y
    N, T = Yb.shape[:2]
    L = _lengths(lengths, N, T)
    if T == 0:        # every row has length 0
        return np.zeros((N, Y.shape[2]), Y.dtype)
    if L is None:
        return Yb[:, T - 1].copy()
    out = Yb[np.arange(N), np.maximum(L - 1, 0)].copy()
    out[L == 0] = 0
    return out


def last_output_backward(dlast, Y_shape, lengths=None, time_major=False):
    """Gradient w.r.t. ``Y`` of ``last_output``: ``dlast`` (N, F) scattered into zeros."""
    try:
        Y_shape = tuple(int(d) for d in Y_shape)
    except (TypeError, ValueError):
        raise TypeError(f"Y_shape must be the shape of Y, got {Y_shape!r}") from None
    if len(Y_shape) != 3 or min(Y_shape) < 0:
        raise ValueError(f"Y_shape must be a 3-D shape, got {Y_shape}")
    N, F = (Y_shape[1] if time_major else Y_shape[0]), Y_shape[2]
    dlast = _layers._numeric_array(dlast, "dlast")
    if dlast.shape != (N, F):
        raise ValueError(f"dlast must have shape ({N}, {F}) (the last_output of Y "
                         f"{Y_shape}), got {dlast.shape}")
    dY = np.zeros(Y_shape, dlast.dtype if dlast.dtype.kind == "f" else np.float64)
    dYb = dY.swapaxes(0, 1) if time_major else dY
    N, T = dYb.shape[:2]
    L = _lengths(lengths, N, T)
    if T == 0:
        return dY
    if L is None:
        dYb[:, T - 1] = dlast
    else:
        rows = np.nonzero(L > 0)[0]
        dYb[rows, L[rows] - 1] = dlast[rows]
    return dY


# ---------------------------------------------------------------------------------------
# losses: (mean loss over valid samples, gradient w.r.t. the prediction)


def _prediction(value, name):
    """pred / logits as a float array (integers become float64) of at least 1 dimension."""
    value = _layers._numeric_array(value, name)
    if value.ndim == 0:
        raise ValueError(f"{name} must be an array (..., F) with the features last, got a "
                         "scalar")
    return value if value.dtype.kind == "f" else value.astype(np.float64)


def _weights(mask, lead_shape):
    if mask is None:
        return None
    w = np.asarray(mask)
    if w.size == 0 and w.dtype.kind == "f":     # an empty list, for an empty batch
        w = w.astype(bool)
    if w.dtype.kind not in "biu" or (w.dtype.kind != "b" and w.size and
                                     not np.isin(w, (0, 1)).all()):
        # a float or other-valued array would be read as "nonzero": refused, not guessed
        raise TypeError(f"mask must be boolean (or 0 / 1 integers), got dtype {w.dtype}"
                        + ("" if w.dtype.kind not in "iu" else " with other values"))
    if w.shape != lead_shape:
        raise ValueError(f"mask must have shape {lead_shape}, got {w.shape}")
    return w.astype(bool)


def mse_loss(pred, target, mask=None):
    """Mean squared error over every valid element.

    pred, target: same shape (..., F); mask: boolean over the leading axes (...), e.g.
    ``sequence_mask`` for per-step outputs, or None.  Returns ``(loss, dpred)``.
    """
    pred = _prediction(pred, "pred")
    target = _layers._numeric_array(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must have one shape")
    if target.dtype.itemsize > pred.dtype.itemsize:     # a narrowing cast can overflow
        with np.errstate(over="ignore"):
            cast = target.astype(pred.dtype)
        if not np.isfinite(cast).all() and not np.array_equal(np.isfinite(cast),
                                                               np.isfinite(target)):
            raise ValueError(f"target holds values beyond the range of pred's dtype "
                             f"{pred.dtype} (they would become infinite)")
        target = cast
    else:
        target = target.astype(pred.dtype, copy=False)
    diff = pred - target
    w = _weights(mask, pred.shape[:-1])
    if w is not None:
        diff = np.where(w[..., None], diff, 0)
        count = int(w.sum()) * pred.shape[-1]
    else:
        count = diff.size
    if count == 0:
        return 0.0, np.zeros_like(diff)
    # the squares summed in float64: float32 squares overflow from |diff| ~ 1.8e19 and
    # turn subnormal below ~1e-19, where the mean itself is a normal float64
    loss = float(np.sum(np.square(diff, dtype=np.float64))) / count
    return loss, (2.0 / count) * diff


def softmax(logits):
    """Softmax over the last axis (stable)."""
    z = np.asarray(logits)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _log_softmax64(logits):
    """log softmax over the last axis in float64: z - max - log1p(sum of the other
    exp(z - max)), the largest term left out of the sum (log(1 + s) cancels for small s:
    a confident prediction's loss came out as 0)."""
    z = np.asarray(logits, np.float64)
    top = np.argmax(z, axis=-1)[..., None]
    z = z - np.take_along_axis(z, top, axis=-1)
    e = np.exp(z)
    np.put_along_axis(e, top, 0.0, axis=-1)
    return z - np.log1p(e.sum(axis=-1, keepdims=True))


def softmax_cross_entropy(logits, labels, mask=None):
    """Mean cross-entropy of ``softmax(logits)`` against integer class labels.

    logits: (..., C); labels: (...) integers in [0, C); mask: boolean (...) or None.
    Returns ``(loss, dlogits)``, ``dlogits = (softmax - onehot) / n_valid``.
    """
    logits = _prediction(logits, "logits")
    labels = np.asarray(labels)
    if labels.size == 0 and labels.dtype.kind == "f":   # an empty list, for an empty batch
        labels = labels.astype(np.int64)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels must have shape {logits.shape[:-1]}, got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    C = logits.shape[-1]
    w = _weights(mask, labels.shape)
    valid = np.ones(labels.shape, bool) if w is None else w
    if labels[valid].size and (labels[valid].min() < 0 or labels[valid].max() >= C):
        raise ValueError(f"labels must be in [0, {C})")
    n = int(valid.sum())
    if n == 0:
        return 0.0, np.zeros_like(logits)
    logp = _log_softmax64(logits)              # float64: float32 logits' differences fit
    safe = np.where(valid, labels, 0)
    picked = np.take_along_axis(logp, safe[..., None], axis=-1)
    loss = float(-np.sum(np.where(valid, picked[..., 0], 0))) / n
    d = np.exp(logp)
    # p - 1 at the label as expm1(log p): exact where p is within rounding of 1
    np.put_along_axis(d, safe[..., None], np.expm1(picked), axis=-1)
    d = np.where(valid[..., None], d, 0) / n
    return loss, d.astype(logits.dtype, copy=False)
