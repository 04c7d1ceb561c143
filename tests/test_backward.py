"""Backward pass (``forward`` with a cache + ``backward``) of LSTM, Bidirectional, MultiLSTM.

Oracles: the NumPy reference backward (``reference.lstm_backward`` and friends, itself
checked against finite differences in test_reference.py) and central finite differences
in float64 through the public inference call ``model(...)``.  The loss is a random linear
functional of every output: L = sum(dY*Y) + sum(dc*c_T) + sum(dh*h_T).
"""

import itertools

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import _threads
from conftest import (assert_grads_close, numeric_grad, randomize, ref, ref_options,
                      ref_params, reference_stack, rel_err, tol)

RTOL = 1e-6

# every option of SPEC.md Part A; "lengths": "mixed" gives [0, T, 2, ...]
CASES = [
    ("plain", {}),
    ("no_initial_state", {"initial_state": False}),
    ("no_dstate", {"dstate": False}),
    ("peepholes", {"peepholes": True}),
    ("cell_clip", {"cell_clip": 0.3}),
    ("cell_clip_peepholes", {"cell_clip": 0.3, "peepholes": True}),
    ("projection", {"proj_size": 3}),
    ("projection_clip", {"proj_size": 3, "proj_clip": 0.2}),
    ("relu", {"activation": "relu"}),
    ("sigmoid_act", {"activation": "sigmoid"}),
    ("linear_act", {"activation": "linear"}),
    ("hard_sigmoid", {"recurrent_activation": "hard_sigmoid"}),
    ("hard_sigmoid_keras2", {"recurrent_activation": "hard_sigmoid_keras2"}),
    ("reverse", {"reverse": True}),
    ("lengths", {"lengths": "mixed"}),
    ("lengths_reverse", {"lengths": "mixed", "reverse": True}),
    ("time_major", {"time_major": True, "lengths": "mixed"}),
    ("time_major_reverse", {"time_major": True, "lengths": "mixed", "reverse": True}),
    ("everything", {"peepholes": True, "proj_size": 3, "cell_clip": 0.3, "proj_clip": 0.2,
                    "lengths": "mixed", "reverse": True}),
    ("everything_keras2_relu", {"peepholes": True, "proj_size": 3, "cell_clip": 0.4,
                                "proj_clip": 0.2, "lengths": "mixed", "time_major": True,
                                "recurrent_activation": "hard_sigmoid_keras2",
                                "activation": "relu"}),
]
LAYER_KEYS = ("proj_size", "peepholes", "cell_clip", "proj_clip", "activation",
              "recurrent_activation")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def check_fd(named, loss, analytic):
    for name, arr in named.items():
        ana = analytic[name]
        assert ana.shape == arr.shape, name
        num = numeric_grad(loss, arr)
        assert np.abs(num).max() > 0, f"{name}: gradient is identically zero, test is void"
        err = rel_err(ana, num)
        assert err <= RTOL, f"{name}: relative error {err:.3g}"


def to_layout(A, time_major):
    return np.ascontiguousarray(A.transpose(1, 0, 2)) if time_major else A


def make_case(opts, rng, dtype=np.float64, N=3, T=5, I=3, H=4, n_threads=1, scale=0.5):
    kw = {k: opts[k] for k in LAYER_KEYS if k in opts}
    layer = randomize(fl.LSTM(I, H, dtype=dtype, n_threads=n_threads, **kw), rng, scale)
    Ho = layer.output_size
    X = rng.normal(size=(N, T, I))
    if opts.get("initial_state", True):
        s0 = (rng.normal(size=(N, H)), rng.normal(size=(N, Ho)))
    else:
        s0 = None
    lengths = None
    if opts.get("lengths") == "mixed":
        lengths = np.array(([0, T, 2] + [1, T - 1, 3] * N)[:N])
    dY = rng.normal(size=(N, T, Ho))
    ds = (rng.normal(size=(N, H)), rng.normal(size=(N, Ho))) if opts.get("dstate", True) \
        else None
    return layer, X, s0, lengths, dY, ds


def state_term(state, dstate):
    if dstate is None:
        return 0.0
    return float(np.sum(state[0] * dstate[0]) + np.sum(state[1] * dstate[1]))


# ---------------------------------------------------------------------------------------------
# LSTM: finite differences (float64) and the reference (float32 and float64, 1 and 2 threads)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,opts", CASES, ids=[c[0] for c in CASES])
def test_lstm_finite_differences(name, opts, rng):
    layer, X, s0, lengths, dY, ds = make_case(opts, rng)
    tm, rev = opts.get("time_major", False), opts.get("reverse", False)
    N, H, Ho = X.shape[0], layer.hidden_size, layer.output_size
    c0, h0 = s0 if s0 is not None else (np.zeros((N, H)), np.zeros((N, Ho)))
    Xl, dYl = to_layout(X, tm), to_layout(dY, tm)

    def loss():
        Y, s = layer(Xl, (c0, h0), lengths=lengths, time_major=tm, reverse=rev)
        return float(np.sum(Y * dYl)) + state_term(s, ds)

    Y, state, cache = layer.forward(Xl, s0, lengths=lengths, time_major=tm, reverse=rev)
    Y2, state2 = layer(Xl, s0, lengths=lengths, time_major=tm, reverse=rev)
    np.testing.assert_array_equal(Y, Y2)            # the training forward is the inference one
    np.testing.assert_array_equal(state.c, state2.c)
    # the clip options must actually clip somewhere, or the case tests nothing (the cache
    # holds the values before clipping; backward hands its buffers back to the layer)
    if "cell_clip" in opts:
        assert (np.abs(cache.parts["c"]) > opts["cell_clip"]).any()
    if "proj_clip" in opts:
        assert (np.abs(cache.parts["hp"]) > opts["proj_clip"]).any()
    dX, d0 = layer.backward(dYl, cache, ds)
    assert isinstance(d0, fl.LSTMState)
    analytic = dict(layer.grads, X=dX, c0=d0.c, h0=d0.h)
    named = dict(layer.params, X=Xl, c0=c0, h0=h0)
    check_fd(named, loss, analytic)


def reference_grads(layer, X, s0, lengths, dY, ds, rev):
    return ref.lstm_backward(dY, X, ref_params(layer), dstate=ds, initial_state=s0,
                             lengths=lengths, reverse=rev, **ref_options(layer))


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,opts", CASES, ids=[c[0] for c in CASES])
def test_lstm_matches_reference(name, opts, dtype, n_threads, rng):
    # big enough that the batch is split into row blocks (run by 2 threads with n_threads=2)
    opts = dict(opts, proj_size=16) if "proj_size" in opts else opts
    layer, X, s0, lengths, dY, ds = make_case(opts, rng, dtype, N=12, T=7, I=16, H=32,
                                              n_threads=n_threads, scale=0.25)
    if _threads.usable_cores() >= 2:
        assert layer._chunks_for(12) == 2
    tm, rev = opts.get("time_major", False), opts.get("reverse", False)
    Y, _, cache = layer.forward(to_layout(X, tm), s0, lengths=lengths, time_major=tm,
                                reverse=rev)
    dX, d0 = layer.backward(to_layout(dY, tm), cache, ds)
    g = reference_grads(layer, X, s0, lengths, dY, ds, rev)
    assert_grads_close(dict(layer.grads, X=to_layout(dX, tm), c0=d0.c, h0=d0.h), g, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H", [1, 3, 8, 13])
def test_plain_cell_every_width(H, dtype, rng):
    # the common case (tanh, sigmoid, no clip or peepholes) runs vector code on AVX2:
    # widths below, at and past a vector, with a partial last vector
    layer, X, s0, lengths, dY, ds = make_case({"lengths": "mixed"}, rng, dtype, N=5, T=4,
                                              I=3, H=H)
    _, _, cache = layer.forward(X, s0, lengths=lengths)
    dX, d0 = layer.backward(dY, cache, ds)
    g = reference_grads(layer, X, s0, lengths, dY, ds, False)
    assert_grads_close(dict(layer.grads, X=dX, c0=d0.c, h0=d0.h), g, dtype)


def test_threads_bit_identical(rng):
    opts = {"peepholes": True, "proj_size": 12, "cell_clip": 0.5, "lengths": "mixed"}
    out = []
    for n_threads in (1, 2):
        layer, X, s0, lengths, dY, ds = make_case(opts, np.random.default_rng(7), np.float32,
                                                  N=16, T=9, I=8, H=32, n_threads=n_threads)
        assert layer._chunks_for(16) > 1
        _, _, cache = layer.forward(X, s0, lengths=np.resize(lengths, 16))
        dX, d0 = layer.backward(dY, cache, ds)
        out.append((layer.flat_grads.copy(), dX, d0.c, d0.h))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("H,proj", [(8, 5), (48, 40), (50, None)])
def test_parameter_gradients_in_parts(H, proj, monkeypatch):
    # the products after the time loop split into 3 row ranges (partial sums of dW, dU,
    # db, dP added afterwards), with and without a projection, rows padded by lengths;
    # against the reference, and the same bits on 1, 2 and 3 threads
    from fastlstm import _training, layers
    monkeypatch.setattr(_training, "_MIN_FLOPS_PER_PART", 1)
    monkeypatch.setattr(layers, "_CHUNK_CORES", 3)
    opts = {"peepholes": True, "lengths": "mixed"}
    if proj is not None:
        opts["proj_size"] = proj
    out = []
    for n_threads in (1, 2, 3):
        layer, X, s0, lengths, dY, ds = make_case(opts, np.random.default_rng(3), np.float64,
                                                  N=10, T=9, I=7, H=H, n_threads=n_threads)
        _, _, cache = layer.forward(X, s0, lengths=lengths)
        dX, d0 = layer.backward(dY, cache, ds)
        out.append((layer.flat_grads.copy(), dX))
        if n_threads == 1:
            g = reference_grads(layer, X, s0, lengths, dY, ds, False)
            assert_grads_close(dict(layer.grads, X=dX, c0=d0.c, h0=d0.h), g, np.float64)
    for got in out[1:]:
        for a, b in zip(out[0], got):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# padding semantics
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_padding_is_inert(reverse, time_major, rng):
    """NaN/Inf in padded inputs and anything in padded dY changes nothing."""
    layer, X, s0, _, dY, ds = make_case({"peepholes": True, "proj_size": 3}, rng, N=4, T=6)
    lengths = np.array([6, 0, 3, 1])
    pad = np.arange(6)[None, :] >= lengths[:, None]
    results = []
    for fill in (0.0, np.nan, np.inf):
        Xp, dYp = X.copy(), dY.copy()
        Xp[pad] = fill
        dYp[pad] = -fill if fill == 0 else 1e30
        _, _, cache = layer.forward(to_layout(Xp, time_major), s0, lengths=lengths,
                                    time_major=time_major, reverse=reverse)
        dX, d0 = layer.backward(to_layout(dYp, time_major), cache, ds)
        dX = to_layout(dX, time_major)
        assert np.isfinite(layer.flat_grads).all()
        assert (dX[pad] == 0).all()
        results.append((layer.flat_grads.copy(), dX, d0.c, d0.h))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    # a row of length 0 passes dstate straight through
    np.testing.assert_array_equal(results[0][2][1], ds[0][1])
    np.testing.assert_array_equal(results[0][3][1], ds[1][1])


@pytest.mark.parametrize("shape", [(3, 4, 3, 5), (24, 100, 16, 176)],
                         ids=["small", "kernel_written_cache"])
@pytest.mark.parametrize("reverse", [False, True])
def test_initial_state_of_an_empty_row_never_reaches_the_gradients(reverse, shape):
    """A row of length 0 runs no step, so its initial h reads nowhere: a NaN there reached
    grads['U'] (NaN * 0) through the never-run first-step slot of the cache, on three of
    the four paths here."""
    N, T, I, H = shape
    rng = np.random.default_rng(7)
    layer = fl.LSTM(I, H, dtype=np.float64, reverse=reverse, random_state=0)
    X = rng.normal(size=(N, T, I))
    lengths = np.full(N, T)
    lengths[1], lengths[2] = 0, T // 2
    c0, h0 = rng.normal(size=(N, H)), rng.normal(size=(N, H))
    grads = []
    for bad in (False, True):
        h = h0.copy()
        if bad:
            h[1] = np.nan
        Y, _, cache = layer.forward(X, initial_state=(c0, h), lengths=lengths)
        layer.backward(np.ones(Y.shape), cache)
        grads.append(layer.flat_grads.copy())
    assert np.isfinite(grads[1]).all()
    np.testing.assert_array_equal(grads[0], grads[1])


def test_all_rows_empty(rng):
    layer, X, s0, _, dY, ds = make_case({}, rng)
    layer.flat_grads[...] = 5
    _, _, cache = layer.forward(X, s0, lengths=np.zeros(3, int))
    dX, d0 = layer.backward(dY, cache, ds)
    assert (layer.flat_grads == 0).all() and (dX == 0).all()
    np.testing.assert_array_equal(d0.c, ds[0])


def test_empty_batch():
    layer = fl.LSTM(3, 4, random_state=0)
    layer.flat_grads[...] = 1
    Y, _, cache = layer.forward(np.zeros((0, 5, 3)))
    dX, d0 = layer.backward(np.zeros_like(Y), cache)
    assert dX.shape == (0, 5, 3) and d0.c.shape == (0, 4)
    assert (layer.flat_grads == 0).all()


# ---------------------------------------------------------------------------------------------
# Bidirectional and MultiLSTM
# ---------------------------------------------------------------------------------------------

def bidir(rng, I, dtype, n_threads=1, w=1):
    return fl.Bidirectional(
        randomize(fl.LSTM(I, 4 * w, dtype=dtype, n_threads=n_threads, peepholes=True), rng),
        randomize(fl.LSTM(I, 3 * w, dtype=dtype, n_threads=n_threads, proj_size=2 * w,
                          cell_clip=0.5), rng))


@pytest.mark.parametrize("time_major", [False, True])
def test_bidirectional_finite_differences(time_major, rng):
    model = bidir(rng, 3, np.float64)
    N, T = 3, 5
    X = rng.normal(size=(N, T, 3))
    lengths = np.array([5, 0, 2])
    s0 = tuple((rng.normal(size=(N, L.hidden_size)), rng.normal(size=(N, L.output_size)))
               for L in (model.forward_layer, model.backward_layer))
    ds = tuple((rng.normal(size=(N, L.hidden_size)), rng.normal(size=(N, L.output_size)))
               for L in (model.forward_layer, model.backward_layer))
    dY = rng.normal(size=(N, T, model.output_size))
    Xl, dYl = to_layout(X, time_major), to_layout(dY, time_major)

    def loss():
        Y, s = model(Xl, s0, lengths=lengths, time_major=time_major)
        return float(np.sum(Y * dYl)) + state_term(s[0], ds[0]) + state_term(s[1], ds[1])

    _, _, cache = model.forward(Xl, s0, lengths=lengths, time_major=time_major)
    dX, d0 = model.backward(dYl, cache, ds)
    analytic = dict(model.grads, X=dX, fc0=d0[0].c, fh0=d0[0].h, bc0=d0[1].c, bh0=d0[1].h)
    named = dict(model.params, X=Xl, fc0=s0[0][0], fh0=s0[0][1], bc0=s0[1][0], bh0=s0[1][1])
    check_fd(named, loss, analytic)

    g = ref.bidirectional_backward(
        dY, X, ref_params(model.forward_layer), ref_params(model.backward_layer), dstate=ds,
        initial_state=s0, lengths=lengths, fw_options=ref_options(model.forward_layer),
        bw_options=ref_options(model.backward_layer))
    for k, v in model.grads.items():
        np.testing.assert_allclose(v, g[k], **tol(np.float64), err_msg=k)
    np.testing.assert_allclose(to_layout(dX, time_major), g["X"], **tol(np.float64))


def stack(rng, dtype, n_threads=1, w=1):
    """Three layers (w scales the widths): clip, bidirectional with peepholes/projection,
    relu with a clipped projection."""
    return fl.MultiLSTM([
        randomize(fl.LSTM(3, 5 * w, dtype=dtype, n_threads=n_threads, cell_clip=0.6), rng),
        bidir(rng, 5 * w, dtype, n_threads, w),
        randomize(fl.LSTM(6 * w, 4 * w, dtype=dtype, n_threads=n_threads, proj_size=3 * w,
                          proj_clip=0.4, activation="relu"), rng),
    ])


def stack_states(model, rng, N):
    out = []
    for layer in model.layers:
        if isinstance(layer, fl.Bidirectional):
            out.append(tuple((rng.normal(size=(N, L.hidden_size)),
                              rng.normal(size=(N, L.output_size)))
                             for L in (layer.forward_layer, layer.backward_layer)))
        else:
            out.append((rng.normal(size=(N, layer.hidden_size)),
                        rng.normal(size=(N, layer.output_size))))
    return tuple(out)


def flatten_states(states):
    """[(name, array)] for a stack state (nested pairs of arrays)."""
    out = []
    for k, s in enumerate(states):
        pairs = s if isinstance(s[0], tuple) else (s,)
        for j, (c, h) in enumerate(pairs):
            out += [(f"s{k}.{j}.c", c), (f"s{k}.{j}.h", h)]
    return out


def test_multilstm_finite_differences(rng):
    model = stack(rng, np.float64)
    N, T = 3, 4
    X = rng.normal(size=(N, T, 3))
    lengths = np.array([4, 1, 0])
    s0 = stack_states(model, rng, N)
    ds = stack_states(model, rng, N)
    dY = rng.normal(size=(N, T, model.output_size))

    def loss():
        Y, s = model(X, s0, lengths=lengths)
        return float(np.sum(Y * dY)) + sum(np.sum(a * b) for (_, a), (_, b) in
                                           zip(flatten_states(s), flatten_states(ds)))

    Y, _, cache = model.forward(X, s0, lengths=lengths)
    dX, d0 = model.backward(dY, cache, ds)
    analytic = dict(model.grads, X=dX, **dict(flatten_states(d0)))
    named = dict(model.params, X=X, **dict(flatten_states(s0)))
    check_fd(named, loss, analytic)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_multilstm_matches_reference(dtype, n_threads, rng):
    model = stack(rng, dtype, n_threads, w=6)
    N, T = 12, 6
    if _threads.usable_cores() >= 2:
        assert model.layers[0]._chunks_for(N) == 2
    X = rng.normal(size=(N, T, 3))
    lengths = rng.integers(0, T + 1, N)
    s0 = stack_states(model, rng, N)
    ds = stack_states(model, rng, N)
    dY = rng.normal(size=(N, T, model.output_size))
    Xt, dYt = to_layout(X, True), to_layout(dY, True)
    _, _, cache = model.forward(Xt, s0, lengths=lengths, time_major=True)
    dX, d0 = model.backward(dYt, cache, ds)
    g = ref.stack_backward(dY, X, reference_stack(model), dstate=ds, initial_state=s0,
                           lengths=lengths)
    t = tol(dtype)
    for k, v in model.grads.items():
        scale = max(1.0, np.abs(g[k]).max())
        np.testing.assert_allclose(v, g[k], rtol=10 * t["rtol"], atol=10 * t["atol"] * scale,
                                   err_msg=k)
    np.testing.assert_allclose(to_layout(dX, True), g["X"], rtol=10 * t["rtol"],
                               atol=10 * t["atol"] * max(1.0, np.abs(g["X"]).max()))
    for (name, a), (_, b) in zip(flatten_states(d0), flatten_states(g["state0"])):
        np.testing.assert_allclose(a, b, rtol=10 * t["rtol"], atol=10 * t["atol"] * 10,
                                   err_msg=name)


@pytest.mark.parametrize("path", ["packed-rows", "packed-units"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("time_major,with_lengths", [(False, False), (True, True),
                                                     (False, True)])
def test_stack_cache_rows_written_by_the_kernel(monkeypatch, path, dtype, time_major,
                                                with_lengths):
    """For a large cache the packed kernel writes the training cache's h rows itself:
    each step's h where the next step reads it ([X | H_prev] of its layer, in walking
    order: reverse layers, lengths) and where the next LSTM of a stack takes it as input
    (size threshold 0 here); for a small one the copies after the kernel do it
    (threshold never reached).  A stack of plain LSTMs (a reverse relu layer and a
    partial last panel, H = 13, take the kernel's general cell code), every instruction
    set, against the reference's gradients."""
    from fastlstm import _forward, layers

    monkeypatch.setattr(layers, "_FORCE_PATH", path)
    rng = np.random.default_rng(5)
    model = fl.MultiLSTM([
        randomize(fl.LSTM(5, 16, dtype=dtype, n_threads=2), rng),
        randomize(fl.LSTM(16, 16, dtype=dtype, n_threads=2, reverse=True,
                          activation="relu"), rng),
        randomize(fl.LSTM(16, 13, dtype=dtype, n_threads=2), rng),
        randomize(fl.LSTM(13, 16, dtype=dtype, n_threads=2, reverse=True), rng)])
    N, T = 7, 6
    X = rng.normal(size=(N, T, 5))
    lengths = np.array([6, 0, 3, 1, 6, 5, 2]) if with_lengths else None
    s0 = stack_states(model, rng, N)
    ds = stack_states(model, rng, N)
    dY = rng.normal(size=(N, T, model.output_size))
    g = ref.stack_backward(dY, X, reference_stack(model), dstate=ds, initial_state=s0,
                           lengths=lengths)
    t = tol(dtype)
    old = _forward.stream_cache_min_bytes()
    try:
        for isa, min_bytes in itertools.product(range(_forward.packed_isa(-1) + 1),
                                                (0, 1 << 62)):
            _forward.packed_isa(isa)
            _forward.stream_cache_min_bytes(min_bytes)
            for step in range(2):          # fresh buffers, then the reused ones
                _, _, cache = model.forward(to_layout(X, time_major), s0, lengths=lengths,
                                            time_major=time_major)
                dX, d0 = model.backward(to_layout(dY, time_major), cache, ds)
                for k, v in model.grads.items():
                    scale = max(1.0, np.abs(g[k]).max())
                    np.testing.assert_allclose(v, g[k], rtol=10 * t["rtol"],
                                               atol=10 * t["atol"] * scale,
                                               err_msg=f"{k}, isa {isa}, step {step}")
                np.testing.assert_allclose(to_layout(dX, time_major), g["X"],
                                           rtol=10 * t["rtol"],
                                           atol=10 * t["atol"] * max(1.0, np.abs(g["X"]).max()))
    finally:
        _forward.stream_cache_min_bytes(old)
        _forward.packed_isa(-1)


# ---------------------------------------------------------------------------------------------
# gradient buffers and the API contract
# ---------------------------------------------------------------------------------------------

def test_grads_share_one_flat_buffer(rng):
    model = stack(rng, np.float32)
    assert model.flat_grads.shape == model.flat_params.shape
    assert set(model.grads) == set(model.params)
    for k, v in model.params.items():
        assert model.grads[k].shape == v.shape
        assert np.shares_memory(model.grads[k], model.flat_grads)
    # the layers' own grads live in the stack's buffer
    inner = model.layers[1].backward_layer
    assert np.shares_memory(inner.grads["U"], model.flat_grads)
    X = rng.normal(size=(2, 3, 3))
    Y, _, cache = model.forward(X)
    model.backward(np.ones_like(Y), cache)
    offset = 0
    for name, v in model.params.items():
        np.testing.assert_array_equal(model.flat_grads[offset:offset + v.size],
                                      model.grads[name].ravel())
        offset += v.size
    np.testing.assert_array_equal(model.grads["1.bw.U"], inner.grads["U"])
    assert model.zero_grad() is model
    assert not model.flat_grads.any() and not inner.grads["U"].any()


@pytest.mark.parametrize("kind", ["lstm", "bidirectional", "stack", "stack-bidir-first"])
def test_backward_without_input_grad(kind, rng):
    # input_grad=False: dX is None, every parameter and state gradient is the same
    if kind == "lstm":
        model = randomize(fl.LSTM(3, 5, peepholes=True, dtype=np.float64), rng)
    elif kind == "bidirectional":
        model = bidir(rng, 5, np.float64, 1, 1)
    elif kind == "stack":
        model = stack(rng, np.float64)
    else:
        model = fl.MultiLSTM([bidir(rng, 3, np.float64, 1, 1),
                              randomize(fl.LSTM(6, 4, dtype=np.float64), rng)])
    X = rng.normal(size=(4, 6, model.input_size))
    lengths = np.array([6, 2, 0, 5])
    results = []
    for input_grad in (True, False):
        Y, _, cache = model.forward(X, lengths=lengths)
        dY = np.random.default_rng(1).normal(size=Y.shape)
        dX, d0 = model.backward(dY, cache, input_grad=input_grad)
        assert (dX is None) == (not input_grad)
        results.append((model.flat_grads.copy(), d0))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    leaves = [_leaves(d0) for _, d0 in results]
    assert len(leaves[0]) == len(leaves[1]) > 0
    for a, b in zip(*leaves):
        np.testing.assert_array_equal(a, b)
    Y, _, cache = model.forward(X)
    with pytest.raises(TypeError, match="input_grad"):
        model.backward(np.ones_like(Y), cache, input_grad="no")


def _leaves(tree):
    if isinstance(tree, np.ndarray):
        return [tree]
    return [leaf for item in tree for leaf in _leaves(item)]


def test_backward_overwrites_grads(rng):
    layer = randomize(fl.LSTM(3, 4, dtype=np.float64), rng)
    X = rng.normal(size=(2, 3, 3))
    dY = rng.normal(size=(2, 3, 4))
    firsts = []
    for _ in range(2):
        _, _, cache = layer.forward(X)
        layer.backward(dY, cache)
        firsts.append(layer.flat_grads.copy())
    np.testing.assert_array_equal(firsts[0], firsts[1])


@pytest.mark.parametrize("kind", ["lstm", "stack", "bidirectional"])
def test_cache_independent_of_the_callers_arrays(kind, rng):
    # the cache holds its own copies: X and Y may change in place between forward and
    # backward (float64: X is then the caller's array, not a copy)
    if kind == "lstm":
        model = randomize(fl.LSTM(3, 4, dtype=np.float64), rng)
    elif kind == "stack":
        model = randomize(fl.MultiLSTM([fl.LSTM(3, 5, dtype=np.float64),
                                        fl.LSTM(5, 4, dtype=np.float64)]), rng)
    else:
        model = randomize(fl.Bidirectional(fl.LSTM(3, 2, dtype=np.float64),
                                           fl.LSTM(3, 2, dtype=np.float64)), rng)
    X = rng.normal(size=(3, 6, 3))
    dY = rng.normal(size=(3, 6, 4))
    Y, _, cache = model.forward(X)
    dX_want, _ = model.backward(dY, cache)
    want = model.flat_grads.copy()
    Y, _, cache = model.forward(X)
    X[...] = rng.normal(size=X.shape)
    Y[...] = rng.normal(size=Y.shape)
    dX, _ = model.backward(dY, cache)
    np.testing.assert_array_equal(model.flat_grads, want)
    np.testing.assert_array_equal(dX, dX_want)


def test_caller_arrays_untouched(rng):
    layer = randomize(fl.LSTM(3, 4, dtype=np.float64, proj_size=2), rng)
    X = rng.normal(size=(2, 3, 3))
    s0 = (rng.normal(size=(2, 4)), rng.normal(size=(2, 2)))
    dY = rng.normal(size=(2, 3, 2))
    ds = (rng.normal(size=(2, 4)), rng.normal(size=(2, 2)))
    copies = [a.copy() for a in (X, *s0, dY, *ds)]
    _, _, cache = layer.forward(X, s0)
    layer.backward(dY, cache, ds)
    for a, b in zip((X, *s0, dY, *ds), copies):
        np.testing.assert_array_equal(a, b)


def test_cache_errors(rng):
    layer = fl.LSTM(3, 4)
    other = fl.LSTM(3, 4)
    X = rng.normal(size=(2, 3, 3))
    Y, _, cache = layer.forward(X)
    with pytest.raises(TypeError, match="cache"):
        layer.backward(Y, {"gates": None})
    with pytest.raises(ValueError, match="another model"):
        other.backward(Y, cache)
    with pytest.raises(ValueError, match=r"dY must have the shape .*\(2, 3, 4\)"):
        layer.backward(Y[:, :2], cache)
    with pytest.raises(ValueError, match=r"dstate.c must have shape \(2, 4\)"):
        layer.backward(Y, cache, (np.zeros((3, 4)), np.zeros((2, 4))))
    with pytest.raises(TypeError, match="dY must hold real numbers"):
        layer.backward(Y.astype(complex), cache)
    layer.backward(Y, cache)                     # the failed calls did not consume it
    with pytest.raises(ValueError, match="already used"):
        layer.backward(Y, cache)


@pytest.mark.parametrize("change", ["proj_clip", "cell_clip", "activation",
                                    "recurrent_activation", "params", "inner_params"])
def test_cache_refused_after_the_model_changed(change, rng):
    """Options or parameters changed between forward and backward: the gradient would be
    of neither model (0.07-0.74 off), and a projection clip switched on made the kernel
    read a buffer the forward had not written (SIGSEGV)."""
    stack = fl.MultiLSTM([fl.LSTM(3, 4, proj_size=2, random_state=0),
                          fl.Bidirectional(fl.LSTM(2, 3, random_state=1),
                                           fl.LSTM(2, 3, random_state=2))])
    layer = stack.layers[0]
    X = rng.normal(size=(2, 5, 3))
    Y, _, cache = stack.forward(X)
    before = stack.flat_grads.copy()
    if change == "params":
        layer.U *= 2
    elif change == "inner_params":
        stack.layers[1].backward_layer.b[0] += 1e-6
    else:
        setattr(layer, change, {"proj_clip": 0.5, "cell_clip": 0.05, "activation": "relu",
                                "recurrent_activation": "hard_sigmoid"}[change])
    match = r"parameters of layers\[1\].backward_layer" if change == "inner_params" else \
        r"parameters of layers\[0\]" if change == "params" else \
        rf"{change} of layers\[0\] changed"
    with pytest.raises(ValueError, match=match):
        stack.backward(np.ones_like(Y), cache)
    np.testing.assert_array_equal(stack.flat_grads, before)
    single = fl.LSTM(3, 4, random_state=0)
    Y, _, cache = single.forward(X)
    kept = single.flat_params[0]
    single.flat_params[0] += 1.0
    with pytest.raises(ValueError, match="parameters of the layer changed"):
        single.backward(np.ones_like(Y), cache)
    single.flat_params[0] = kept                 # back as it was: the cache serves again
    single.backward(np.ones_like(Y), cache)


def test_cache_keeps_its_own_lengths(rng):
    """The cache held the caller's int64 lengths: changing them before backward gave
    wrong gradients, or a crash for values beyond T."""
    layer = fl.LSTM(3, 4, random_state=0)
    X = rng.normal(size=(3, 5, 3))
    L = np.array([5, 2, 0], np.int64)
    Y, _, cache = layer.forward(X, lengths=L)
    want = layer.backward(np.ones_like(Y), layer.forward(X, lengths=L.copy())[2])[0]
    L[:] = 100000
    got = layer.backward(np.ones_like(Y), cache)[0]
    np.testing.assert_array_equal(got, want)


def test_multilstm_dstate_errors(rng):
    model = stack(rng, np.float32)
    Y, _, cache = model.forward(rng.normal(size=(2, 3, 3)))
    with pytest.raises(TypeError, match="dstate must be a tuple with one state per layer"):
        model.backward(Y, cache, dstate=(None,))
    with pytest.raises(ValueError, match=r"dstate\[1\]\[0\].c"):
        model.backward(Y, cache, dstate=(None, ((np.zeros((2, 3)), np.zeros((2, 4))), None),
                                         None))


# ---------------------------------------------------------------------------------------------
# a real framework
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_torch_autograd(bidirectional, rng):
    """Gradients of a 2-layer stack equal torch.nn.LSTM's autograd (same gate order i,f,g,o)."""
    torch = pytest.importorskip("torch")
    I, H, N, T = 4, 6, 5, 7
    net = torch.nn.LSTM(I, H, num_layers=2, batch_first=True, bidirectional=bidirectional,
                        dtype=torch.float64)
    D = 2 if bidirectional else 1
    layers = []
    for k in range(2):
        dirs = []
        for d, sfx in enumerate(["", "_reverse"][:D]):
            layer = fl.LSTM(I if k == 0 else D * H, H, dtype=np.float64)
            get = lambda n: getattr(net, f"{n}_l{k}{sfx}").detach().numpy()  # noqa: E731
            layer.W = get("weight_ih").T
            layer.U = get("weight_hh").T
            layer.b = get("bias_ih") + get("bias_hh")
            dirs.append(layer)
        layers.append(fl.Bidirectional(*dirs) if bidirectional else dirs[0])
    model = fl.MultiLSTM(layers)
    X = rng.normal(size=(N, T, I))
    dY = rng.normal(size=(N, T, D * H))
    Xt = torch.tensor(X, requires_grad=True)
    Yt, _ = net(Xt)
    Yt.backward(torch.tensor(dY))
    Y, _, cache = model.forward(X)
    np.testing.assert_allclose(Y, Yt.detach().numpy(), rtol=1e-12, atol=1e-13)
    dX, _ = model.backward(dY, cache)
    np.testing.assert_allclose(dX, Xt.grad.numpy(), rtol=1e-11, atol=1e-12)
    for k in range(2):
        for d, sfx in enumerate(["", "_reverse"][:D]):
            pre = f"{k}." + (("fw.", "bw.")[d] if bidirectional else "")
            g = lambda n: getattr(net, f"{n}_l{k}{sfx}").grad.numpy()  # noqa: E731
            np.testing.assert_allclose(model.grads[pre + "W"], g("weight_ih").T, rtol=1e-11,
                                       atol=1e-12)
            np.testing.assert_allclose(model.grads[pre + "U"], g("weight_hh").T, rtol=1e-11,
                                       atol=1e-12)
            np.testing.assert_allclose(model.grads[pre + "b"], g("bias_ih"), rtol=1e-11,
                                       atol=1e-12)
            np.testing.assert_allclose(g("bias_ih"), g("bias_hh"))


# ---------------------------------------------------------------------------------------------
# the step products (packing-free, and with U packed once), on every instruction set
# this machine runs
# ---------------------------------------------------------------------------------------------

@pytest.fixture(params=["baseline", "avx2", "avx512"])
def isa(request):
    from fastlstm import _backward
    used = _backward.set_isa(request.param)
    try:
        if used != request.param:
            pytest.skip(f"this CPU cannot run the {request.param} path")
        yield used
    finally:
        _backward.set_isa("auto")


@pytest.mark.parametrize("product", ["dot_nt", "dot_nt_packed"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_product_kernel(isa, dtype, product, rng):
    # dot_nt: packing-free; dot_nt_packed: U packed once (row tiles of 1..6 rows, a partial
    # last panel of output units); both against float64 NumPy
    from fastlstm import _backward
    for m, n, K in [(1, 1, 1), (3, 5, 7), (4, 16, 64), (7, 3, 9), (8, 33, 130), (5, 2, 0),
                    (5, 17, 9), (6, 16, 64), (13, 40, 130), (2, 33, 4)]:
        A = rng.normal(size=(m, K)).astype(dtype)
        B = rng.normal(size=(n, K)).astype(dtype)
        C = np.full((m, n), np.nan, dtype)
        getattr(_backward, product)(A, B, C)
        np.testing.assert_allclose(C, A.astype(np.float64) @ B.T.astype(np.float64),
                                   **tol(dtype), err_msg=str((m, n, K)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_on_each_isa(isa, dtype, rng):
    # 6 rows, one block: the step products use the packed kernel on AVX2, the
    # packing-free kernel on the baseline instruction set
    opts = {"peepholes": True, "proj_size": 5, "proj_clip": 0.3, "lengths": "mixed",
            "reverse": True}
    layer, X, s0, lengths, dY, ds = make_case(opts, rng, dtype, N=6, T=5, I=4, H=6)
    _, _, cache = layer.forward(X, s0, lengths=lengths, reverse=True)
    dX, d0 = layer.backward(dY, cache, ds)
    g = reference_grads(layer, X, s0, lengths, dY, ds, True)
    assert_grads_close(dict(layer.grads, X=dX, c0=d0.c, h0=d0.h), g, dtype)


@pytest.mark.parametrize("H", [16, 13])
@pytest.mark.parametrize("path", ["packed-rows", "packed-units"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_training_cache(monkeypatch, path, dtype, H):
    """The packed kernel writes a training cache above its size threshold with
    non-temporal stores (rows of whole vectors, 64-byte aligned buffers) and one below it
    with normal stores (threshold 0, then never reached): the same values either way, on
    every instruction set, and the reference's gradients.  H = 13 gives rows that are not
    vector-aligned (normal stores inside a streamed cache)."""
    from fastlstm import _forward, _training, layers

    monkeypatch.setattr(layers, "_FORCE_PATH", path)
    opts = {"lengths": "mixed", "reverse": True}
    old = _forward.stream_cache_min_bytes()
    try:
        for isa in range(_forward.packed_isa(-1) + 1):
            _forward.packed_isa(isa)
            runs = []
            for min_bytes in (0, 1 << 62):
                _forward.stream_cache_min_bytes(min_bytes)
                layer, X, s0, lengths, dY, ds = make_case(
                    opts, np.random.default_rng(11), dtype, N=7, T=6, I=5, H=H, n_threads=2)
                _, _, cache = layer.forward(X, s0, lengths=lengths, reverse=True)
                for key in ("gates", "c"):
                    assert _training._address(cache.parts[key]) % 64 == 0
                saved = [cache.parts[key].copy() for key in ("gates", "c")]
                dX, d0 = layer.backward(dY, cache, ds)
                runs.append(saved + [layer.flat_grads.copy(), dX, d0.c, d0.h])
            for a, b in zip(*runs):
                np.testing.assert_array_equal(a, b)
            g = reference_grads(layer, X, s0, lengths, dY, ds, True)
            assert_grads_close(dict(layer.grads, X=dX, c0=d0.c, h0=d0.h), g, dtype)
    finally:
        _forward.stream_cache_min_bytes(old)
        _forward.packed_isa(-1)


def test_training_buffers_reused_between_steps():
    """A finished backward hands its cache's buffers back to the layer, and the next
    training forward reuses them (no fresh pages to fault in): every step still gives the
    gradients of a fresh model, with lengths (padded rows zeroed again), reverse layers and
    stacks; caches used out of order stay correct; pickles leave the buffers out."""
    import pickle

    rng = np.random.default_rng(3)
    N, T, I, H = 5, 6, 4, 7

    def make():
        return fl.MultiLSTM([
            fl.Bidirectional(fl.LSTM(I, H, random_state=1), fl.LSTM(I, H, random_state=2)),
            fl.LSTM(2 * H, H, random_state=3, peepholes=True, cell_clip=0.5),
            fl.LSTM(H, 3, random_state=4, proj_size=2, proj_clip=0.4)])

    def grads_of(model, X, L, dY):
        _, _, cache = model.forward(X, lengths=L)
        dX, _ = model.backward(dY, cache)
        return [dX.copy(), model.flat_grads.copy()]

    def address(a):
        return a.__array_interface__["data"][0]

    model = make()
    seen = {}
    for step in range(4):
        X = rng.standard_normal((N, T, I))
        L = rng.integers(0, T + 1, N) if step % 2 else None
        dY = rng.standard_normal((N, T, 2))
        got = grads_of(model, X, L, dY)
        want = grads_of(make(), X, L, dY)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        layer = model.layers[1]
        bufs = layer.__dict__.get("_train_buffers", {})
        assert {"gates", "c", "xh", "dX"} <= set(bufs)
        if step:
            assert all(address(bufs[k]) == seen[k] for k in ("gates", "c", "xh", "dX"))
        seen = {k: address(v) for k, v in bufs.items()}
    # two caches alive at once, consumed in reverse order
    X1, X2 = rng.standard_normal((2, N, T, I))
    dY = rng.standard_normal((N, T, 2))
    _, _, c1 = model.forward(X1)
    _, _, c2 = model.forward(X2)
    d2 = model.backward(dY, c2)[0].copy()
    d1 = model.backward(dY, c1)[0].copy()
    fresh = make()
    np.testing.assert_array_equal(d1, fresh.backward(dY, fresh.forward(X1)[2])[0])
    np.testing.assert_array_equal(d2, fresh.backward(dY, fresh.forward(X2)[2])[0])
    clone = pickle.loads(pickle.dumps(model))
    assert all("_train_buffers" not in layer.__dict__ for layer in clone.layers)
    assert len(pickle.dumps(model)) < 2 * len(pickle.dumps(make()))
