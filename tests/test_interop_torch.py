"""PyTorch interop: golden files without torch; real torch 2.x (random configurations,
outputs, states and float64 gradients) when it is installed."""

import os

import numpy as np
import pytest

import fastlstm as fl
from fastlstm.interop import to_torch_state_dict

DATA = os.path.join(os.path.dirname(__file__), "data")
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-11, atol=1e-12)}


def torch_state_to_fl(h0, c0, model):
    """torch (h [L*D, N, Hout], c [L*D, N, H]) -> fastlstm's nested LSTMState."""
    items = model.layers if isinstance(model, fl.MultiLSTM) else [model]
    D = 2 if isinstance(items[0], fl.Bidirectional) else 1
    per_layer = []
    for k in range(len(items)):
        dirs = tuple(fl.LSTMState(c0[k * D + d], h0[k * D + d]) for d in range(D))
        per_layer.append(dirs if D == 2 else dirs[0])
    return per_layer[0] if len(items) == 1 else tuple(per_layer)


def fl_state_flat(state):
    """Nested fastlstm state -> list of LSTMState in torch's [layer*D + direction] order."""
    if isinstance(state, fl.LSTMState):
        return [state]
    return [s for part in state for s in fl_state_flat(part)]


# ---------------------------------------------------------------------------------------
# golden files: no torch needed


@pytest.mark.parametrize("suffix", ["f32", "f64"])
def test_golden_two_layer_bidirectional_from_state_dict(suffix):
    g = np.load(os.path.join(DATA, f"torch_lstm_2layer_bidir_{suffix}.npz"))
    sd = {k: g[k] for k in g.files if k.startswith(("weight", "bias"))}
    model = fl.from_torch(sd, input_size=6, hidden_size=4, num_layers=2, bidirectional=True)
    assert isinstance(model, fl.MultiLSTM) and len(model) == 2
    assert all(isinstance(layer, fl.Bidirectional) for layer in model.layers)
    dt = np.float32 if suffix == "f32" else np.float64
    assert model.dtype == dt
    s0 = torch_state_to_fl(g["h0"], g["c0"], model)
    Y, state = model(g["input"], initial_state=s0)  # batch_first=True in the golden call
    tol = TOL[dt]
    np.testing.assert_allclose(Y, g["output"], **tol)
    flat = fl_state_flat(state)
    np.testing.assert_allclose(np.stack([s.h for s in flat]), g["h_n"], **tol)
    np.testing.assert_allclose(np.stack([s.c for s in flat]), g["c_n"], **tol)


def test_golden_xfw_torch_layout_matches_tf_outputs():
    g = np.load(os.path.join(DATA, "xfw_basic_tutorial_seqlen_f64.npz"))
    sd = {k[len("torch."):]: g[k] for k in g.files if k.startswith("torch.")}
    layer = fl.from_torch(sd)
    Y, s = layer(g["inputs"], initial_state=(g["initial_state.c"], g["initial_state.h"]),
                 lengths=g["sequence_length"])
    np.testing.assert_allclose(Y, g["outputs"], **TOL[np.float64])
    np.testing.assert_allclose(s.c, g["final_state.c"], **TOL[np.float64])
    np.testing.assert_allclose(s.h, g["final_state.h"], **TOL[np.float64])
    # and back: the state_dict of the converted layer reproduces the weights' sums
    config, sd2 = to_torch_state_dict(layer)
    assert config == dict(input_size=6, hidden_size=4, num_layers=1, bias=True,
                          bidirectional=False, proj_size=0)
    np.testing.assert_array_equal(sd2["weight_ih_l0"], sd["weight_ih_l0"])
    np.testing.assert_allclose(sd2["bias_ih_l0"] + sd2["bias_hh_l0"],
                               sd["bias_ih_l0"] + sd["bias_hh_l0"], rtol=0, atol=0)


def test_state_dict_checks_and_prefix():
    g = np.load(os.path.join(DATA, "torch_lstm_2layer_bidir_f64.npz"))
    sd = {"encoder.lstm." + k: g[k] for k in g.files if k.startswith(("weight", "bias"))}
    sd["decoder.weight"] = np.zeros((3, 3))
    model = fl.from_torch(sd)  # prefix found
    np.testing.assert_array_equal(model.layers[1].backward_layer.W,
                                  g["weight_ih_l1_reverse"].T)
    for prefix in ("encoder.lstm.", "encoder.lstm"):          # with or without the dot
        again = fl.from_torch(sd, prefix=prefix)
        np.testing.assert_array_equal(again.flat_params, model.flat_params)
    with pytest.raises(ValueError, match="hidden_size=5 does not match"):
        fl.from_torch(sd, hidden_size=5)
    with pytest.raises(ValueError, match="num_layers"):
        fl.from_torch(sd, num_layers=3)
    with pytest.raises(ValueError, match="no state_dict key starts"):
        fl.from_torch(sd, prefix="nothing.")
    bad = {k: v for k, v in sd.items() if not k.endswith("weight_hh_l1")}
    with pytest.raises(ValueError, match="no weight_hh_l1"):
        fl.from_torch(bad)
    wrong = dict(sd)
    wrong["encoder.lstm.weight_ih_l1"] = np.zeros((16, 7))
    with pytest.raises(ValueError, match=r"weight_ih_l1 must have shape \(16, 8\)"):
        fl.from_torch(wrong)
    with pytest.raises(TypeError, match="unexpected keyword"):
        fl.from_torch(sd, hidden=4)


# ---------------------------------------------------------------------------------------
# real torch

CONFIGS = [
    # num_layers, bidirectional, proj_size, bias, batch_first
    (1, False, 0, True, True),
    (1, False, 0, False, False),
    (1, True, 0, True, True),
    (2, False, 2, True, False),
    (2, True, 3, True, True),
    (3, True, 0, False, False),
    (3, False, 0, True, True),
]


def _torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def _random_lstm(torch, dtype, L, bidir, proj, bias, batch_first, seed):
    torch.manual_seed(seed)
    m = torch.nn.LSTM(5, 6, num_layers=L, bidirectional=bidir, proj_size=proj, bias=bias,
                      batch_first=batch_first, dtype=dtype)
    with torch.no_grad():  # non-zero, distinct biases so their sum matters
        for name, p in m.named_parameters():
            p.uniform_(-0.6, 0.6)
    return m


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "L{}{}_p{}_{}_{}".format(
    c[0], "bi" if c[1] else "", c[2], "bias" if c[3] else "nobias", "bf" if c[4] else "tm"))
def test_from_torch_matches_torch(cfg, dtype):
    torch = _torch()
    L, bidir, proj, bias, batch_first = cfg
    tdt = getattr(torch, dtype)
    m = _random_lstm(torch, tdt, L, bidir, proj, bias, batch_first, seed=hash(cfg) % 1000)
    model = fl.from_torch(m)
    assert model.dtype == np.dtype(dtype)
    D = 2 if bidir else 1
    Ho = proj or 6
    rng = np.random.default_rng(1)
    N, T = 4, 7
    X = rng.normal(size=(N, T, 5) if batch_first else (T, N, 5)).astype(dtype)
    h0 = rng.normal(size=(L * D, N, Ho)).astype(dtype)
    c0 = rng.normal(size=(L * D, N, 6)).astype(dtype)
    with torch.no_grad():
        out, (hn, cn) = m(torch.from_numpy(X), (torch.from_numpy(h0), torch.from_numpy(c0)))
    Y, state = model(X, initial_state=torch_state_to_fl(h0, c0, model),
                     time_major=not batch_first)
    tol = TOL[np.dtype(dtype).type]
    np.testing.assert_allclose(Y, out.numpy(), **tol)
    flat = fl_state_flat(state)
    np.testing.assert_allclose(np.stack([s.h for s in flat]), hn.numpy(), **tol)
    np.testing.assert_allclose(np.stack([s.c for s in flat]), cn.numpy(), **tol)


@pytest.mark.parametrize("cfg", [(1, False, 0), (2, True, 0), (2, False, 3)])
def test_from_torch_packed_lengths(cfg):
    torch = _torch()
    L, bidir, proj = cfg
    m = _random_lstm(torch, torch.float64, L, bidir, proj, True, True, seed=7)
    model = fl.from_torch(m)
    rng = np.random.default_rng(2)
    N, T = 5, 6
    X = rng.normal(size=(N, T, 5))
    X[0, 2:] = np.nan  # padding never leaks
    lengths = np.array([2, 6, 1, 4, 6])
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(np.nan_to_num(X)),
                                                     torch.from_numpy(lengths),
                                                     batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        out_p, (hn, cn) = m(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out_p, batch_first=True, total_length=T)
    Y, state = model(X, lengths=lengths)
    np.testing.assert_allclose(Y, out.numpy(), **TOL[np.float64])
    flat = fl_state_flat(state)
    np.testing.assert_allclose(np.stack([s.h for s in flat]), hn.numpy(), **TOL[np.float64])
    np.testing.assert_allclose(np.stack([s.c for s in flat]), cn.numpy(), **TOL[np.float64])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_from_torch_lstm_cell(dtype):
    torch = _torch()
    torch.manual_seed(3)
    cell = torch.nn.LSTMCell(4, 5, dtype=getattr(torch, dtype))
    layer = fl.from_torch(cell)
    assert isinstance(layer, fl.LSTM) and layer.input_size == 4 and layer.hidden_size == 5
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4)).astype(dtype)
    h = rng.normal(size=(3, 5)).astype(dtype)
    c = rng.normal(size=(3, 5)).astype(dtype)
    with torch.no_grad():
        h1, c1 = cell(torch.from_numpy(x), (torch.from_numpy(h), torch.from_numpy(c)))
    out, s = layer.step(x, (c, h))
    tol = TOL[np.dtype(dtype).type]
    np.testing.assert_allclose(out, h1.numpy(), **tol)
    np.testing.assert_allclose(s.c, c1.numpy(), **tol)
    # and from its state_dict, without the module
    layer2 = fl.from_torch({k: v.numpy() for k, v in cell.state_dict().items()})
    np.testing.assert_array_equal(layer2.flat_params, layer.flat_params)


def test_from_torch_refuses_other_modules():
    torch = _torch()
    with pytest.raises(TypeError, match="nn.LSTM"):
        fl.from_torch(torch.nn.GRU(3, 4))
    with pytest.raises(TypeError, match="nn.LSTM"):
        fl.from_torch(torch.nn.Linear(3, 4))
    with pytest.raises(TypeError, match="holds none"):
        fl.from_torch(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GRU(4, 4)))
    two = torch.nn.Sequential(torch.nn.LSTM(3, 4), torch.nn.LSTM(4, 4))
    with pytest.raises(ValueError, match="several .*0, 1.*pass one of them"):
        fl.from_torch(two)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_from_torch_finds_the_lstm_in_a_larger_module():
    torch = _torch()
    torch.manual_seed(1)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(3, 5)
            self.rnn = torch.nn.LSTM(5, 4, num_layers=2, batch_first=True, proj_size=2)
            self.head = torch.nn.Linear(2, 1)

    m = Model()
    model = fl.from_torch(m)
    x = torch.randn(3, 6, 5)
    with torch.no_grad():
        want = m.rnn(x)[0].numpy()
    np.testing.assert_allclose(model(x.numpy())[0], want, **TOL[np.float32])
    seq = fl.from_torch(torch.nn.Sequential(torch.nn.Identity(), m.rnn))
    np.testing.assert_array_equal(seq.flat_params, model.flat_params)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_from_torch_takes_subclasses_and_scripted_modules():
    """A subclass of nn.LSTM / nn.LSTMCell that keeps torch's forward, and a TorchScript
    compilation, convert like the class itself (they were refused as holding no LSTM); a
    subclass overriding forward is refused (its outputs may differ)."""
    torch = _torch()
    torch.manual_seed(2)

    class Named(torch.nn.LSTM):
        def describe(self):
            return "a helper method, same maths"

    class Doubled(torch.nn.LSTM):
        def forward(self, x, hx=None):
            return super().forward(2 * x, hx)

    x = torch.randn(2, 5, 3)
    for m in (Named(3, 4, num_layers=2, batch_first=True),
              torch.nn.Sequential(Named(3, 4, batch_first=True, bidirectional=True)),
              torch.jit.script(torch.nn.LSTM(3, 4, batch_first=True))):
        with torch.no_grad():
            want = m(x)[0].numpy() if not isinstance(m, torch.jit.ScriptModule) else \
                None
        model = fl.from_torch(m)
        if want is not None:
            np.testing.assert_allclose(model(x.numpy())[0], want, **TOL[np.float32])
        else:   # a scripted nn.LSTM cannot be called itself: its weights are checked
            np.testing.assert_array_equal(
                model.flat_params, fl.from_torch(m.state_dict()).flat_params)
    cell = torch.jit.script(torch.nn.LSTMCell(3, 4))
    h, _ = cell(x[:, 0])
    np.testing.assert_allclose(fl.from_torch(cell).step(x[:, 0].numpy())[0],
                               h.detach().numpy(), **TOL[np.float32])
    with pytest.raises(TypeError, match="Doubled subclasses torch's nn.LSTM but overrides"):
        fl.from_torch(Doubled(3, 4))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_from_torch_takes_traced_modules_of_torchs_classes_only():
    """``torch.jit.trace`` of an nn.LSTM / nn.LSTMCell (alone or inside a traced model)
    converts like the module (it was refused as holding no LSTM); a traced or scripted
    class that is only named LSTM is refused (its forward may compute something else)."""
    import warnings

    torch = _torch()
    torch.manual_seed(3)
    warnings.simplefilter("ignore", torch.jit.TracerWarning)   # (restored by pytest)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True,
                                     batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]

    class LSTM(torch.nn.LSTM):          # torch's name, other maths
        def forward(self, x, hx=None):
            return super().forward(2 * x, hx)

    x = torch.randn(2, 5, 3)
    lstm = torch.nn.LSTM(3, 4, proj_size=2, batch_first=True)
    for traced in (torch.jit.trace(lstm, x), torch.jit.trace(Model(), x)):
        with torch.no_grad():
            out = traced(x)
        want = (out[0] if isinstance(out, tuple) else out).numpy()
        np.testing.assert_allclose(fl.from_torch(traced)(x.numpy())[0], want,
                                   **TOL[np.float32])
    cell = torch.jit.trace(torch.nn.LSTMCell(3, 4), x[:, 0])
    with torch.no_grad():
        h, _ = cell(x[:, 0])
    np.testing.assert_allclose(fl.from_torch(cell).step(x[:, 0].numpy())[0], h.numpy(),
                               **TOL[np.float32])
    impostor = torch.jit.trace(LSTM(3, 4, batch_first=True), x)
    with pytest.raises(TypeError, match="holds no torch nn.LSTM.*convert the state_dict"):
        fl.from_torch(impostor)
    assert fl.from_torch(impostor.state_dict()).hidden_size == 4   # as the message says

    class LSTMNet(torch.nn.Module):     # a model class that only shares the name...
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(3, 4, batch_first=True)
            self.head = torch.nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    LSTMNet.__name__ = LSTMNet.__qualname__ = "LSTM"
    net = LSTMNet()
    for compiled in (torch.jit.trace(net, x), torch.jit.script(net)):
        assert compiled.original_name == "LSTM"
        np.testing.assert_array_equal(fl.from_torch(compiled).flat_params,  # ...holds one
                                      fl.from_torch(net.rnn).flat_params)


def _random_fl_model(kind, dtype, rng):
    def lstm(i, h, **kw):
        layer = fl.LSTM(i, h, dtype=dtype, random_state=int(rng.integers(1 << 30)), **kw)
        layer.b[...] = rng.normal(scale=0.5, size=layer.b.shape)
        return layer
    if kind == "lstm":
        return lstm(5, 6)
    if kind == "proj":
        return lstm(5, 6, proj_size=4)
    if kind == "bidir":
        return fl.Bidirectional(lstm(5, 6), lstm(5, 6))
    if kind == "stack_proj":
        return fl.MultiLSTM([lstm(5, 6, proj_size=3), lstm(3, 6, proj_size=3)])
    if kind == "stack_bidir":
        return fl.MultiLSTM([fl.Bidirectional(lstm(5, 4), lstm(5, 4)),
                             fl.Bidirectional(lstm(8, 4), lstm(8, 4))])
    raise KeyError(kind)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["lstm", "proj", "bidir", "stack_proj", "stack_bidir"])
def test_to_torch_matches_fastlstm(kind, dtype):
    torch = _torch()
    rng = np.random.default_rng(5)
    model = _random_fl_model(kind, np.dtype(dtype), rng)
    m = fl.to_torch(model)
    assert m.batch_first
    X = rng.normal(size=(3, 6, 5)).astype(dtype)
    Y, state = model(X)
    with torch.no_grad():
        out, (hn, cn) = m(torch.from_numpy(X))
    tol = TOL[np.dtype(dtype).type]
    np.testing.assert_allclose(out.numpy(), Y, **tol)
    flat = fl_state_flat(state)
    np.testing.assert_allclose(hn.numpy(), np.stack([s.h for s in flat]), **tol)
    np.testing.assert_allclose(cn.numpy(), np.stack([s.c for s in flat]), **tol)
    # round trip is exact
    back = fl.from_torch(m)
    np.testing.assert_array_equal(back.flat_params, model.flat_params)


def test_to_torch_cell():
    torch = _torch()
    layer = fl.LSTM(3, 4, dtype=np.float64, random_state=0)
    cell = fl.to_torch(layer, cell=True)
    assert isinstance(cell, torch.nn.LSTMCell)
    x = np.random.default_rng(0).normal(size=(2, 3))
    with torch.no_grad():
        h, c = cell(torch.from_numpy(x))
    out, s = layer.step(x)
    np.testing.assert_allclose(h.numpy(), out, **TOL[np.float64])
    np.testing.assert_allclose(c.numpy(), s.c, **TOL[np.float64])
    with pytest.raises(ValueError, match="cell=True"):
        fl.to_torch(fl.LSTM(3, 4, proj_size=2), cell=True)


@pytest.mark.parametrize("kwargs, match", [
    (dict(peepholes=True), "peepholes"),
    (dict(cell_clip=1.0), "cell_clip"),
    (dict(proj_size=2, proj_clip=0.5), "proj_clip"),
    (dict(activation="relu"), "activation='relu'"),
    (dict(recurrent_activation="hard_sigmoid"), "recurrent_activation='hard_sigmoid'"),
    (dict(proj_size=4), "proj_size < hidden_size"),
])
def test_to_torch_refuses(kwargs, match):
    layer = fl.LSTM(3, 4, **kwargs)
    with pytest.raises(ValueError, match=match):
        to_torch_state_dict(layer)


def test_to_torch_refuses_uneven_stacks():
    with pytest.raises(ValueError, match="same direction"):
        to_torch_state_dict(fl.MultiLSTM([fl.LSTM(3, 4), fl.Bidirectional(fl.LSTM(4, 4),
                                                                         fl.LSTM(4, 4))]))
    with pytest.raises(ValueError, match="one hidden_size"):
        to_torch_state_dict(fl.MultiLSTM([fl.LSTM(3, 4), fl.LSTM(4, 5)]))


# ---------------------------------------------------------------------------------------
# gradients (float64): fastlstm's backward against torch autograd


@pytest.mark.parametrize("kind", ["lstm", "proj", "bidir", "stack_bidir"])
def test_gradients_match_torch(kind):
    torch = _torch()
    rng = np.random.default_rng(11)
    model = _random_fl_model(kind, np.dtype(np.float64), rng)
    if not hasattr(model, "backward"):
        pytest.skip("this fastlstm has no training API")
    m = fl.to_torch(model)
    N, T = 3, 5
    X = rng.normal(size=(N, T, 5))
    lengths = np.array([5, 2, 4])
    s0 = model.zero_state(N)
    s0 = _map_state(s0, lambda a: rng.normal(size=a.shape))
    flat0 = fl_state_flat(s0)
    Y, state, cache = model.forward(X, initial_state=s0, lengths=lengths)
    dY = rng.normal(size=Y.shape)
    dstate = _map_state(state, lambda a: rng.normal(size=a.shape))
    dX, dstate0 = model.backward(dY, cache, dstate)

    Xt = torch.tensor(X, requires_grad=True)
    h0 = torch.tensor(np.stack([s.h for s in flat0]), requires_grad=True)
    c0 = torch.tensor(np.stack([s.c for s in flat0]), requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(Xt, torch.from_numpy(lengths),
                                                     batch_first=True, enforce_sorted=False)
    out_p, (hn, cn) = m(packed, (h0, c0))
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out_p, batch_first=True, total_length=T)
    dflat = fl_state_flat(dstate)
    loss = (out * torch.from_numpy(dY)).sum() \
        + (hn * torch.from_numpy(np.stack([s.h for s in dflat]))).sum() \
        + (cn * torch.from_numpy(np.stack([s.c for s in dflat]))).sum()
    loss.backward()
    tol = dict(rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(Y, out.detach().numpy(), **tol)
    np.testing.assert_allclose(dX, Xt.grad.numpy(), **tol)
    g0 = fl_state_flat(dstate0)
    np.testing.assert_allclose(np.stack([s.h for s in g0]), h0.grad.numpy(), **tol)
    np.testing.assert_allclose(np.stack([s.c for s in g0]), c0.grad.numpy(), **tol)
    # parameters: fastlstm grads mapped into torch's names and layout
    _, grads_as_torch = to_torch_state_dict(_with_params(model, model.grads))
    tgrads = {k: p.grad.numpy() for k, p in m.named_parameters()}
    for name, g in tgrads.items():
        if name.startswith("bias_hh"):
            continue  # fastlstm's single b: its grad equals both torch biases' grads
        np.testing.assert_allclose(grads_as_torch[name], g, err_msg=name, **tol)
        if name.startswith("bias_ih"):
            np.testing.assert_allclose(tgrads[name.replace("bias_ih", "bias_hh")], g, **tol)


def _map_state(state, fn):
    if isinstance(state, fl.LSTMState):
        return fl.LSTMState(fn(state.c), fn(state.h))
    return tuple(_map_state(s, fn) for s in state)


def _with_params(model, values):
    """A copy of ``model`` whose parameters are ``values`` (a dict like ``params``)."""
    import copy

    twin = copy.deepcopy(model)
    for name, arr in twin.params.items():
        arr[...] = values[name]
    return twin


def test_import_fastlstm_needs_neither_torch_nor_onnx():
    import subprocess
    import sys

    code = ("import sys, fastlstm, fastlstm.tf1, fastlstm.interop; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("sizes", [dict(input_size=1, hidden_size=4),
                                   dict(input_size=3, hidden_size=1),
                                   dict(input_size=3, hidden_size=4, proj_size=1)])
def test_state_dict_export_is_a_copy(sizes):
    """Widths of 1 made the transposes contiguous, and the exported arrays were the
    model's own memory: editing them changed the model."""
    model = fl.LSTM(**sizes, random_state=0)
    before = model.flat_params.copy()
    _, sd = to_torch_state_dict(model)
    for value in sd.values():
        assert not np.shares_memory(value, model.flat_params)
        value[...] = 7
    np.testing.assert_array_equal(model.flat_params, before)


def _numpy_state_dict(**kw):
    _, sd = to_torch_state_dict(fl.MultiLSTM([fl.LSTM(3, 4, random_state=0, **kw),
                                              fl.LSTM(kw.get("proj_size", 4), 4,
                                                      random_state=1, **kw)]))
    return sd


@pytest.mark.parametrize("edit, exc, match", [
    (lambda sd: sd.pop("weight_hh_l0"), ValueError, "state_dict has no weight_hh_l0"),
    (lambda sd: sd.update(weight_hr_l0=np.zeros(())), ValueError,
     r"weight_hr_l0 must have shape \(proj_size, hidden_size=4\)"),
    (lambda sd: sd.update(weight_hr_l0=np.zeros(4)), ValueError,
     r"weight_hr_l0 must have shape \(proj_size, hidden_size=4\)"),
    (lambda sd: sd.update({0: np.zeros(3)}), TypeError, "state_dict keys must be str"),
])
def test_from_torch_state_dict_errors(edit, exc, match):
    """A missing weight_hh_l0 was a bare KeyError, a malformed weight_hr_l0 an IndexError
    or an error about weight_hh_l0, an int key an AttributeError."""
    sd = _numpy_state_dict(proj_size=2)
    edit(sd)
    with pytest.raises(exc, match=match):
        fl.from_torch(sd)


def test_from_torch_prefix_and_cell_keywords():
    sd = _numpy_state_dict()
    with pytest.raises(TypeError, match="prefix must be None or a str"):
        fl.from_torch(sd, prefix=0)
    cell = {"weight_ih": np.zeros((16, 3)), "weight_hh": np.zeros((16, 4)),
            "bias_ih": np.zeros(16), "bias_hh": np.zeros(16)}
    for kw, match in ((dict(num_layers=5), "num_layers=5"),
                      (dict(bidirectional=True), "bidirectional=True"),
                      (dict(proj_size=2), "proj_size=2")):
        with pytest.raises(ValueError, match=match):
            fl.from_torch(cell, **kw)
    assert fl.from_torch(cell, num_layers=1, bidirectional=False, proj_size=0).input_size == 3


def test_from_torch_cell_module_keywords_and_meta_device():
    torch = pytest.importorskip("torch")
    cell = torch.nn.LSTMCell(3, 4)
    assert fl.from_torch(cell, num_layers=1, proj_size=0).hidden_size == 4
    with pytest.raises(ValueError, match="num_layers=2"):
        fl.from_torch(cell, num_layers=2)
    with torch.device("meta"):
        meta = torch.nn.LSTM(3, 4)
    with pytest.raises(ValueError, match="on torch's meta device"):
        fl.from_torch(meta)


def test_from_torch_to_float32_refuses_weights_beyond_its_range():
    torch = pytest.importorskip("torch")
    t = torch.nn.LSTM(4, 3).double()
    with torch.no_grad():
        t.weight_ih_l0[0, 0] = 1e300
    with pytest.raises(ValueError, match="input kernel holds values up to 1e\\+300"):
        fl.from_torch(t, dtype=np.float32)
    assert np.isfinite(fl.from_torch(t).W).all()              # float64 holds it
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got 'junk'"):
        fl.from_torch(torch.nn.LSTM(4, 3), dtype="junk")


def test_round_trip_keeps_a_bias_of_minus_zero():
    # from_torch summed bias_ih with to_torch's all-zero bias_hh: -0.0 came back as +0.0
    pytest.importorskip("torch")
    m = fl.LSTM(3, 2, random_state=0)
    m.b[...] = -0.0
    m.b[1] = 0.5
    back = fl.from_torch(fl.to_torch(m))
    assert back.b.tobytes() == m.b.tobytes()


def _run_torch(torch, module, X):
    with torch.no_grad():
        out = module(torch.from_numpy(X))
    return (out[0] if isinstance(out, tuple) else out).numpy()


def test_parametrized_weights_are_read_as_forward_computes_them():
    """Weights under torch.nn.utils.parametrize (weight_norm, orthogonal, spectral_norm)
    or the older weight_norm / spectral_norm hooks: their state_dict holds the parts, not
    the weights, and was refused with a misleading message ("state_dict has no
    'weight_ih_l0'"); now the weights forward computes with are read (spectral_norm as in
    eval mode, the module left unchanged)."""
    torch = _torch()
    from torch.nn.utils import parametrizations as P
    X = np.random.default_rng(3).normal(size=(2, 5, 4)).astype(np.float32)

    def lstm(seed):
        torch.manual_seed(seed)
        return torch.nn.LSTM(4, 3, num_layers=2, bidirectional=True, batch_first=True)

    made = []
    for seed, wrap in enumerate((
            lambda m: P.weight_norm(m, "weight_ih_l0"),
            lambda m: P.orthogonal(m, "weight_hh_l1_reverse"),
            lambda m: P.spectral_norm(m, "weight_hh_l0"),
            lambda m: torch.nn.utils.weight_norm(m, "weight_ih_l1"),
            lambda m: torch.nn.utils.spectral_norm(m, "weight_hh_l0_reverse"))):
        m = lstm(seed)
        wrap(m)
        made.append(m.eval())
    cell = torch.nn.LSTMCell(4, 3)
    P.weight_norm(cell, "weight_hh")
    for m in made:
        before = {k: v.clone() for k, v in m.state_dict().items()}
        np.testing.assert_allclose(fl.from_torch(m)(X)[0], _run_torch(torch, m, X),
                                   **TOL[np.float32])
        after = m.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        with pytest.raises(ValueError, match="holds weights under a parametrization"):
            fl.from_torch(m.state_dict())
    x = X[:, 0]
    with torch.no_grad():
        h, c = cell(torch.from_numpy(x))
    out, state = fl.from_torch(cell).step(x)
    np.testing.assert_allclose(out, h.numpy(), **TOL[np.float32])
    np.testing.assert_allclose(state.c, c.numpy(), **TOL[np.float32])
    with pytest.raises(ValueError, match="holds weights under a parametrization"):
        fl.from_torch(cell.state_dict())


def test_forward_hooks_are_refused():
    """A hook may change the outputs (one doubling them was ignored silently): refused,
    as subclasses overriding forward are; the weights still convert by state_dict."""
    torch = _torch()
    for register in ("register_forward_hook", "register_forward_pre_hook"):
        m = torch.nn.LSTM(4, 3)
        handle = getattr(m, register)(lambda *args: None)
        with pytest.raises(TypeError, match="has forward hooks .* may change its outputs"):
            fl.from_torch(m)
        fl.from_torch(m.state_dict())
        handle.remove()
        fl.from_torch(m)


@pytest.mark.filterwarnings("ignore:the weights are float16:UserWarning")
def test_float16_biases_are_summed_exactly_and_torch_dtypes_accepted():
    """A float16 module's two biases were summed in float16 (2e-4 off the float32 sum that
    a float32 run of the same weights uses); dtype=torch.float64 was refused with "dtype
    must be float32 or float64, got torch.float64"."""
    torch = _torch()
    torch.manual_seed(0)
    m = torch.nn.LSTM(4, 8).half()
    with torch.no_grad():
        m.bias_ih_l0.uniform_(-3, 3)
        m.bias_hh_l0.uniform_(-3, 3)
    b_ih, b_hh = (b.detach() for b in (m.bias_ih_l0, m.bias_hh_l0))
    want = b_ih.float().numpy() + b_hh.float().numpy()
    assert fl.from_torch(m).b.tobytes() == want.tobytes()
    wide = fl.from_torch(m, dtype=torch.float64)
    assert wide.dtype == np.float64
    np.testing.assert_array_equal(wide.b, b_ih.double().numpy() + b_hh.double().numpy())
    sd = {k: v.numpy() for k, v in m.state_dict().items()}
    assert fl.from_torch(sd).b.tobytes() == want.tobytes()
    assert fl.from_torch(torch.nn.LSTMCell(4, 3).half()).dtype == np.float32


def test_more_ways_to_change_forward_are_refused():
    """A forward set on the object (as wrappers do), a subclass overriding __call__ or a
    method forward calls (permute_hidden: the wrong state for unsorted packed input) were
    imported silently (0.37-0.42 off); only a subclass's forward was refused."""
    import types
    torch = _torch()
    m = torch.nn.LSTM(6, 5)
    original = m.forward
    m.forward = types.MethodType(lambda self, x, hx=None: original(2 * x, hx), m)
    with pytest.raises(TypeError, match=r"this nn.LSTM has forward \(set on the object\)"):
        fl.from_torch(m)
    with pytest.raises(TypeError, match="set on the object"):
        fl.from_torch(torch.nn.Sequential(m))

    class Called(torch.nn.LSTM):
        def __call__(self, x, hx=None):
            return super().__call__(2 * x, hx)

    class Permuted(torch.nn.LSTM):
        def permute_hidden(self, hx, permutation):
            return hx

    class Described(torch.nn.LSTM):                 # harmless: imported
        def extra_repr(self):
            return "described"

        def describe(self):
            return "an LSTM"

    for cls, what in ((Called, "__call__"), (Permuted, "permute_hidden")):
        with pytest.raises(TypeError, match=f"{cls.__name__} subclasses torch's nn.LSTM but "
                                            f"overrides {what}"):
            fl.from_torch(cls(6, 5))
    assert isinstance(fl.from_torch(Described(6, 5)), fl.LSTM)


def test_weights_forward_reads_besides_the_state_dict():
    """torch's forward reads its weights by name: a weight replaced by a plain tensor or a
    non-persistent buffer is not in state_dict() (it was refused: "state_dict has no
    weight_hh_l0"), and a state_dict hook changing values changed the import; a pruned
    weight is computed (the module was refused for its pruning hook, its state_dict for
    holding weight_orig); a spectral norm in training mode is read as in eval mode without
    a power iteration, which changed the weights and the module's vectors (0.21 off)."""
    torch = _torch()
    from torch.nn.utils import parametrizations, prune
    X = np.random.default_rng(8).normal(size=(3, 4, 6)).astype(np.float32)

    def check(module):
        module.eval()
        with torch.no_grad():
            want = module(torch.from_numpy(X))[0].numpy()
        np.testing.assert_allclose(fl.from_torch(module)(X, time_major=True)[0], want,
                                   **TOL[np.float32])

    m = torch.nn.LSTM(6, 5)
    w = m.weight_hh_l0.detach().clone() * 2
    del m.weight_hh_l0
    m.weight_hh_l0 = w
    check(m)
    m = torch.nn.LSTM(6, 5)
    w = m.weight_ih_l0.detach().clone() * 2
    del m.weight_ih_l0
    m.register_buffer("weight_ih_l0", w, persistent=False)
    check(m)
    m = torch.nn.LSTM(6, 5)
    m._register_state_dict_hook(lambda mod, sd, prefix, local: {
        k: v.half().float() for k, v in sd.items()})
    with torch.no_grad():
        m.weight_ih_l0.uniform_(-1, 1)
    np.testing.assert_array_equal(fl.from_torch(m).W, m.weight_ih_l0.detach().numpy().T)
    m = torch.nn.LSTM(6, 5).eval()
    prune.l1_unstructured(m, "weight_hh_l0", amount=0.5)
    with torch.no_grad():       # (an optimiser step: forward's hook recomputes the weight)
        m.weight_hh_l0_orig.mul_(2)
    got = fl.from_torch(m)(X, time_major=True)[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, m(torch.from_numpy(X))[0].numpy(), **TOL[np.float32])
    m = torch.nn.LSTM(6, 5)
    parametrizations.spectral_norm(m, "weight_hh_l0")
    with torch.no_grad():
        m.parametrizations.weight_hh_l0.original.mul_(3)
    m.eval()
    with torch.no_grad():
        want = m(torch.from_numpy(X))[0].numpy()
    m.train()
    u = m.parametrizations.weight_hh_l0[0]._u.clone()
    np.testing.assert_allclose(fl.from_torch(m)(X, time_major=True)[0], want,
                               **TOL[np.float32])
    assert torch.equal(u, m.parametrizations.weight_hh_l0[0]._u) and m.training


def test_narrow_float_modules_warn_and_quantized_ones_are_refused_clearly():
    """float16 / bfloat16 modules compute in that precision (2e-4 / 5e-4 off the float32
    import) without a word, as from_keras and from_tf1_checkpoint say; torch.ao's
    quantized LSTMs were refused as holding "no" LSTM."""
    torch = _torch()
    for dt, name in ((torch.float16, "float16"), (torch.bfloat16, "bfloat16")):
        with pytest.warns(UserWarning, match=f"the weights are {name}: torch computes"):
            assert fl.from_torch(torch.nn.LSTM(4, 3).to(dt)).dtype == np.float32
    quantized = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(
        torch.nn.LSTM(4, 3)), {torch.nn.LSTM}, dtype=torch.qint8)
    with pytest.raises(TypeError, match="torch.ao's LSTM \\(a quantized or quantizable"):
        fl.from_torch(quantized)


def test_hooks_beside_computed_weights_get_advice_that_works():
    """A pruned LSTM with a forward hook was told to convert its state_dict(), which then
    was refused for holding the pruned parts: the advice now is to remove the hook."""
    torch = _torch()
    from torch.nn.utils import prune
    m = torch.nn.LSTM(4, 3)
    prune.l1_unstructured(m, "weight_ih_l0", amount=0.5)
    handle = m.register_forward_hook(lambda *args: None)
    with pytest.raises(TypeError, match="remove them \\(handle.remove\\(\\)\\) and pass the "
                                        "module again"):
        fl.from_torch(m)
    handle.remove()
    assert isinstance(fl.from_torch(m), fl.LSTM)


def test_from_onnx_takes_a_torch_dtype():
    """from_onnx(dtype=torch.float64) failed inside NumPy ("Cannot interpret
    'torch.float64' as a data type"); the other importers take it."""
    torch = _torch()
    pytest.importorskip("onnx")
    proto = fl.to_onnx(fl.LSTM(3, 4, random_state=0))
    assert fl.from_onnx(proto, dtype=torch.float64).dtype == np.float64
