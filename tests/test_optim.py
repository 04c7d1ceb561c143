"""Optimisers (fastlstm.optim): against torch.optim when installed, and against the update
rules written out element by element in plain Python (an independent oracle)."""

import math

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import optim

N_STEPS = 5


def scalar_sgd(p, grads, lr, momentum, nesterov, wd):
    p = list(p)
    buf = [0.0] * len(p)
    for g in grads:
        for i in range(len(p)):
            d = g[i] + wd * p[i]
            if momentum:
                buf[i] = momentum * buf[i] + d
                d = d + momentum * buf[i] if nesterov else buf[i]
            p[i] -= lr * d
    return np.array(p)


def scalar_adam(p, grads, lr, b1, b2, eps, wd, decoupled):
    p = list(p)
    m = [0.0] * len(p)
    v = [0.0] * len(p)
    for t, g in enumerate(grads, start=1):
        for i in range(len(p)):
            gi = g[i]
            if decoupled:
                p[i] *= 1 - lr * wd
            else:
                gi += wd * p[i]
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            mhat = m[i] / (1 - b1 ** t)
            vhat = v[i] / (1 - b2 ** t)
            p[i] -= lr * mhat / (math.sqrt(vhat) + eps)
    return np.array(p)


SGD_CASES = [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9, nesterov=True),
             dict(lr=0.05, momentum=0.5, weight_decay=0.1),
             dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)]
ADAM_CASES = [("Adam", dict(lr=0.01)), ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6)),
              ("Adam", dict(lr=0.01, weight_decay=0.1)),
              ("Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
              ("AdamW", dict(lr=0.01)), ("AdamW", dict(lr=0.01, weight_decay=0.3))]


def run(opt_cls, kwargs, p0, grads, dtype=np.float64):
    p = p0.astype(dtype)
    g = np.zeros_like(p)
    opt = opt_cls([(p, g)], **kwargs)
    for gs in grads:
        g[...] = gs
        opt.step()
    return p


@pytest.fixture
def problem(rng):
    return rng.normal(size=17), [rng.normal(size=17) for _ in range(N_STEPS)]


@pytest.mark.parametrize("kw", SGD_CASES, ids=str)
def test_sgd_rule(kw, problem):
    p0, grads = problem
    want = scalar_sgd(p0, grads, kw["lr"], kw.get("momentum", 0), kw.get("nesterov", False),
                      kw.get("weight_decay", 0))
    np.testing.assert_allclose(run(optim.SGD, kw, p0, grads), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,kw", ADAM_CASES, ids=str)
def test_adam_rule(name, kw, problem):
    p0, grads = problem
    cls = getattr(optim, name)
    b1, b2 = kw.get("betas", (0.9, 0.999))
    decoupled = name == "AdamW" or kw.get("decoupled_weight_decay", False)
    wd = kw.get("weight_decay", 0.01 if name == "AdamW" else 0.0)
    want = scalar_adam(p0, grads, kw["lr"], b1, b2, kw.get("eps", 1e-8), wd, decoupled)
    np.testing.assert_allclose(run(cls, kw, p0, grads), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kw", [("SGD", k) for k in SGD_CASES] + ADAM_CASES, ids=str)
def test_matches_torch(name, kw, dtype, problem):
    torch = pytest.importorskip("torch")
    p0, grads = problem
    tp = torch.nn.Parameter(torch.tensor(p0.astype(dtype)))
    topt = getattr(torch.optim, name)([tp], **kw)
    for gs in grads:
        tp.grad = torch.tensor(gs.astype(dtype))
        topt.step()
    got = run(getattr(optim, name), kw, p0, [g.astype(dtype) for g in grads], dtype)
    assert got.dtype == dtype
    rtol = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, tp.detach().numpy(), rtol=rtol, atol=rtol)


def test_on_models_flat_buffers(rng):
    """One step touches every parameter of every model through its flat buffer."""
    rnn = fl.MultiLSTM([fl.LSTM(3, 4, random_state=0), fl.LSTM(4, 5, random_state=1)])
    head = fl.readout.Dense(5, 2, random_state=0)
    before = [rnn.flat_params.copy(), head.flat_params.copy()]
    rnn.flat_grads[...] = rng.normal(size=rnn.flat_grads.shape)
    head.flat_grads[...] = rng.normal(size=head.flat_grads.shape)
    opt = optim.SGD([rnn, head], lr=0.5)
    opt.step()
    np.testing.assert_allclose(rnn.flat_params, before[0] - 0.5 * rnn.flat_grads, rtol=1e-6)
    np.testing.assert_allclose(head.flat_params, before[1] - 0.5 * head.flat_grads, rtol=1e-6)
    # the layers' named views see the update
    off = rnn.layers[0].n_params + rnn.layers[1].W.size
    np.testing.assert_array_equal(rnn.layers[1].U.ravel(), rnn.flat_params[off:off + 20 * 5])
    opt.zero_grad()
    assert not rnn.flat_grads.any() and not head.flat_grads.any()


@pytest.mark.parametrize("wrap", ["stack", "bidirectional"])
def test_optimiser_follows_a_layer_into_a_container(rng, wrap):
    """An optimiser made on a layer that is then put into a MultiLSTM / Bidirectional
    updates the layer inside the container (it updated the layer's old, detached buffer,
    so training silently did nothing)."""
    a = fl.LSTM(3, 4, random_state=0)
    opt = optim.SGD(a, lr=0.5)
    model = fl.MultiLSTM([a, fl.LSTM(4, 2, random_state=1)]) if wrap == "stack" else \
        fl.Bidirectional(a, fl.LSTM(3, 4, random_state=1))
    model.flat_grads[...] = rng.normal(size=model.flat_grads.shape)
    before = model.flat_params.copy()
    opt.step()
    n = a.n_params
    np.testing.assert_allclose(model.flat_params[:n], before[:n] - 0.5 * model.flat_grads[:n],
                               rtol=1e-6)
    np.testing.assert_array_equal(model.flat_params[n:], before[n:])
    assert np.shares_memory(a.W, model.flat_params)
    opt.zero_grad()
    assert not model.flat_grads[:n].any() and model.flat_grads[n:].all()


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
                                     ("SGD", dict(lr=0.1)),      # no momentum: no buffers
                                     ("SGD", dict(lr=0.1, weight_decay=0.01)),
                                     ("Adam", dict(lr=0.01, weight_decay=0.1)),
                                     ("AdamW", dict(lr=0.01))])
def test_state_dict_round_trip(name, kw, problem):
    """Save after 3 steps, restore into a fresh optimiser: the next steps are identical."""
    p0, grads = problem
    cls = getattr(optim, name)
    p, g = p0.copy(), np.zeros_like(p0)
    opt = cls([(p, g)], **kw)
    for gs in grads[:3]:
        g[...] = gs
        opt.step()
    state = opt.state_dict()
    p_saved = p.copy()
    for gs in grads[3:]:
        g[...] = gs
        opt.step()
    p2, g2 = p_saved.copy(), np.zeros_like(p0)
    opt2 = cls([(p2, g2)], lr=123.0)              # hyper-parameters come from the state
    opt2.load_state_dict(state)
    assert opt2.lr == kw["lr"] and opt2.n_steps == 3
    for gs in grads[3:]:
        g2[...] = gs
        opt2.step()
    np.testing.assert_array_equal(p2, p)
    # the saved state is a copy, not a view of the live buffers
    for slot, arrays in state["state"].items():
        for saved, live in zip(arrays, opt._slots()[slot]):
            assert not np.shares_memory(saved, live)


def test_state_dict_errors():
    p, g = np.zeros(3), np.zeros(3)
    opt = optim.Adam([(p, g)])
    with pytest.raises(ValueError, match="Adam state_dict"):
        opt.load_state_dict(optim.SGD([(p, g)], momentum=0.9).state_dict())
    other = optim.Adam([(np.zeros(4), np.zeros(4))]).state_dict()
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(other)


def test_state_dict_refused_changes_nothing():
    # a momentum buffer of the wrong shape is refused, and the optimiser keeps its own
    # hyper-parameters, step count and buffers
    p, g = np.zeros(3), np.ones(3)
    opt = optim.SGD([(p, g)], lr=0.5, momentum=0.5)
    opt.step()
    buf = opt._slots()["momentum_buffer"][0].copy()
    state = optim.SGD([(p.copy(), g.copy())], lr=0.1, momentum=0.9).state_dict()
    state["state"]["momentum_buffer"] = [np.zeros(4)]
    with pytest.raises(ValueError, match="momentum_buffer"):
        opt.load_state_dict(state)
    assert (opt.lr, opt.momentum, opt.n_steps) == (0.5, 0.5, 1)
    np.testing.assert_array_equal(opt._slots()["momentum_buffer"][0], buf)
    # momentum set after the last step (no buffer saved yet): a zero buffer, as torch
    # starts one (its first step makes it the gradient)
    unstepped = optim.SGD([(p.copy(), g.copy())], lr=0.1)
    unstepped.momentum = 0.9
    opt.load_state_dict(unstepped.state_dict())
    assert opt.momentum == 0.9 and not opt._slots()["momentum_buffer"][0].any()
    # momentum 0 into an optimiser that had momentum: the buffers go away
    opt.load_state_dict(optim.SGD([(p.copy(), g.copy())], lr=0.1).state_dict())
    assert opt.momentum == 0 and opt._slots()["momentum_buffer"] == []


def test_clip_grad_norm(rng):
    gs = [rng.normal(size=7), rng.normal(size=(5,))]
    pairs = [(np.zeros_like(g), g.copy()) for g in gs]
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in gs))
    got = optim.clip_grad_norm(pairs, 1.0)
    assert got == pytest.approx(norm, rel=1e-12)
    new = math.sqrt(sum(float((g ** 2).sum()) for _, g in pairs))
    assert new == pytest.approx(1.0 / (norm + 1e-6) * norm, rel=1e-12)
    for (_, g), g0 in zip(pairs, gs):
        np.testing.assert_allclose(g, g0 * (1.0 / (norm + 1e-6)), rtol=1e-12)
    # below the limit nothing changes; max_norm=inf only measures (as torch)
    before = [g.copy() for _, g in pairs]
    optim.clip_grad_norm(pairs, 10.0)
    assert optim.clip_grad_norm(pairs, np.inf) == optim.clip_grad_norm(pairs, float("inf"))
    for (_, g), b in zip(pairs, before):
        np.testing.assert_array_equal(g, b)
    for bad in (-np.inf, np.nan):
        with pytest.raises(TypeError, match="max_norm must be a finite number"):
            optim.clip_grad_norm(pairs, bad)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("dtype, scale", [(np.float32, 1e19), (np.float32, 1e37),
                                          (np.float64, 1e160)])
def test_clip_grad_norm_of_huge_finite_gradients(dtype, scale):
    """Finite gradients whose sum of squares overflows the dtype (float32 from a norm of
    ~1.8e19): they are clipped (they were left unchanged, the norm reported as inf)."""
    gs = [np.array([3.0, 0.0], dtype) * dtype(scale), np.array([4.0], dtype) * dtype(scale)]
    want = 5.0 * float(np.float64(dtype(scale)))
    pairs = [(np.zeros_like(g), g.copy()) for g in gs]
    got = optim.clip_grad_norm(pairs, 1.0)
    assert got == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(pairs[0][1], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(pairs[1][1], [0.8], rtol=1e-6)
    # a gradient that is not finite still leaves them unchanged
    pairs[1][1][0] = np.inf
    assert optim.clip_grad_norm(pairs, 1.0) == np.inf
    np.testing.assert_allclose(pairs[0][1], [0.6, 0.0], rtol=1e-6)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_at_the_ends_of_the_range(dtype):
    """A clipping scale below the dtype's normal range (huge gradients, small max_norm)
    was rounded to a subnormal or 0 (float32 [3e38] x 4 to 1e-9: 0, to 1e-6: 16 % off);
    norms whose squares underflow were returned as 0."""
    info = np.finfo(dtype)
    big = dtype(info.max / 2)
    for max_norm in (1.0, 1e-6, 1e-9):
        g = np.full(4, big, dtype)
        pairs = [(np.zeros_like(g), g)]
        total = optim.clip_grad_norm(pairs, max_norm)
        assert total == pytest.approx(2 * float(big), rel=1e-12)
        np.testing.assert_allclose(g, max_norm / 4 ** 0.5, rtol=4 * info.eps)
    tiny = dtype(1e-25 if dtype == np.float32 else 1e-170)
    pairs = [(np.zeros(4, dtype), np.full(4, tiny, dtype))]
    assert optim.clip_grad_norm(pairs, 1.0) == pytest.approx(2 * float(tiny), rel=1e-12)
    np.testing.assert_array_equal(pairs[0][1], tiny)          # not clipped


def test_clip_grad_norm_matches_torch(rng):
    torch = pytest.importorskip("torch")
    gs = [rng.normal(size=9), rng.normal(size=4)]
    ps = [torch.nn.Parameter(torch.zeros(len(g), dtype=torch.float64)) for g in gs]
    for p, g in zip(ps, gs):
        p.grad = torch.tensor(g)
    tnorm = torch.nn.utils.clip_grad_norm_(ps, 0.5)
    pairs = [(np.zeros_like(g), g.copy()) for g in gs]
    norm = optim.clip_grad_norm(pairs, 0.5)
    assert norm == pytest.approx(float(tnorm), rel=1e-12)
    for (_, g), p in zip(pairs, ps):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-12)


def test_argument_errors():
    p, g = np.zeros(3), np.zeros(3)
    with pytest.raises(TypeError, match="params"):
        optim.SGD(42)
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([])
    with pytest.raises(ValueError, match="same shape"):
        optim.SGD([(p, np.zeros(4))])
    with pytest.raises(TypeError, match="1-D float"):
        optim.SGD([(p.reshape(3, 1), g.reshape(3, 1))])
    with pytest.raises(ValueError, match="lr"):
        optim.SGD([(p, g)], lr=-1)
    with pytest.raises(ValueError, match="momentum"):
        optim.SGD([(p, g)], momentum=1.5)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([(p, g)], nesterov=True)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        optim.Adam([(p, g)], betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="max_norm"):
        optim.clip_grad_norm([(p, g)], float("nan"))


def test_shared_parameters_are_refused():
    """A model listed twice, or a layer beside the model holding it, was updated twice per
    step (and counted twice by clip_grad_norm)."""
    stack = fl.MultiLSTM([fl.LSTM(3, 4), fl.LSTM(4, 2)])
    p, g = np.zeros(3), np.zeros(3)
    for params in ([stack, stack.layers[0]], [stack, stack], [(p, g), (p, g)]):
        for make in (optim.SGD, optim.Adam):
            with pytest.raises(ValueError, match="share parameters"):
                make(params)
        with pytest.raises(ValueError, match="share parameters"):
            optim.clip_grad_norm(params, 1.0)
    optim.SGD([stack.layers[0], stack.layers[1]])      # disjoint parts of one buffer: fine


def _adam_state():
    return optim.Adam([(np.zeros(3), np.ones(3))]).state_dict()


@pytest.mark.parametrize("edit, exc, match", [
    (lambda sd: sd["hyper"].update(lr=-5.0), ValueError, "lr must be in"),
    (lambda sd: sd["hyper"].update(betas=(2.0, -1.0)), ValueError, r"betas\[0\] must be in"),
    (lambda sd: sd["hyper"].update(eps=-1.0), ValueError, "eps must be in"),
    (lambda sd: sd["hyper"].update(weight_decay=float("nan")), TypeError, "weight_decay"),
    (lambda sd: sd["hyper"].update(momentum=0.9), ValueError, "does not have"),
    (lambda sd: sd.update(n_steps=-1), ValueError, "n_steps"),
    (lambda sd: sd.pop("state"), ValueError, r"state\['state'\] is missing"),
    (lambda sd: sd["state"].update(exp_avg=None), TypeError, "list of real arrays"),
    (lambda sd: sd["state"].update(exp_avg_sq=[-np.ones(3)]), ValueError, "non-negative"),
])
def test_load_state_dict_checks_what_it_loads(edit, exc, match):
    """A state_dict gets the constructor's checks (values the constructor refuses were
    loaded; a negative step count or second moment made later steps fail or NaN)."""
    sd = _adam_state()
    edit(sd)
    opt = optim.Adam([(np.zeros(3), np.ones(3))], lr=0.5)
    before = opt.state_dict()
    with pytest.raises(exc, match=match):
        opt.load_state_dict(sd)
    assert opt.lr == 0.5 and opt.n_steps == before["n_steps"]


def test_hyper_parameters_set_after_construction(rng):
    """Assigning hyper-parameters (a learning-rate schedule) gets the checks, and options
    switched on later work (weight_decay or momentum set later raised IndexError)."""
    p0, g = rng.normal(size=5), rng.normal(size=5)
    opt = optim.SGD([(p0.copy(), g)], lr=0.1)
    for name, value, exc in (("lr", float("nan"), TypeError), ("lr", -1.0, ValueError),
                             ("momentum", 1.5, ValueError), ("nesterov", 1, TypeError)):
        with pytest.raises(exc, match=name):
            setattr(opt, name, value)
    assert opt.lr == 0.1
    opt.momentum, opt.weight_decay = 0.9, 0.01
    ours = optim.SGD([(p0.copy(), g)], lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(3):
        opt.step()
        ours.step()
    np.testing.assert_array_equal(opt._pairs[0][0], ours._pairs[0][0])
    opt.nesterov = True
    opt.momentum = 0.0
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        opt.step()
    adam = optim.Adam([(p0.copy(), g)], lr=0.1)
    adam.weight_decay = 0.1
    with pytest.raises(ValueError, match=r"betas\[1\] must be in"):
        adam.betas = (0.9, 1.0)
    adam.step()
    want = optim.Adam([(p0.copy(), g)], lr=0.1, weight_decay=0.1)
    want.step()
    np.testing.assert_array_equal(adam._pairs[0][0], want._pairs[0][0])


def test_state_dict_with_a_stored_step_count():
    """n_steps stored as a 0-d array (np.load) loads, as the hyper-parameters do."""
    opt = optim.Adam([(np.zeros(3), np.ones(3))])
    opt.step()
    sd = opt.state_dict()
    sd["n_steps"] = np.array(sd["n_steps"])
    again = optim.Adam([(np.zeros(3), np.ones(3))])
    again.load_state_dict(sd)
    assert again.n_steps == 1


@pytest.mark.parametrize("Opt", [optim.SGD, optim.Adam])
def test_a_refused_step_changes_nothing(Opt):
    # a model whose buffers changed size is refused before any update or step count
    class Model:
        def __init__(self, n):
            self.flat_params, self.flat_grads = np.ones(n), np.full(n, 0.5)

    model = Model(4)
    opt = Opt(model, lr=0.1)
    opt.step()
    state = opt.state_dict()
    model.flat_params, model.flat_grads = np.ones(5), np.ones(5)
    with pytest.raises(ValueError, match="make a new optimiser"):
        opt.step()
    assert opt.n_steps == 1
    for key, value in opt.state_dict().items():
        if isinstance(value, (int, float)):
            assert value == state[key], key


def test_momentum_buffer_survives_a_checkpoint_taken_while_momentum_is_off(rng):
    # an optimiser keeps its buffer while momentum is 0 (torch too); a state_dict round
    # trip in that window must keep it as well, or the resumed run differs
    grads = [rng.normal(size=5) for _ in range(8)]

    def run(checkpoint):
        p, g = np.ones(5), np.zeros(5)
        opt = optim.SGD([(p, g)], lr=0.1, momentum=0.9)
        for s, gs in enumerate(grads):
            if s == 3:
                opt.momentum = 0.0
            if s == 4 and checkpoint:
                saved = opt.state_dict()
                opt = optim.SGD([(p, g)], lr=0.1)
                opt.load_state_dict(saved)
            if s == 5:
                opt.momentum = 0.9
            g[...] = gs
            opt.step()
        return p

    np.testing.assert_array_equal(run(True), run(False))


def test_reprs_name_the_constructors_arguments():
    p, g = np.zeros(3), np.zeros(3)
    for opt in (optim.SGD([(p, g)]), optim.Adam([(p, g)]), optim.AdamW([(p, g)])):
        text = repr(opt)
        name, args = text[:text.index("(")], text[text.index("(") + 1:-1]
        kwargs = eval(f"dict({args})")
        again = getattr(optim, name)([(p, g)], **kwargs)       # accepted as written
        assert repr(again) == text
