"""Training passes behind ``LSTM``/``Bidirectional``/``MultiLSTM.forward`` and ``.backward``.

``forward`` is the inference kernel run with a training cache (post-activation gates, raw
cell states, and with a projection the pre-projection output and the raw projection);
this module adds what the backward pass needs besides: the initial state, and each row's
layer input (padded rows zeroed) beside the ``h`` its step read (``[X | Hprev]``).

``backward`` runs ``_backward.recurrence`` (the reverse time loop, which overwrites the
gate cache with the gate gradients -- so a cache serves exactly one backward pass) and
then ``_backward.param_grads`` (one gemm each for dX, [dW; dU], db, dP).  Gradients are
written over the model's gradient buffer (``flat_grads``), never accumulated.

Maths: SPEC.md Part A.  Validation lives here and in ``layers.py``; kernels trust it.
"""

import numpy as np

from . import _backward, _forward, _threads
from . import layers as _layers

__all__ = ["TrainingCache"]

# The products after the time loop are split into row ranges of at least this many
# multiply-adds each (at most one range per usable core; never depends on n_threads).
_MIN_FLOPS_PER_PART = 2_000_000


class TrainingCache:
    """What a training ``forward`` keeps for one ``backward`` call (treat it as opaque).

    It holds its own copy of the forward's input rows beside the ``h`` each step read, and
    one buffer per gate and cell value: ``N*T*(I + 5H + Hout)`` numbers per layer and
    direction (more with a projection).  ``backward`` overwrites its gate buffer with
    gradients, so a cache can be used for one backward pass only; run ``forward`` again
    for another.
    """

    __slots__ = ("model", "N", "T", "time_major", "lengths", "y_shape", "parts", "used")

    def __init__(self, model, N, T, time_major, lengths, y_shape, parts):
        self.model = model
        self.N = N
        self.T = T
        self.time_major = time_major
        self.lengths = lengths
        self.y_shape = y_shape
        self.parts = parts
        self.used = False

    def __repr__(self):
        state = "used" if self.used else "ready"
        return (f"TrainingCache({type(self.model).__name__}, N={self.N}, T={self.T}, "
                f"time_major={self.time_major}, {state})")


# ---------------------------------------------------------------------------------------
# helpers on validated arrays


def _masked_input(X, L, time_major):
    """X as (N*T, I) rows with the padded rows (t >= L[n]) set to 0 (a copy when needed)."""
    T, N = (X.shape[0], X.shape[1]) if time_major else (X.shape[1], X.shape[0])
    X2 = X.reshape(N * T, X.shape[2])
    if L is None:
        return X2
    pad = np.arange(T)[None, :] >= L[:, None]          # (N, T)
    if not pad.any():
        return X2
    Xm = X.copy()
    Xm[pad.T if time_major else pad] = 0
    return Xm.reshape(N * T, X.shape[2])


def _aligned(shape, dtype, zero=False, align=64):
    """A new array whose data starts on an ``align``-byte boundary: a cache line, so that
    the packed kernel can write the gate and cell caches in whole lines (non-temporal
    stores; fl_packed.h)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = (np.zeros if zero else np.empty)(n + align, np.uint8)
    skip = -raw.ctypes.data % align
    return raw[skip:skip + n].view(dtype).reshape(shape)


def _buffer(layer, key, shape, dtype, zero=False):
    """A training buffer for ``layer``: the one its last finished backward gave back under
    ``key`` when it fits, else a new one.  Reused buffers spare a training step the page
    faults of fresh memory (measured: 8 % of a step at the medium benchmark shape)."""
    pool = getattr(layer, "_train_buffers", None)    # (not __dict__: see layers._STATE)
    arr = pool.pop(key, None) if pool else None
    if arr is None or arr.shape != shape or arr.dtype != dtype:
        return _aligned(shape, dtype, zero)
    if zero:
        arr.fill(0)
    return arr


def _give_back(layer, part, keys=("gates", "c", "m", "hp", "xh", "params")):
    """After a backward: the layer keeps the cache's own buffers for its next training
    forward (one set per layer; not pickled), and the spent cache drops them."""
    pool = getattr(layer, "_train_buffers", None)
    if pool is None:
        pool = {}
        object.__setattr__(layer, "_train_buffers", pool)
    for key in keys:
        arr = part.pop(key, None)
        if arr is not None:
            pool[key] = arr


def _hprev(Y, h0, L, time_major, reverse, Hp):
    """Write the h each step read into Hp (an array view shaped like Y): the previous
    output in walking order, or h0."""
    Yt = Y if time_major else Y.swapaxes(0, 1)          # (T, N, Ho) views
    Ht = Hp if time_major else Hp.swapaxes(0, 1)
    if not reverse:
        Ht[1:] = Yt[:-1]
    else:
        Ht[:-1] = Yt[1:]
    _hfirst(h0, L, time_major, reverse, Hp)


def _hfirst(h0, L, time_major, reverse, Hp):
    """Write h0 where each row's first step (in walking order) reads it, in Hp (an array
    view shaped like Y), and zeros in the never-run slots it would take otherwise (a row
    of length 0, the last step of a shorter row walked in reverse): padding must read
    as finite zeros, or a NaN in h0 would reach the parameter gradients (NaN * 0)."""
    Ht = Hp if time_major else Hp.swapaxes(0, 1)          # (T, N, Ho) views
    if L is None:
        Ht[-1 if reverse else 0] = h0
        return
    Ht[-1 if reverse else 0] = 0
    rows = np.nonzero(L > 0)[0]
    Ht[L[rows] - 1 if reverse else 0, rows] = h0[rows]


def _lstm_forward(layer, X, X2m, N, T, time_major, c, h, L, reverse, xh=None,
                  x_written=False, next_x=None):
    """Training forward of one layer on validated input; c, h become the final state.

    X: validated input (N, T, I) / (T, N, I); X2m: its (N*T, I) rows with padding zeroed.
    xh: this layer's [X | H_prev] buffer if the caller took it already (see multi_forward),
    its X part already written when ``x_written``; next_x: the next layer's X part, for
    this layer's outputs, or None.
    Returns Y, the per-layer cache dict, and whether next_x was written.
    """
    H, Ho = layer.hidden_size, layer.output_size
    R = N * T
    zero = L is not None                                # padded rows must read as zeros
    dt = layer.dtype
    part = {"gates": _buffer(layer, "gates", (R, 4 * H), dt, zero),
            "c": _buffer(layer, "c", (R, H), dt, zero)}
    if layer.proj_size is not None:
        part["m"] = _buffer(layer, "m", (R, H), dt, zero)
        if layer.proj_clip is not None:
            part["hp"] = _buffer(layer, "hp", (R, Ho), dt, zero)
    part["c0"] = c.copy()
    h0 = h.copy()
    # each row's input beside the h its step read: [X | H_prev] (R, I + Ho), so that one
    # gemm gives dW and dU (adjacent in the gradient buffer) with one pass over dG.  For a
    # cache larger than the CPU caches the packed kernel writes the h rows itself (and the
    # next layer's input rows) as it computes them, instead of a pass that reads Y back
    # from memory (1.014x a medium training step); smaller caches, where that pass reads
    # cached data (the kernel's writes measured 0.96-0.995x at the small shape), and the
    # other kernels leave them to the copies below.
    I = layer.input_size
    if xh is None:
        xh = _buffer(layer, "xh", (R, I + Ho), dt, zero)
    part["xh"] = xh
    if _forward.large_cache(R, H, np.dtype(dt).itemsize):
        part["xo_next"] = xh[:, I:]
        if next_x is not None:
            part["xo_same"] = next_x
    Y = layer._run(X, N, T, time_major, c, h, L, reverse, cache=part)
    done = part.pop("xo_done", False)
    part.pop("xo_next", None)
    part.pop("xo_same", None)
    part["options"] = _options(layer)
    part["params"] = _buffer(layer, "params", layer._flat.shape, dt)
    np.copyto(part["params"], layer._flat)
    if R:
        if not x_written:
            np.copyto(xh[:, :I], X2m)
        Hp = xh.reshape(Y.shape[:2] + (I + Ho,))[:, :, I:]
        if done:
            _hfirst(h0, L, time_major, reverse, Hp)
        else:
            _hprev(Y, h0, L, time_major, reverse, Hp)
    part["reverse"] = reverse
    return Y, part, done and next_x is not None


def _address(a):
    return a.__array_interface__["data"][0]


def _wu(flat, g):
    """dW and dU as one (I + Ho, 4H) array: the first two views of the gradient buffer
    (``LSTM._param_shapes`` puts W, then U, at its start; checked)."""
    I, Ho, H4 = g["W"].shape[0], g["U"].shape[0], g["W"].shape[1]
    wu = flat[:(I + Ho) * H4].reshape(I + Ho, H4)
    if _address(wu) != _address(g["W"]) or _address(wu[I:]) != _address(g["U"]):
        raise RuntimeError("fastlstm: the gradient buffer does not start with W, then U")
    return wu


def _lstm_backward(layer, dY2, part, N, T, time_major, L, dc, dh, dX2, accumulate):
    """Backward of one layer: grads overwritten, dc/dh become d(initial state).

    dY2: (N*T, Ho) C-contiguous; dX2: (N*T, I) output or None, overwritten (or added to
    with ``accumulate``).
    """
    p = layer._params
    g = layer._views(layer._gflat)
    R = N * T
    if R == 0:
        layer._gflat[...] = 0
        if dX2 is not None and not accumulate:
            dX2[...] = 0
        return
    H, Ho = layer.hidden_size, layer.output_size
    has_p = layer.proj_size is not None
    dhp = np.zeros((R, Ho), layer.dtype) if has_p else None
    I = layer.input_size
    chunks = layer._chunks_for(N)
    flops = R * 4 * H * (2 * I + Ho) + (R * H * Ho if has_p else 0)
    parts = int(max(1, min(_layers._CHUNK_CORES, flops // _MIN_FLOPS_PER_PART)))
    nt = _threads.resolve_n_threads(layer.n_threads) if max(chunks, parts) > 1 else 1
    dpeep = np.zeros((chunks, 3 * H), layer.dtype) if layer.use_peepholes else None
    # BLAS stays on one thread: the per-step products are too small to share, and the
    # big ones are split into row ranges over the OpenMP threads (threaded BLAS on top
    # of a busy machine measured up to 100x slower here).
    with _threads.blas_single_thread(openmp=nt > 1):
        _backward.recurrence(
            dY2, N, T, time_major, p["U"], p.get("peepholes"), p.get("P"), part["gates"],
            part["c"], part.get("hp"), part["c0"], dc, dh, dhp, L, part["reverse"],
            _layers.ACTIVATIONS[layer.activation],
            _layers.RECURRENT_ACTIVATIONS[layer.recurrent_activation], layer.cell_clip,
            layer.proj_clip if has_p else None, dpeep, chunks, nt)
        _backward.param_grads(part["gates"], part["xh"], p["W"], dX2, accumulate,
                              _wu(layer._gflat, g), g["b"], part.get("m"), dhp,
                              g.get("P"), parts, nt)
    if dpeep is not None:
        g["peepholes"][...] = dpeep.sum(axis=0).reshape(3, H)
    _give_back(layer, part)


def _bidir_forward(model, X, X2m, N, T, time_major, state0, L, name):
    fw0, bw0 = model._split_state(state0, name)
    Ys, states, parts = [], [], []
    for layer, s0, rev, tag in ((model.forward_layer, fw0, False, "[0]"),
                                (model.backward_layer, bw0, True, "[1]")):
        c, h = _layers._as_state(s0, N, layer.hidden_size, layer.output_size, model.dtype,
                                 name + tag)
        Y, part, _ = _lstm_forward(layer, X, X2m, N, T, time_major, c, h, L, rev)
        Ys.append(Y)
        states.append(_layers.LSTMState(c, h))
        parts.append(part)
    return np.concatenate(Ys, axis=-1), tuple(states), parts


def _bidir_dstate(model, dstate, N, name):
    dfw, dbw = model._split_state(dstate, name)
    out = []
    for layer, d, tag in ((model.forward_layer, dfw, "[0]"), (model.backward_layer, dbw, "[1]")):
        out.append(_layers._as_state(d, N, layer.hidden_size, layer.output_size, model.dtype,
                                     name + tag))
    return out


def _bidir_backward(model, dY2, parts, N, T, time_major, L, dstates, dX2):
    """dY2: (N*T, Hf + Hb); dstates: [(dc, dh) fw, (dc, dh) bw], updated in place."""
    Hf = model.forward_layer.output_size
    halves = (np.ascontiguousarray(dY2[:, :Hf]), np.ascontiguousarray(dY2[:, Hf:]))
    for j, layer in enumerate((model.forward_layer, model.backward_layer)):
        dc, dh = dstates[j]
        _lstm_backward(layer, halves[j], parts[j], N, T, time_major, L, dc, dh, dX2,
                       accumulate=j == 1)


def _options(layer):
    """The options a training forward computed with (proj_clip only acts on a projection)."""
    return {"activation": layer.activation,
            "recurrent_activation": layer.recurrent_activation,
            "cell_clip": layer.cell_clip,
            "proj_clip": layer.proj_clip if layer.proj_size is not None else None}


def _layer_parts(model, parts, where="the layer"):
    """(layer, part, where) for every LSTM of ``model``, its part of a cache and its name
    in the model."""
    if isinstance(model, _layers.LSTM):
        yield model, parts, where
    elif isinstance(model, _layers.Bidirectional):
        at = "" if where == "the layer" else where + "."
        yield model.forward_layer, parts[0], at + "forward_layer"
        yield model.backward_layer, parts[1], at + "backward_layer"
    else:
        for k, (layer, part) in enumerate(zip(model.layers, parts)):
            yield from _layer_parts(layer, part, f"layers[{k}]")


def _check_unchanged(model, cache):
    """The cache describes the model as it was at forward(): refuse it when an option or a
    parameter has changed since (the gradient would be of neither model; a projection
    clip switched on would read a buffer the forward did not write)."""
    for layer, part, where in _layer_parts(model, cache.parts):
        for name, value in _options(layer).items():
            if value != part["options"][name]:
                raise ValueError(
                    f"{name} of {where} changed from {part['options'][name]!r} to {value!r} "
                    "after the forward() that made this cache; run forward() again")
        unsigned = np.uint32 if layer.dtype == np.float32 else np.uint64
        if not np.array_equal(layer._flat.view(unsigned), part["params"].view(unsigned)):
            raise ValueError(
                f"the parameters of {where} changed after the forward() that made this "
                "cache (an optimiser step, set_weights, ...): its gradients would be those "
                "of neither model; run forward() again")


def _check_cache(model, cache):
    if not isinstance(cache, TrainingCache):
        raise TypeError(f"cache must be the TrainingCache returned by this model's forward(), "
                        f"got {type(cache).__name__}")
    if cache.model is not model:
        raise ValueError("cache was made by another model's forward(); pass the cache "
                         "returned by this model's forward()")
    if cache.used:
        raise ValueError("cache was already used by a backward pass (backward overwrites "
                         "it); run forward() again")
    _check_unchanged(model, cache)


def _check_dY(dY, cache, dtype):
    dY = _layers._numeric_array(dY, "dY")
    if dY.shape != cache.y_shape:
        layout = "[time, batch, features]" if cache.time_major else "[batch, time, features]"
        raise ValueError(f"dY must have the shape of the forward output {cache.y_shape} "
                         f"{layout}, got {dY.shape}")
    _layers._check_fits(dY, dtype, "dY")
    dY = np.ascontiguousarray(dY, dtype=dtype)
    return dY.reshape(cache.N * cache.T, cache.y_shape[2])


def _prepare(model, X, lengths, time_major):
    time_major = _layers._check_time_major(time_major)
    X, N, T = _layers._as_input(X, model.dtype, model.input_size, time_major)
    L = _layers._as_lengths(lengths, N, T)
    return X, N, T, time_major, L, _masked_input(X, L, time_major)


# ---------------------------------------------------------------------------------------
# public entries (called by the methods in layers.py)


def lstm_forward(layer, X, initial_state, lengths, time_major, reverse):
    X, N, T, time_major, L, X2m = _prepare(layer, X, lengths, time_major)
    c, h = _layers._as_state(initial_state, N, layer.hidden_size, layer.output_size,
                             layer.dtype, "initial_state")
    Y, part, _ = _lstm_forward(layer, X, X2m, N, T, time_major, c, h, L, bool(reverse))
    cache = TrainingCache(layer, N, T, time_major, L, Y.shape, part)
    return Y, _layers.LSTMState(c, h), cache


def _check_input_grad(input_grad):
    if not isinstance(input_grad, (bool, np.bool_)):
        raise TypeError(f"input_grad must be True or False, got {input_grad!r}")
    return bool(input_grad)


def lstm_backward(layer, dY, cache, dstate, input_grad=True):
    _check_cache(layer, cache)
    input_grad = _check_input_grad(input_grad)
    dY2 = _check_dY(dY, cache, layer.dtype)
    N, T = cache.N, cache.T
    dc, dh = _layers._as_state(dstate, N, layer.hidden_size, layer.output_size, layer.dtype,
                               "dstate")
    cache.used = True
    dX = np.empty(cache.y_shape[:2] + (layer.input_size,), layer.dtype) if input_grad else None
    _lstm_backward(layer, dY2, cache.parts, N, T, cache.time_major, cache.lengths, dc, dh,
                   dX.reshape(N * T, layer.input_size) if input_grad else None, False)
    return dX, _layers.LSTMState(dc, dh)


def bidirectional_forward(model, X, initial_state, lengths, time_major):
    X, N, T, time_major, L, X2m = _prepare(model, X, lengths, time_major)
    Y, states, parts = _bidir_forward(model, X, X2m, N, T, time_major, initial_state, L,
                                      "initial_state")
    return Y, states, TrainingCache(model, N, T, time_major, L, Y.shape, parts)


def bidirectional_backward(model, dY, cache, dstate, input_grad=True):
    _check_cache(model, cache)
    input_grad = _check_input_grad(input_grad)
    dY2 = _check_dY(dY, cache, model.dtype)
    N, T = cache.N, cache.T
    dstates = _bidir_dstate(model, dstate, N, "dstate")
    cache.used = True
    dX = np.empty(cache.y_shape[:2] + (model.input_size,), model.dtype) if input_grad else None
    _bidir_backward(model, dY2, cache.parts, N, T, cache.time_major, cache.lengths, dstates,
                    dX.reshape(N * T, model.input_size) if input_grad else None)
    return dX, tuple(_layers.LSTMState(dc, dh) for dc, dh in dstates)


def multi_forward(model, X, initial_state, lengths, time_major):
    X, N, T, time_major, L, X2m = _prepare(model, X, lengths, time_major)
    s0 = model._layer_states(initial_state, "initial_state")
    states, parts = [], []
    inp, inp2 = X, X2m
    xh, x_written = None, False           # the next layer's [X | H_prev], if taken already
    for k, layer in enumerate(model.layers):
        name = f"initial_state[{k}]"
        if isinstance(layer, _layers.Bidirectional):
            Y, s, part = _bidir_forward(layer, inp, inp2, N, T, time_major, s0[k], L, name)
        else:
            c, h = _layers._as_state(s0[k], N, layer.hidden_size, layer.output_size,
                                     model.dtype, name)
            # an LSTM after an LSTM: the first one's kernel writes its outputs into the
            # second one's cache rows too (no copy afterwards)
            nxt = model.layers[k + 1] if k + 1 < len(model.layers) else None
            nxh = None
            if isinstance(nxt, _layers.LSTM) and N * T:
                nxh = _buffer(nxt, "xh", (N * T, nxt.input_size + nxt.output_size),
                              model.dtype, L is not None)
            Y, part, wrote = _lstm_forward(
                layer, inp, inp2, N, T, time_major, c, h, L, layer.reverse, xh, x_written,
                None if nxh is None else nxh[:, :nxt.input_size])
            xh, x_written = nxh, wrote
            s = _layers.LSTMState(c, h)
        states.append(s)
        parts.append(part)
        inp = Y
        inp2 = Y.reshape(N * T, Y.shape[2])             # padded outputs are already 0
    return inp, tuple(states), TrainingCache(model, N, T, time_major, L, inp.shape, parts)


def multi_backward(model, dY, cache, dstate, input_grad=True):
    _check_cache(model, cache)
    input_grad = _check_input_grad(input_grad)
    dY2 = _check_dY(dY, cache, model.dtype)
    N, T = cache.N, cache.T
    ds = model._layer_states(dstate, "dstate")
    dstates = []
    for k, layer in enumerate(model.layers):
        name = f"dstate[{k}]"
        if isinstance(layer, _layers.Bidirectional):
            dstates.append(_bidir_dstate(layer, ds[k], N, name))
        else:
            dstates.append(_layers._as_state(ds[k], N, layer.hidden_size, layer.output_size,
                                             model.dtype, name))
    cache.used = True
    d_out = dY2
    spent = []
    for k in range(len(model.layers) - 1, -1, -1):
        layer = model.layers[k]
        if k > 0:       # the gradient passed down: a buffer the layer keeps between steps
            dX2 = _buffer(layer, "dX", (N * T, layer.input_size), model.dtype)
            spent.append((layer, {"dX": dX2}))
        else:
            dX2 = np.empty((N * T, layer.input_size), model.dtype) if input_grad else None
        if isinstance(layer, _layers.Bidirectional):
            _bidir_backward(layer, d_out, cache.parts[k], N, T, cache.time_major,
                            cache.lengths, dstates[k], dX2)
        else:
            dc, dh = dstates[k]
            _lstm_backward(layer, d_out, cache.parts[k], N, T, cache.time_major,
                           cache.lengths, dc, dh, dX2, False)
        d_out = dX2
    for layer, part in spent:
        _give_back(layer, part, ("dX",))
    dX = d_out.reshape(cache.y_shape[:2] + (model.input_size,)) if input_grad else None
    out = []
    for k, layer in enumerate(model.layers):
        if isinstance(layer, _layers.Bidirectional):
            out.append(tuple(_layers.LSTMState(dc, dh) for dc, dh in dstates[k]))
        else:
            out.append(_layers.LSTMState(*dstates[k]))
    return dX, tuple(out)
