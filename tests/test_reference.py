"""Tests of the NumPy reference (``fastlstm.reference``) itself.

The backward pass is checked against central finite differences of the reference forward in
float64, for every gradient it returns, over the options the forward supports.  The loss is
a random linear functional of every output: L = sum(dY*Y) + sum(dc*c_T) + sum(dh*h_T).
"""

import numpy as np
import pytest

from conftest import numeric_grad, rel_err

from fastlstm import reference as ref

RTOL = 1e-6


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def make_params(rng, I, H, Hout=None, *, peepholes=False, projection=False, scale=0.8,
                dtype=np.float64):
    Hout = H if not projection else Hout
    p = {
        "W": rng.normal(0, scale, (I, 4 * H)),
        "U": rng.normal(0, scale, (Hout, 4 * H)),
        "b": rng.normal(0, scale, 4 * H),
    }
    if peepholes:
        p["peepholes"] = rng.normal(0, scale, (3, H))
    if projection:
        p["P"] = rng.normal(0, scale, (H, Hout))
    return {k: v.astype(dtype) for k, v in p.items()}


def check_grads(named, loss, analytic, *, must_be_nonzero=True):
    """Compare every analytic gradient with finite differences.

    named: dict name -> array the loss reads (perturbed in place); analytic: same names.
    """
    assert set(named) == set(analytic), (sorted(named), sorted(analytic))
    for name, arr in named.items():
        ana = analytic[name]
        assert ana.shape == arr.shape, name
        assert ana.dtype == arr.dtype, name
        num = numeric_grad(loss, arr)
        if must_be_nonzero:
            assert np.abs(num).max() > 0, f"{name}: gradient is identically zero, test is void"
        err = rel_err(ana, num)
        assert err <= RTOL, f"{name}: relative error {err:.3g}"


def state_loss_terms(state, dstate):
    return sum(np.sum(d * s) for d, s in zip(dstate, state))


# ---------------------------------------------------------------------------------------------
# lstm_backward against finite differences
# ---------------------------------------------------------------------------------------------

# (name, dict of options).  Options consumed here: peepholes, projection, cell_clip,
# proj_clip, activation, recurrent_activation, reverse, lengths ("mixed" = [0, T, 2]),
# initial_state (bool), dstate (bool).
CASES = [
    ("plain", {}),
    ("no_initial_state", {"initial_state": False}),
    ("no_dstate", {"dstate": False}),
    ("peepholes", {"peepholes": True}),
    ("cell_clip", {"cell_clip": 0.4}),
    ("cell_clip_peepholes", {"cell_clip": 0.4, "peepholes": True}),
    ("projection", {"projection": True}),
    ("projection_clip", {"projection": True, "proj_clip": 0.3}),
    ("relu", {"activation": "relu"}),
    ("sigmoid_act", {"activation": "sigmoid"}),
    ("linear_act", {"activation": "linear"}),
    ("hard_sigmoid", {"recurrent_activation": "hard_sigmoid"}),
    ("hard_sigmoid_keras2", {"recurrent_activation": "hard_sigmoid_keras2"}),
    ("reverse", {"reverse": True}),
    ("lengths", {"lengths": "mixed"}),
    ("lengths_reverse", {"lengths": "mixed", "reverse": True}),
    ("lengths_full", {"lengths": "full"}),
    ("everything", {"peepholes": True, "projection": True, "cell_clip": 0.4, "proj_clip": 0.3,
                    "lengths": "mixed", "reverse": True}),
    ("everything_keras2_relu", {"peepholes": True, "projection": True, "cell_clip": 0.5,
                                "proj_clip": 0.3, "lengths": "mixed",
                                "recurrent_activation": "hard_sigmoid_keras2",
                                "activation": "relu"}),
]


def build_case(opts, seed, N=3, T=4, I=3, H=3, Hout=2):
    rng = np.random.default_rng(seed)
    params = make_params(rng, I, H, Hout, peepholes=opts.get("peepholes", False),
                         projection=opts.get("projection", False))
    Ho = params["U"].shape[0]
    X = rng.normal(0, 1, (N, T, I))
    # the gradient w.r.t. the initial state is always checked; with no initial state given
    # the loss reads zeros (the relu cases always get a random one: c = 0 is a relu kink)
    if opts.get("initial_state", True):
        c0, h0 = rng.normal(0, 1, (N, H)), rng.normal(0, 1, (N, Ho))
    else:
        c0, h0 = np.zeros((N, H)), np.zeros((N, Ho))
    lengths = {"mixed": np.array([0, T, 2][:N]), "full": np.full(N, T), None: None}[
        opts.get("lengths")]
    dY = rng.normal(0, 1, (N, T, Ho))
    dstate = (rng.normal(0, 1, (N, H)), rng.normal(0, 1, (N, Ho))) if opts.get(
        "dstate", True) else None
    fw_opts = {k: opts[k] for k in ("cell_clip", "proj_clip", "activation",
                                    "recurrent_activation", "reverse") if k in opts}
    return params, X, (c0, h0), lengths, dY, dstate, fw_opts


@pytest.mark.parametrize("name,opts", CASES, ids=[c[0] for c in CASES])
def test_lstm_backward_finite_differences(name, opts):
    params, X, (c0, h0), lengths, dY, dstate, fw_opts = build_case(opts, seed=1234)
    pass_init = opts.get("initial_state", True)

    # the loss always reads (c0, h0) (zeros when no initial state is given to the backward,
    # which must then give the gradient w.r.t. the implicit zero state)
    def forward():
        return ref.lstm_forward(X, params, initial_state=(c0, h0), lengths=lengths,
                                **fw_opts)

    def loss():
        Y, state = forward()
        out = np.sum(dY * Y)
        if dstate is not None:
            out += state_loss_terms(state, dstate)
        return out

    # the clips under test must actually be active on this data
    for key in ("cell_clip", "proj_clip"):
        if key in fw_opts:
            unclipped = dict(fw_opts, **{key: None})
            Y2, _ = ref.lstm_forward(X, params, initial_state=(c0, h0), lengths=lengths,
                                     **unclipped)
            Y1, _ = forward()
            assert not np.allclose(Y1, Y2), f"{key} never active"

    g = ref.lstm_backward(dY, X, params, dstate=dstate,
                          initial_state=(c0, h0) if pass_init else None, lengths=lengths,
                          **fw_opts)
    assert set(g) == set(params) | {"X", "state0"}
    named = dict(params, X=X, c0=c0, h0=h0)
    analytic = {k: g[k] for k in params}
    analytic.update(X=g["X"], c0=g["state0"][0], h0=g["state0"][1])
    check_grads(named, loss, analytic)


@pytest.mark.parametrize("rec", ["sigmoid", "hard_sigmoid", "hard_sigmoid_keras2"])
@pytest.mark.parametrize("act", ["tanh", "relu", "sigmoid", "linear"])
def test_lstm_backward_activation_grid(act, rec):
    """Every activation pair, on a case with peepholes (reaches every derivative)."""
    opts = {"activation": act, "recurrent_activation": rec, "peepholes": True}
    params, X, (c0, h0), lengths, dY, dstate, fw_opts = build_case(opts, seed=7, T=3)

    def loss():
        Y, state = ref.lstm_forward(X, params, initial_state=(c0, h0), **fw_opts)
        return np.sum(dY * Y) + state_loss_terms(state, dstate)

    g = ref.lstm_backward(dY, X, params, dstate=dstate, initial_state=(c0, h0), **fw_opts)
    named = dict(params, X=X, c0=c0, h0=h0)
    analytic = {k: g[k] for k in params}
    analytic.update(X=g["X"], c0=g["state0"][0], h0=g["state0"][1])
    check_grads(named, loss, analytic)


def test_recurrent_activation_saturates_in_grid_data():
    """The hard-sigmoid FD checks are only meaningful if some gates saturate."""
    params, X, *_ = build_case({}, seed=7, T=3)
    z = X.reshape(-1, X.shape[-1]) @ params["W"] + params["b"]
    assert np.any(np.abs(z) > 3.0) and np.any(np.abs(z) < 2.5)


# ---------------------------------------------------------------------------------------------
# exact properties of the backward
# ---------------------------------------------------------------------------------------------

def test_zero_length_row_passes_state_gradient_through():
    params, X, s0, _, dY, dstate, _ = build_case({"peepholes": True}, seed=3)
    lengths = np.array([0, 4, 2])
    for reverse in (False, True):
        g = ref.lstm_backward(dY, X, params, dstate=dstate, initial_state=s0, lengths=lengths,
                              reverse=reverse)
        np.testing.assert_array_equal(g["state0"][0][0], dstate[0][0])
        np.testing.assert_array_equal(g["state0"][1][0], dstate[1][0])
        assert np.all(g["X"][0] == 0)
        # padded steps of the length-2 row get no input gradient
        assert np.all(g["X"][2, 2:] == 0)
        assert np.all(g["X"][2, :2] != 0)


def test_all_rows_zero_length():
    params, X, s0, _, dY, dstate, _ = build_case({}, seed=4)
    g = ref.lstm_backward(dY, X, params, dstate=dstate, initial_state=s0, lengths=[0, 0, 0])
    np.testing.assert_array_equal(g["state0"][0], dstate[0])
    np.testing.assert_array_equal(g["state0"][1], dstate[1])
    for k in ("X", "W", "U", "b"):
        assert np.all(g[k] == 0)


def test_lengths_none_equals_full_lengths():
    params, X, s0, _, dY, dstate, _ = build_case({"projection": True}, seed=5)
    for reverse in (False, True):
        g1 = ref.lstm_backward(dY, X, params, dstate=dstate, initial_state=s0, reverse=reverse)
        g2 = ref.lstm_backward(dY, X, params, dstate=dstate, initial_state=s0, reverse=reverse,
                               lengths=np.full(X.shape[0], X.shape[1]))
        for k in g1:
            if k == "state0":
                for a, b in zip(g1[k], g2[k]):
                    np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_array_equal(g1[k], g2[k])


def test_padded_dY_is_ignored():
    params, X, s0, _, dY, dstate, _ = build_case({}, seed=6)
    lengths = np.array([1, 4, 2])
    g1 = ref.lstm_backward(dY, X, params, dstate=dstate, initial_state=s0, lengths=lengths)
    dY2 = dY.copy()
    for b, L in enumerate(lengths):
        dY2[b, L:] = np.nan
    g2 = ref.lstm_backward(dY2, X, params, dstate=dstate, initial_state=s0, lengths=lengths)
    for k in ("X", "W", "U", "b"):
        np.testing.assert_array_equal(g1[k], g2[k])


def test_backward_float32():
    """float32 parameters give float32 gradients close to the float64 ones."""
    params, X, s0, lengths, dY, dstate, fw = build_case(
        {"peepholes": True, "projection": True, "lengths": "mixed"}, seed=8)
    g64 = ref.lstm_backward(dY, X, params, dstate=dstate, initial_state=s0, lengths=lengths)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    g32 = ref.lstm_backward(dY.astype(np.float32), X.astype(np.float32), p32,
                            dstate=[d.astype(np.float32) for d in dstate],
                            initial_state=[s.astype(np.float32) for s in s0], lengths=lengths)
    for k in params:
        assert g32[k].dtype == np.float32
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-4, atol=1e-4)
    assert g32["X"].dtype == np.float32
    np.testing.assert_allclose(g32["X"], g64["X"], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# bidirectional and stacks against finite differences
# ---------------------------------------------------------------------------------------------

def _flatten_state(prefix, state, out):
    """Name the arrays of a (possibly nested) state: prefix.c, prefix.h or prefix.fw.c ..."""
    if isinstance(state[0], np.ndarray):
        out[f"{prefix}.c"], out[f"{prefix}.h"] = state
    else:
        _flatten_state(f"{prefix}.fw", state[0], out)
        _flatten_state(f"{prefix}.bw", state[1], out)


def _state_loss(state, dstate):
    if isinstance(state[0], np.ndarray):
        return state_loss_terms(state, dstate)
    return _state_loss(state[0], dstate[0]) + _state_loss(state[1], dstate[1])


def _random_state(rng, N, H, Hout):
    return (rng.normal(0, 1, (N, H)), rng.normal(0, 1, (N, Hout)))


@pytest.mark.parametrize("lengths", [None, [4, 0, 2]])
def test_bidirectional_backward_finite_differences(lengths):
    rng = np.random.default_rng(11)
    N, T, I = 3, 4, 3
    fwp = make_params(rng, I, 3, peepholes=True)
    bwp = make_params(rng, I, 3, 2, projection=True)
    fwo = {"cell_clip": 0.5}
    bwo = {"proj_clip": 0.4, "recurrent_activation": "hard_sigmoid"}
    X = rng.normal(0, 1, (N, T, I))
    s0 = (_random_state(rng, N, 3, 3), _random_state(rng, N, 3, 2))
    ds = (_random_state(rng, N, 3, 3), _random_state(rng, N, 3, 2))
    dY = rng.normal(0, 1, (N, T, 5))

    def loss():
        Y, state = ref.bidirectional_forward(X, fwp, bwp, initial_state=s0, lengths=lengths,
                                             fw_options=fwo, bw_options=bwo)
        assert Y.shape == dY.shape
        return np.sum(dY * Y) + _state_loss(state, ds)

    g = ref.bidirectional_backward(dY, X, fwp, bwp, dstate=ds, initial_state=s0,
                                   lengths=lengths, fw_options=fwo, bw_options=bwo)
    expected_keys = {"X", "state0"} | {f"fw.{k}" for k in fwp} | {f"bw.{k}" for k in bwp}
    assert set(g) == expected_keys
    named = {"X": X}
    named.update({f"fw.{k}": v for k, v in fwp.items()})
    named.update({f"bw.{k}": v for k, v in bwp.items()})
    _flatten_state("s0", s0, named)
    analytic = {k: v for k, v in g.items() if k != "state0"}
    _flatten_state("s0", g["state0"], analytic)
    check_grads(named, loss, analytic)


def _stack_layers(rng, I, kind):
    if kind == "bidir_then_lstm":
        layers = [
            ("bidirectional", (make_params(rng, I, 3, peepholes=True), {"cell_clip": 0.5}),
             (make_params(rng, I, 2), {"activation": "relu"})),
            ("lstm", make_params(rng, 5, 3, 2, projection=True), {"proj_clip": 0.4}),
        ]
        sizes = [((3, 3), (2, 2)), (3, 2)]
    else:
        layers = [
            ("lstm", make_params(rng, I, 3, 2, projection=True, peepholes=True), None),
            ("bidirectional", (make_params(rng, 2, 2), {}),
             (make_params(rng, 2, 3), {"recurrent_activation": "hard_sigmoid_keras2"})),
        ]
        sizes = [(3, 2), ((2, 2), (3, 3))]
    return layers, sizes


def _stack_states(rng, N, sizes):
    out = []
    for s in sizes:
        if isinstance(s[0], tuple):
            out.append((_random_state(rng, N, *s[0]), _random_state(rng, N, *s[1])))
        else:
            out.append(_random_state(rng, N, *s))
    return tuple(out)


def _layer_param_dicts(layers):
    """name -> params dict, named as stack_backward names them."""
    out = {}
    for k, item in enumerate(layers):
        if item[0] == "lstm":
            out[f"{k}"] = item[1]
        else:
            out[f"{k}.fw"] = item[1][0]
            out[f"{k}.bw"] = item[2][0]
    return out


@pytest.mark.parametrize("lengths", [None, [4, 1, 0]])
@pytest.mark.parametrize("kind", ["bidir_then_lstm", "lstm_then_bidir"])
def test_stack_backward_finite_differences(kind, lengths):
    rng = np.random.default_rng(21)
    N, T, I = 3, 4, 3
    layers, sizes = _stack_layers(rng, I, kind)
    X = rng.normal(0, 1, (N, T, I))
    s0 = _stack_states(rng, N, sizes)
    ds = _stack_states(rng, N, sizes)
    Y, _ = ref.stack_forward(X, layers, initial_state=s0, lengths=lengths)
    dY = rng.normal(0, 1, Y.shape)

    def loss():
        Y, state = ref.stack_forward(X, layers, initial_state=s0, lengths=lengths)
        return np.sum(dY * Y) + sum(_state_loss(s, d) for s, d in zip(state, ds))

    g = ref.stack_backward(dY, X, layers, dstate=ds, initial_state=s0, lengths=lengths)
    named = {"X": X}
    for prefix, p in _layer_param_dicts(layers).items():
        named.update({f"{prefix}.{k}": v for k, v in p.items()})
    assert set(g) == set(named) | {"state0"}
    assert len(g["state0"]) == len(layers)
    for k, s in enumerate(s0):
        _flatten_state(f"s0.{k}", s, named)
    analytic = {k: v for k, v in g.items() if k != "state0"}
    for k, s in enumerate(g["state0"]):
        _flatten_state(f"s0.{k}", s, analytic)
    check_grads(named, loss, analytic)


def test_stack_backward_without_states():
    """dstate / initial_state None mean zeros."""
    rng = np.random.default_rng(22)
    layers, sizes = _stack_layers(rng, 3, "bidir_then_lstm")
    X = rng.normal(0, 1, (2, 3, 3))
    Y, _ = ref.stack_forward(X, layers, lengths=[3, 2])
    dY = rng.normal(0, 1, Y.shape)
    zeros = tuple(
        tuple(tuple(np.zeros((2, n)) for n in sub) for sub in s) if isinstance(s[0], tuple)
        else tuple(np.zeros((2, n)) for n in s) for s in sizes)
    g1 = ref.stack_backward(dY, X, layers, lengths=[3, 2])
    g2 = ref.stack_backward(dY, X, layers, dstate=zeros, initial_state=zeros, lengths=[3, 2])
    for k in g1:
        if k != "state0":
            np.testing.assert_array_equal(g1[k], g2[k])
    assert np.abs(g1["X"]).max() > 0


# ---------------------------------------------------------------------------------------------
# select semantics: NaN / Inf in the padding changes nothing
# ---------------------------------------------------------------------------------------------

def _poison(X, lengths, rng):
    Xp = X.copy()
    for b, L in enumerate(lengths):
        pad = Xp[b, L:]
        pad[...] = rng.choice([np.nan, np.inf, -np.inf], size=pad.shape)
    return Xp


def _assert_trees_equal(a, b):
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _assert_trees_equal(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_trees_equal(x, y)
    else:
        assert np.all(np.isfinite(a))
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("reverse", [False, True])
def test_nonfinite_padding_does_not_leak_lstm(reverse):
    rng = np.random.default_rng(31)
    params, X, s0, _, dY, dstate, _ = build_case({"peepholes": True, "projection": True},
                                                 seed=31)
    lengths = np.array([0, 4, 2])
    Xp = _poison(X, lengths, rng)
    assert not np.all(np.isfinite(Xp))
    kw = dict(initial_state=s0, lengths=lengths, reverse=reverse, cell_clip=0.7)
    with np.errstate(all="raise"):
        out_clean = ref.lstm_forward(X, params, **kw)
        out_poison = ref.lstm_forward(Xp, params, **kw)
        g_clean = ref.lstm_backward(dY, X, params, dstate=dstate, **kw)
        g_poison = ref.lstm_backward(dY, Xp, params, dstate=dstate, **kw)
    _assert_trees_equal(out_clean, out_poison)
    _assert_trees_equal(g_clean, g_poison)


def test_nonfinite_padding_does_not_leak_stack():
    rng = np.random.default_rng(32)
    layers, sizes = _stack_layers(rng, 3, "bidir_then_lstm")
    X = rng.normal(0, 1, (3, 4, 3))
    lengths = np.array([4, 0, 1])
    Xp = _poison(X, lengths, rng)
    s0 = _stack_states(rng, 3, sizes)
    ds = _stack_states(rng, 3, sizes)
    with np.errstate(all="raise"):
        Y, st = ref.stack_forward(X, layers, initial_state=s0, lengths=lengths)
        Yp, stp = ref.stack_forward(Xp, layers, initial_state=s0, lengths=lengths)
        dY = rng.normal(0, 1, Y.shape)
        g = ref.stack_backward(dY, X, layers, dstate=ds, initial_state=s0, lengths=lengths)
        gp = ref.stack_backward(dY, Xp, layers, dstate=ds, initial_state=s0, lengths=lengths)
    _assert_trees_equal((Y, st), (Yp, stp))
    _assert_trees_equal(g, gp)


# ---------------------------------------------------------------------------------------------
# forward semantics that the golden files do not pin down
# ---------------------------------------------------------------------------------------------

def test_forward_lengths_semantics():
    params, X, s0, _, _, _, _ = build_case({}, seed=41)
    lengths = np.array([0, 4, 2])
    for reverse in (False, True):
        Y, (c, h) = ref.lstm_forward(X, params, initial_state=s0, lengths=lengths,
                                     reverse=reverse)
        # padded outputs are 0, a length-0 row keeps its initial state
        assert np.all(Y[0] == 0) and np.all(Y[2, 2:] == 0)
        np.testing.assert_array_equal(c[0], s0[0][0])
        np.testing.assert_array_equal(h[0], s0[1][0])
        # a row of length L equals running that row's prefix alone
        Y2, (c2, h2) = ref.lstm_forward(X[2:3, :2], params,
                                        initial_state=(s0[0][2:3], s0[1][2:3]),
                                        reverse=reverse)
        np.testing.assert_allclose(Y[2:3, :2], Y2, rtol=0, atol=1e-14)
        np.testing.assert_allclose(c[2:3], c2, rtol=0, atol=1e-14)
        np.testing.assert_allclose(h[2:3], h2, rtol=0, atol=1e-14)


def test_forward_reverse_equals_flipped_forward():
    params, X, s0, _, _, _, _ = build_case({"peepholes": True}, seed=42)
    Yr, sr = ref.lstm_forward(X, params, initial_state=s0, reverse=True)
    Yf, sf = ref.lstm_forward(X[:, ::-1], params, initial_state=s0)
    np.testing.assert_allclose(Yr, Yf[:, ::-1], rtol=0, atol=1e-14)
    np.testing.assert_allclose(sr[0], sf[0], rtol=0, atol=1e-14)
    np.testing.assert_allclose(sr[1], sf[1], rtol=0, atol=1e-14)
