"""Pure NumPy reference implementation of fastlstm's maths (SPEC.md Part A).

This module is the test oracle: it shares no code with the compiled kernels and favours
plainness over speed.  Everything is written one time step at a time, with NumPy's own
``np.exp`` / ``np.tanh``.

Parameters of one layer and direction are a dict ``params`` with keys
``W`` (I, 4H), ``U`` (Hout, 4H), ``b`` (4H,), and optionally ``peepholes`` (3, H) and
``P`` (H, Hout); gate blocks are (i, f, g, o).  Inputs are batch-major ``X`` (N, T, I).
"""

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "RECURRENT_ACTIVATIONS",
    "activation",
    "lstm_forward",
    "lstm_step",
    "bidirectional_forward",
    "stack_forward",
]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": _sigmoid,
    "linear": lambda x: x,
}

RECURRENT_ACTIVATIONS = {
    "sigmoid": _sigmoid,
    # Keras 3 hard_sigmoid: relu6(x + 3) / 6 = clip(x / 6 + 0.5, 0, 1)
    "hard_sigmoid": lambda x: np.clip((x + 3.0) / 6.0, 0.0, 1.0),
    # Keras 2 hard_sigmoid: clip(0.2 x + 0.5, 0, 1), written as (x + 2.5) / 5 (no
    # cancellation just above the lower knee)
    "hard_sigmoid_keras2": lambda x: np.clip((x + 2.5) / 5.0, 0.0, 1.0),
}


def activation(name, x):
    """Apply the named cell activation (``ACTIVATIONS``) to ``x``."""
    return ACTIVATIONS[name](x)


def _clip(x, a):
    return np.clip(x, -a, a)


def lstm_step(x, c, h, params, *, cell_clip=None, proj_clip=None, activation="tanh",
              recurrent_activation="sigmoid"):
    """One step for all rows: x (N, I), c (N, H), h (N, Hout) -> (m_out (N, Hout), c_new)."""
    act = ACTIVATIONS[activation]
    rec = RECURRENT_ACTIVATIONS[recurrent_activation]
    W, U, b = params["W"], params["U"], params["b"]
    peep = params.get("peepholes")
    P = params.get("P")
    H = b.shape[0] // 4
    z = x @ W + h @ U + b
    zi, zf, zg, zo = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
    if peep is not None:
        zi = zi + peep[0] * c
        zf = zf + peep[1] * c
    i = rec(zi)
    f = rec(zf)
    c_new = f * c + i * act(zg)
    if cell_clip is not None:
        c_new = _clip(c_new, cell_clip)
    if peep is not None:
        zo = zo + peep[2] * c_new
    o = rec(zo)
    m = o * act(c_new)
    if P is not None:
        m = m @ P
        if proj_clip is not None:
            m = _clip(m, proj_clip)
    return m, c_new


def lstm_forward(X, params, *, initial_state=None, lengths=None, reverse=False,
                 cell_clip=None, proj_clip=None, activation="tanh",
                 recurrent_activation="sigmoid"):
    """One layer, one direction, over a batch-major sequence.

    X: (N, T, I); initial_state: (c0 (N, H), h0 (N, Hout)) or None for zeros;
    lengths: (N,) ints in [0, T] or None.  Rows past their length output 0 and keep
    their state (TF ``dynamic_rnn``).  ``reverse`` walks each row's valid prefix from its
    last valid step down to 0 and writes outputs in original time order.

    Returns ``Y`` (N, T, Hout) and the final state ``(c, h)``.
    """
    X = np.asarray(X)
    N, T, _ = X.shape
    b = params["b"]
    dtype = b.dtype
    H = b.shape[0] // 4
    Hout = params["U"].shape[0]
    if initial_state is None:
        c = np.zeros((N, H), dtype)
        h = np.zeros((N, Hout), dtype)
    else:
        c = np.array(initial_state[0], dtype=dtype, copy=True)
        h = np.array(initial_state[1], dtype=dtype, copy=True)
    L = np.full(N, T, dtype=np.int64) if lengths is None else np.asarray(lengths, np.int64)
    Y = np.zeros((N, T, Hout), dtype)
    for k in range(T):
        active = k < L
        if not active.any():
            break
        t = np.where(reverse, L - 1 - k, k)
        t = np.where(active, t, 0)
        x = X[np.arange(N), t].astype(dtype)
        # padded rows are never evaluated into the state: select, never multiply by a mask
        x = np.where(active[:, None], x, 0)
        m, c_new = lstm_step(x, c, h, params, cell_clip=cell_clip, proj_clip=proj_clip,
                             activation=activation, recurrent_activation=recurrent_activation)
        c = np.where(active[:, None], c_new, c)
        h = np.where(active[:, None], m, h)
        rows = np.nonzero(active)[0]
        Y[rows, t[rows]] = m[rows]
    return Y, (c, h)


def bidirectional_forward(X, fw_params, bw_params, *, initial_state=None, lengths=None,
                          fw_options=None, bw_options=None):
    """Forward and reverse layers on the same input; output ``[fw | bw]`` on the last axis.

    initial_state: (fw_state, bw_state) or None.  Returns Y and (fw_state, bw_state).
    """
    fw0, bw0 = (None, None) if initial_state is None else initial_state
    Yf, sf = lstm_forward(X, fw_params, initial_state=fw0, lengths=lengths, reverse=False,
                          **(fw_options or {}))
    Yb, sb = lstm_forward(X, bw_params, initial_state=bw0, lengths=lengths, reverse=True,
                          **(bw_options or {}))
    return np.concatenate([Yf, Yb], axis=-1), (sf, sb)


def stack_forward(X, layers, *, initial_state=None, lengths=None):
    """A stack of layers, bottom first.

    layers: list of items, each either ``("lstm", params, options)`` or
    ``("bidirectional", (fw_params, fw_options), (bw_params, bw_options))``.
    initial_state: tuple with one state per layer, or None.  Returns the top layer's
    output and the tuple of final states.
    """
    states = []
    inp = X
    for k, item in enumerate(layers):
        s0 = None if initial_state is None else initial_state[k]
        if item[0] == "lstm":
            _, params, options = item
            inp, s = lstm_forward(inp, params, initial_state=s0, lengths=lengths,
                                  **(options or {}))
        else:
            _, (fwp, fwo), (bwp, bwo) = item
            inp, s = bidirectional_forward(inp, fwp, bwp, initial_state=s0, lengths=lengths,
                                           fw_options=fwo, bw_options=bwo)
        states.append(s)
    return inp, tuple(states)


# ---------------------------------------------------------------------------------------------
# Backward pass (backpropagation through time)
# ---------------------------------------------------------------------------------------------
#
# Derivatives are written out by hand, one function per activation, and expressed through
# the pre-activation ``x`` (and, where cheaper, the activation's value ``y``).  Where a
# function is piecewise (relu, hard sigmoids, clips) the derivative follows TF's gradients:
# relu' = 1 where x > 0 else 0; a hard sigmoid has its slope where the clipped value is
# strictly inside (0, 1), else 0; clip(v, a) passes the gradient where |v| <= a, else 0.

__all__ += ["lstm_backward", "bidirectional_backward", "stack_backward"]


def _activation_grad(name, x, y):
    """d act(x) / dx for ``ACTIVATIONS[name]``, given x and y = act(x)."""
    if name == "tanh":
        return (1.0 - y) * (1.0 + y)        # 1 - y^2 without cancelling near |y| = 1
    if name == "relu":
        return (x > 0).astype(x.dtype)
    if name == "sigmoid":
        return y * (1.0 - y)
    if name == "linear":
        return np.ones_like(x)
    raise KeyError(name)


def _recurrent_activation_grad(name, x, y):
    """d rec(x) / dx for ``RECURRENT_ACTIVATIONS[name]``, given x and y = rec(x)."""
    if name == "sigmoid":
        return y * (1.0 - y)
    if name == "hard_sigmoid":
        slope = 1.0 / 6.0
    elif name == "hard_sigmoid_keras2":
        slope = 0.2
    else:
        raise KeyError(name)
    return np.where((y > 0.0) & (y < 1.0), slope, 0.0).astype(x.dtype)


def _clip_pass(v, a):
    """Where the gradient passes through clip(v, a): |v| <= a."""
    return np.abs(v) <= a


def _zeros_state(N, H, Hout, dtype):
    return np.zeros((N, H), dtype), np.zeros((N, Hout), dtype)


def lstm_backward(dY, X, params, *, dstate=None, initial_state=None, lengths=None,
                  reverse=False, cell_clip=None, proj_clip=None, activation="tanh",
                  recurrent_activation="sigmoid"):
    """Exact gradients of ``lstm_forward`` (same options, same semantics).

    dY: (N, T, Hout), the gradient of the loss w.r.t. ``Y``; dstate: (dc_T (N, H),
    dh_T (N, Hout)), the gradient w.r.t. the final state, or None for zeros.

    Returns a dict with ``"X"`` (N, T, I), ``"W"``, ``"U"``, ``"b"``, ``"peepholes"`` and
    ``"P"`` (each only when present in ``params``) and ``"state0"`` = (dc0 (N, H),
    dh0 (N, Hout)), the gradient w.r.t. the initial state.  Padded steps contribute nothing:
    ``dY`` at t >= L[b] is ignored (those outputs are constant 0), and the gradient w.r.t.
    a carried state passes through them unchanged.
    """
    act = ACTIVATIONS[activation]
    rec = RECURRENT_ACTIVATIONS[recurrent_activation]
    X = np.asarray(X)
    N, T, I = X.shape
    W, U, b = params["W"], params["U"], params["b"]
    peep = params.get("peepholes")
    P = params.get("P")
    dtype = b.dtype
    H = b.shape[0] // 4
    Hout = U.shape[0]
    dY = np.asarray(dY, dtype=dtype)
    if initial_state is None:
        c, h = _zeros_state(N, H, Hout, dtype)
    else:
        c = np.array(initial_state[0], dtype=dtype, copy=True)
        h = np.array(initial_state[1], dtype=dtype, copy=True)
    L = np.full(N, T, dtype=np.int64) if lengths is None else np.asarray(lengths, np.int64)
    rows_all = np.arange(N)

    # ---- forward, one step at a time, keeping everything the backward needs ----
    tape = []
    for k in range(T):
        active = k < L
        if not active.any():
            break
        t = np.where(reverse, L - 1 - k, k)
        t = np.where(active, t, 0)
        x = X[rows_all, t].astype(dtype)
        x = np.where(active[:, None], x, 0)          # select: padding never enters
        z = x @ W + h @ U + b
        zi, zf, zg, zo = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
        if peep is not None:
            zi = zi + peep[0] * c
            zf = zf + peep[1] * c
        i = rec(zi)
        f = rec(zf)
        g = act(zg)
        c_raw = f * c + i * g
        c_new = _clip(c_raw, cell_clip) if cell_clip is not None else c_raw
        if peep is not None:
            zo = zo + peep[2] * c_new
        o = rec(zo)
        ac = act(c_new)
        m_cell = o * ac
        if P is not None:
            m_proj = m_cell @ P
            m = _clip(m_proj, proj_clip) if proj_clip is not None else m_proj
        else:
            m_proj = None
            m = m_cell
        tape.append(dict(active=active, t=t, x=x, c_prev=c, h_prev=h, zi=zi, zf=zf, zg=zg,
                         zo=zo, i=i, f=f, g=g, c_raw=c_raw, c_new=c_new, o=o, ac=ac,
                         m_cell=m_cell, m_proj=m_proj))
        c = np.where(active[:, None], c_new, c)
        h = np.where(active[:, None], m, h)

    # ---- backward ----
    dX = np.zeros((N, T, I), dtype)
    dW = np.zeros_like(W, dtype=dtype)
    dU = np.zeros_like(U, dtype=dtype)
    db = np.zeros_like(b, dtype=dtype)
    dpeep = None if peep is None else np.zeros_like(peep, dtype=dtype)
    dP = None if P is None else np.zeros_like(P, dtype=dtype)
    if dstate is None:
        dc, dh = _zeros_state(N, H, Hout, dtype)
    else:
        dc = np.array(dstate[0], dtype=dtype, copy=True)
        dh = np.array(dstate[1], dtype=dtype, copy=True)

    for s in reversed(tape):
        active = s["active"]
        a_col = active[:, None]
        t = s["t"]
        rows = np.nonzero(active)[0]
        dYt = np.zeros((N, Hout), dtype)
        dYt[rows] = dY[rows, t[rows]]
        # rows past their length: their state was carried, so dc, dh are left untouched
        dm = np.where(a_col, dh + dYt, 0)
        if P is not None:
            dm_proj = dm
            if proj_clip is not None:
                dm_proj = np.where(_clip_pass(s["m_proj"], proj_clip), dm_proj, 0)
            dP += np.where(a_col, s["m_cell"], 0).T @ dm_proj
            dm_cell = dm_proj @ P.T
        else:
            dm_cell = dm
        do = dm_cell * s["ac"]
        dzo = do * _recurrent_activation_grad(recurrent_activation, s["zo"], s["o"])
        dzo = np.where(a_col, dzo, 0)
        dc_new = np.where(a_col, dc, 0) + dm_cell * s["o"] * _activation_grad(
            activation, s["c_new"], s["ac"])
        if peep is not None:
            dc_new = dc_new + dzo * peep[2]
            dpeep[2] += np.sum(dzo * s["c_new"], axis=0)
        if cell_clip is not None:
            dc_raw = np.where(_clip_pass(s["c_raw"], cell_clip), dc_new, 0)
        else:
            dc_raw = dc_new
        c_prev = s["c_prev"]
        dzi = dc_raw * s["g"] * _recurrent_activation_grad(recurrent_activation, s["zi"],
                                                           s["i"])
        dzf = dc_raw * c_prev * _recurrent_activation_grad(recurrent_activation, s["zf"],
                                                           s["f"])
        dzg = dc_raw * s["i"] * _activation_grad(activation, s["zg"], s["g"])
        dzi = np.where(a_col, dzi, 0)
        dzf = np.where(a_col, dzf, 0)
        dzg = np.where(a_col, dzg, 0)
        dc_prev = dc_raw * s["f"]
        if peep is not None:
            dc_prev = dc_prev + dzi * peep[0] + dzf * peep[1]
            dpeep[0] += np.sum(dzi * c_prev, axis=0)
            dpeep[1] += np.sum(dzf * c_prev, axis=0)
        dz = np.concatenate([dzi, dzf, dzg, dzo], axis=1)
        dW += s["x"].T @ dz
        dU += s["h_prev"].T @ dz
        db += dz.sum(axis=0)
        dX[rows, t[rows]] += (dz @ W.T)[rows]
        dh_prev = dz @ U.T
        dc = np.where(a_col, dc_prev, dc)
        dh = np.where(a_col, dh_prev, dh)

    grads = {"X": dX, "W": dW, "U": dU, "b": db}
    if peep is not None:
        grads["peepholes"] = dpeep
    if P is not None:
        grads["P"] = dP
    grads["state0"] = (dc, dh)
    return grads


def bidirectional_backward(dY, X, fw_params, bw_params, *, dstate=None, initial_state=None,
                           lengths=None, fw_options=None, bw_options=None):
    """Gradients of ``bidirectional_forward``.

    dY: (N, T, 2*Hout) split as ``[fw | bw]``; dstate: (fw_dstate, bw_dstate) (each a
    (dc, dh) pair or None) or None.  Returns a dict with ``"X"``, ``"fw.<name>"`` and
    ``"bw.<name>"`` for every parameter, and ``"state0"`` = (fw_state0_grad,
    bw_state0_grad).
    """
    fw0, bw0 = (None, None) if initial_state is None else initial_state
    dfw, dbw = (None, None) if dstate is None else dstate
    Hf = fw_params["U"].shape[0]
    dY = np.asarray(dY)
    gf = lstm_backward(dY[..., :Hf], X, fw_params, dstate=dfw, initial_state=fw0,
                       lengths=lengths, reverse=False, **(fw_options or {}))
    gb = lstm_backward(dY[..., Hf:], X, bw_params, dstate=dbw, initial_state=bw0,
                       lengths=lengths, reverse=True, **(bw_options or {}))
    grads = {"X": gf["X"] + gb["X"]}
    for prefix, g in (("fw", gf), ("bw", gb)):
        for name, value in g.items():
            if name not in ("X", "state0"):
                grads[f"{prefix}.{name}"] = value
    grads["state0"] = (gf["state0"], gb["state0"])
    return grads


def stack_backward(dY, X, layers, *, dstate=None, initial_state=None, lengths=None):
    """Gradients of ``stack_forward`` (same ``layers`` description).

    dY: gradient w.r.t. the top layer's output; dstate: tuple with one final-state gradient
    per layer (a (dc, dh) pair, or for a bidirectional layer a (fw, bw) pair of those; any
    entry may be None for zeros), or None.

    Returns a dict with ``"X"``, ``"k.<name>"`` for a plain layer k, ``"k.fw.<name>"`` and
    ``"k.bw.<name>"`` for a bidirectional layer k, and ``"state0"``: a tuple with one
    initial-state gradient per layer, shaped like ``initial_state``.
    """
    # forward, keeping each layer's input
    inputs = []
    inp = X
    for k, item in enumerate(layers):
        inputs.append(inp)
        s0 = None if initial_state is None else initial_state[k]
        if item[0] == "lstm":
            _, params, options = item
            inp, _ = lstm_forward(inp, params, initial_state=s0, lengths=lengths,
                                  **(options or {}))
        else:
            _, (fwp, fwo), (bwp, bwo) = item
            inp, _ = bidirectional_forward(inp, fwp, bwp, initial_state=s0, lengths=lengths,
                                           fw_options=fwo, bw_options=bwo)

    grads = {}
    states = [None] * len(layers)
    d_out = dY
    for k in reversed(range(len(layers))):
        item = layers[k]
        s0 = None if initial_state is None else initial_state[k]
        ds = None if dstate is None else dstate[k]
        if item[0] == "lstm":
            _, params, options = item
            g = lstm_backward(d_out, inputs[k], params, dstate=ds, initial_state=s0,
                              lengths=lengths, **(options or {}))
        else:
            _, (fwp, fwo), (bwp, bwo) = item
            g = bidirectional_backward(d_out, inputs[k], fwp, bwp, dstate=ds,
                                       initial_state=s0, lengths=lengths, fw_options=fwo,
                                       bw_options=bwo)
        for name, value in g.items():
            if name not in ("X", "state0"):
                grads[f"{k}.{name}"] = value
        states[k] = g["state0"]
        d_out = g["X"]
    grads["X"] = d_out
    grads["state0"] = tuple(states)
    return grads
