"""ONNX interop: export run by onnxruntime (float32), import of golden onnxruntime results,
round trips and refusals."""

import os

import numpy as np
import pytest

import fastlstm as fl
from fastlstm.interop import onnx_state

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")
TOL32 = dict(rtol=1e-5, atol=1e-5)


def run_ort(model_proto, feeds):
    sess = ort.InferenceSession(model_proto.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def lstm_graph(X_shape, inits, node_inputs, attrs, runtime_inputs=(), opset=14):
    """One LSTM node; ``inits`` name -> array become initializers."""
    node = helper.make_node("LSTM", node_inputs, ["Y", "Y_h", "Y_c"], **attrs)
    ins = [helper.make_tensor_value_info("X", TensorProto.FLOAT, X_shape)]
    ins += [helper.make_tensor_value_info(n, t, s) for n, t, s in runtime_inputs]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Y_h", "Y_c")]
    graph = helper.make_graph([node], "g", ins, outs,
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def onnx_y_to_fl(Y):
    """ONNX Y [T, D, N, H] -> fastlstm batch-major [N, T, D*H]."""
    T, D, N, H = Y.shape
    return Y.transpose(2, 0, 1, 3).reshape(N, T, D * H)


def fl_states(state):
    """A layer's state (LSTMState or (fw, bw)) -> (h [D, N, H], c [D, N, H])."""
    dirs = [state] if isinstance(state, fl.LSTMState) else list(state)
    return np.stack([s.h for s in dirs]), np.stack([s.c for s in dirs])


# ---------------------------------------------------------------------------------------
# golden onnxruntime results -> from_onnx


@pytest.mark.parametrize("name", ["onnx_lstm_forward_f32", "onnx_lstm_bidir_seqlens_f32"])
def test_golden_from_onnx(name):
    g = np.load(os.path.join(DATA, name + ".npz"))
    bidir = "bidir" in name
    attrs = dict(hidden_size=g["W"].shape[1] // 4,
                 direction="bidirectional" if bidir else "forward")
    inputs = ["X", "W", "R", "B", "sequence_lens" if "sequence_lens" in g.files else "",
              "initial_h", "initial_c"]
    runtime = [("initial_h", TensorProto.FLOAT, None), ("initial_c", TensorProto.FLOAT, None)]
    if "sequence_lens" in g.files:
        runtime.append(("sequence_lens", TensorProto.INT32, None))
    proto = lstm_graph(list(g["X"].shape), {k: g[k] for k in ("W", "R", "B")}, inputs, attrs,
                       runtime)
    model = fl.from_onnx(proto)
    assert isinstance(model, fl.Bidirectional if bidir else fl.LSTM)
    D = 2 if bidir else 1
    s0 = [fl.LSTMState(g["initial_c"][d], g["initial_h"][d]) for d in range(D)]
    lengths = g["sequence_lens"] if "sequence_lens" in g.files else None
    Y, state = model(g["X"], initial_state=tuple(s0) if bidir else s0[0], lengths=lengths,
                     time_major=True)
    if lengths is not None:
        state = onnx_state(state, lengths)  # ONNX's rule for empty rows (if any)
    np.testing.assert_allclose(Y, g["Y"].transpose(0, 2, 1, 3).reshape(Y.shape), **TOL32)
    h, c = fl_states(state)
    np.testing.assert_allclose(h, g["Y_h"], **TOL32)
    np.testing.assert_allclose(c, g["Y_c"], **TOL32)


def test_golden_xfw_onnx_layout():
    g = np.load(os.path.join(DATA, "xfw_basic_tutorial_seqlen_f64.npz"))
    proto = lstm_graph([3, 2, 6], {k: g["onnx." + k] for k in ("W", "R", "B")},
                       ["X", "W", "R", "B"], dict(hidden_size=4))
    layer = fl.from_onnx(proto)
    assert layer.dtype == np.float64
    Y, s = layer(g["inputs"], initial_state=(g["initial_state.c"], g["initial_state.h"]),
                 lengths=g["sequence_length"])
    np.testing.assert_allclose(Y, g["outputs"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.c, g["final_state.c"], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------
# to_onnx, run by onnxruntime


def _rand_layer(rng, i, h, **kw):
    layer = fl.LSTM(i, h, random_state=int(rng.integers(1 << 30)), **kw)
    for v in layer.params.values():
        v[...] = rng.normal(scale=0.5, size=v.shape)
    return layer


def _model(kind, rng):
    if kind == "lstm":
        return _rand_layer(rng, 5, 4)
    if kind == "peepholes":
        return _rand_layer(rng, 5, 4, peepholes=True)
    if kind == "relu_hard_sigmoid":
        return _rand_layer(rng, 5, 4, activation="relu", recurrent_activation="hard_sigmoid")
    if kind == "sigmoid_keras2":
        return _rand_layer(rng, 5, 4, activation="sigmoid",
                           recurrent_activation="hard_sigmoid_keras2", peepholes=True)
    if kind == "linear":
        return _rand_layer(rng, 5, 4, activation="linear")
    if kind == "bidir":
        return fl.Bidirectional(_rand_layer(rng, 5, 4), _rand_layer(rng, 5, 4, peepholes=True))
    if kind == "bidir_mixed_acts":
        return fl.Bidirectional(_rand_layer(rng, 5, 4),
                                _rand_layer(rng, 5, 4, activation="linear",
                                            recurrent_activation="hard_sigmoid_keras2"))
    if kind == "reverse":
        return _rand_layer(rng, 5, 4, peepholes=True, reverse=True)
    if kind == "stack_reverse":     # direction="reverse" nodes between the others
        return fl.MultiLSTM([_rand_layer(rng, 5, 3, reverse=True), _rand_layer(rng, 3, 4),
                             fl.Bidirectional(_rand_layer(rng, 4, 2), _rand_layer(rng, 4, 2)),
                             _rand_layer(rng, 4, 3, reverse=True, activation="relu")])
    if kind == "stack":
        return fl.MultiLSTM([fl.Bidirectional(_rand_layer(rng, 5, 3), _rand_layer(rng, 5, 3)),
                             _rand_layer(rng, 6, 4, peepholes=True),
                             fl.Bidirectional(_rand_layer(rng, 4, 2), _rand_layer(rng, 4, 2))])
    raise KeyError(kind)


KINDS = ["lstm", "peepholes", "relu_hard_sigmoid", "sigmoid_keras2", "linear", "bidir",
         "bidir_mixed_acts", "stack", "reverse", "stack_reverse"]


def _layers(model):
    return model.layers if isinstance(model, fl.MultiLSTM) else [model]


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("kind", KINDS)
def test_to_onnx_runs_in_onnxruntime(kind, with_lengths):
    rng = np.random.default_rng(KINDS.index(kind))
    model = _model(kind, rng)
    N, T = 4, 6
    X = rng.normal(size=(N, T, 5)).astype(np.float32)
    lengths = np.array([6, 3, 1, 5], np.int32) if with_lengths else None
    s0 = tuple(_map(layer.zero_state(N), lambda a: rng.normal(size=a.shape).astype(np.float32))
               for layer in _layers(model))
    proto = fl.to_onnx(model, lengths=with_lengths, initial_state=True)
    feeds = {"X": X}
    if with_lengths:
        feeds["sequence_lens"] = lengths
    for k, s in enumerate(s0):
        h, c = fl_states(s)
        feeds[f"initial_h_{k}"], feeds[f"initial_c_{k}"] = h, c
    got = run_ort(proto, feeds)
    Y, state = model(X, initial_state=s0 if isinstance(model, fl.MultiLSTM) else s0[0],
                     lengths=lengths)
    states = state if isinstance(model, fl.MultiLSTM) else (state,)
    np.testing.assert_allclose(got["Y"], Y, **TOL32)
    for k, s in enumerate(states):
        h, c = fl_states(s)
        np.testing.assert_allclose(got[f"Y_h_{k}"], h, **TOL32)
        np.testing.assert_allclose(got[f"Y_c_{k}"], c, **TOL32)
    # the file reads back into the same parameters, exactly (a direction without
    # peepholes in a node that has P comes back with zero peepholes)
    back = fl.from_onnx(proto)
    assert type(back) is type(model)
    for a, b in zip(_layers(back), _layers(model)):
        assert type(a) is type(b)
        if isinstance(a, fl.LSTM):
            assert a.reverse == b.reverse
        for la, lb in zip(_dirs(a), _dirs(b)):
            assert (la.activation, la.recurrent_activation) == \
                (lb.activation, lb.recurrent_activation)
            for name, value in la.params.items():
                if name in lb.params:
                    np.testing.assert_array_equal(value, lb.params[name])
                else:
                    assert name == "peepholes" and not value.any()


def _dirs(item):
    return [item.forward_layer, item.backward_layer] if isinstance(item, fl.Bidirectional) \
        else [item]


def _map(state, fn):
    if isinstance(state, fl.LSTMState):
        return fl.LSTMState(fn(state.c), fn(state.h))
    return tuple(_map(s, fn) for s in state)


def test_to_onnx_time_major_and_path(tmp_path):
    rng = np.random.default_rng(3)
    model = fl.MultiLSTM([_rand_layer(rng, 5, 4), _rand_layer(rng, 4, 3)])
    path = tmp_path / "m.onnx"
    proto = fl.to_onnx(model, path, time_major=True)
    assert path.exists()
    X = rng.normal(size=(7, 2, 5)).astype(np.float32)
    got = run_ort(proto, {"X": X})
    Y, (s0, s1) = model(X, time_major=True)
    np.testing.assert_allclose(got["Y"], Y, **TOL32)
    np.testing.assert_allclose(got["Y_c_1"][0], s1.c, **TOL32)
    back = fl.from_onnx(str(path))
    np.testing.assert_array_equal(back.flat_params, model.flat_params)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(fl.from_onnx(f.read()).flat_params, model.flat_params)


def test_zero_length_rows_follow_onnx_only_through_onnx_state():
    rng = np.random.default_rng(4)
    model = _rand_layer(rng, 5, 4)
    X = rng.normal(size=(3, 4, 5)).astype(np.float32)
    lengths = np.array([4, 0, 2], np.int32)
    s0 = fl.LSTMState(rng.normal(size=(3, 4)).astype(np.float32),
                      rng.normal(size=(3, 4)).astype(np.float32))
    proto = fl.to_onnx(model, lengths=True, initial_state=True)
    got = run_ort(proto, {"X": X, "sequence_lens": lengths, "initial_h_0": s0.h[None],
                          "initial_c_0": s0.c[None]})
    Y, s = model(X, initial_state=s0, lengths=lengths)
    np.testing.assert_allclose(got["Y"], Y, **TOL32)
    # fastlstm (TF rule) returns the initial state for the empty row, ONNX returns zeros
    np.testing.assert_array_equal(s.c[1], s0.c[1])
    np.testing.assert_array_equal(got["Y_c_0"][0, 1], 0)
    so = onnx_state(s, lengths)
    np.testing.assert_allclose(got["Y_h_0"][0], so.h, **TOL32)
    np.testing.assert_allclose(got["Y_c_0"][0], so.c, **TOL32)


def test_float64_export_is_valid_and_reads_back():
    rng = np.random.default_rng(5)
    model = fl.Bidirectional(fl.LSTM(3, 2, dtype=np.float64, random_state=1),
                             fl.LSTM(3, 2, dtype=np.float64, random_state=2))
    proto = fl.to_onnx(model)
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    back = fl.from_onnx(proto)
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back.flat_params, model.flat_params)
    proto32 = fl.to_onnx(model, dtype=np.float32)  # onnxruntime runs float32 only
    X = rng.normal(size=(2, 3, 3))
    got = run_ort(proto32, {"X": X.astype(np.float32)})
    np.testing.assert_allclose(got["Y"], model(X)[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize("model, match", [
    (fl.LSTM(3, 4, proj_size=2), "projection"),
    (fl.LSTM(3, 4, cell_clip=1.0), "cell_clip"),
    (fl.Bidirectional(fl.LSTM(3, 4), fl.LSTM(3, 5)), "one hidden_size"),
])
def test_to_onnx_refuses(model, match):
    with pytest.raises(ValueError, match=match):
        fl.to_onnx(model)


def _single_node(attrs, rng, H=3, I=2, D=1, extra_inits=None, inputs=None):
    inits = {"W": rng.normal(size=(D, 4 * H, I)).astype(np.float32),
             "R": rng.normal(size=(D, 4 * H, H)).astype(np.float32)}
    inits.update(extra_inits or {})
    return lstm_graph([5, 2, I], inits, inputs or ["X", "W", "R"], dict(hidden_size=H, **attrs))


@pytest.mark.parametrize("attrs, match", [
    (dict(clip=3.0), "clip=3.0 clamps the gate pre-activations"),
    (dict(input_forget=1), "input_forget"),
    (dict(activations=["Sigmoid", "Tanh", "Relu"]), "differ"),
    (dict(activations=["Sigmoid", "LeakyRelu", "LeakyRelu"]), "cannot be represented"),
    (dict(activations=["HardSigmoid", "Tanh", "Tanh"], activation_alpha=[0.3],
          activation_beta=[0.5]), "HardSigmoid"),
    (dict(activations=["Tanh", "Tanh", "Tanh"]), "gate activation Tanh"),
    (dict(activations=["Sigmoid", "Affine", "Affine"], activation_alpha=[2.0, 2.0],
          activation_beta=[0.0, 0.0]), "Affine"),
    # Affine's alpha left out: ONNX's Affine defaults to 1 but onnxruntime computes with
    # 0 (all-zero outputs), so the node is refused, not guessed
    (dict(activations=["Sigmoid", "Affine", "Affine"]), "Affine without its alpha"),
    (dict(activations=["Sigmoid", "Affine", "Affine"], activation_beta=[0.0, 0.0]),
     "Affine without its alpha"),
])
def test_from_onnx_refuses(attrs, match):
    with pytest.raises(ValueError, match=match):
        fl.from_onnx(_single_node(attrs, np.random.default_rng(0)))


def test_from_onnx_hard_sigmoid_defaults_and_keras3():
    rng = np.random.default_rng(0)
    m = fl.from_onnx(_single_node(dict(activations=["HardSigmoid", "Tanh", "Tanh"]), rng))
    assert m.recurrent_activation == "hard_sigmoid_keras2"  # ONNX default alpha 0.2, beta 0.5
    m = fl.from_onnx(_single_node(dict(activations=["HardSigmoid", "Affine", "Affine"],
                                       activation_alpha=[1 / 6, 1.0, 1.0],
                                       activation_beta=[0.5, 0.0, 0.0]), rng))
    assert (m.recurrent_activation, m.activation) == ("hard_sigmoid", "linear")


def test_from_onnx_empty_activations_list_means_the_defaults():
    # an "activations" attribute holding no names: onnxruntime runs the default functions
    from onnx import AttributeProto, helper

    rng = np.random.default_rng(3)
    proto = _single_node({}, rng)
    proto.graph.node[0].attribute.append(
        helper.make_attribute("activations", [], attr_type=AttributeProto.STRINGS))
    model = fl.from_onnx(proto)
    assert (model.activation, model.recurrent_activation) == ("tanh", "sigmoid")
    X = rng.normal(size=(5, 2, 2)).astype(np.float32)
    got = run_ort(proto, {"X": X})
    np.testing.assert_allclose(got["Y"][:, 0], model(X, time_major=True)[0], **TOL32)


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_from_onnx_reverse_node_matches_onnxruntime(with_lengths):
    # a hand-built direction="reverse" node (with peepholes, stored initial state and
    # sequence_lens) becomes an LSTM with reverse=True
    rng = np.random.default_rng(4)
    H, I, N, T = 3, 2, 4, 6
    h0 = rng.normal(size=(1, N, H)).astype(np.float32)
    c0 = rng.normal(size=(1, N, H)).astype(np.float32)
    extra = {"B": rng.normal(size=(1, 8 * H)).astype(np.float32),
             "P": rng.normal(size=(1, 3 * H)).astype(np.float32), "h0": h0, "c0": c0}
    proto = lstm_graph([T, N, I], {"W": rng.normal(size=(1, 4 * H, I)).astype(np.float32),
                                   "R": rng.normal(size=(1, 4 * H, H)).astype(np.float32),
                                   **extra},
                       ["X", "W", "R", "B", "sequence_lens" if with_lengths else "", "h0", "c0",
                        "P"], dict(hidden_size=H, direction="reverse"),
                       runtime_inputs=[("sequence_lens", TensorProto.INT32, [N])]
                       if with_lengths else ())
    model, s0 = fl.from_onnx(proto, return_initial_state=True)
    assert isinstance(model, fl.LSTM) and model.reverse and model.use_peepholes
    X = rng.normal(size=(T, N, I)).astype(np.float32)
    L = np.array([6, 2, 1, 4], np.int32)
    feeds = {"X": X}
    if with_lengths:
        feeds["sequence_lens"] = L
    got = run_ort(proto, feeds)
    Y, s = model(X, initial_state=s0, lengths=L if with_lengths else None, time_major=True)
    np.testing.assert_allclose(got["Y"][:, 0], Y, **TOL32)
    np.testing.assert_allclose(got["Y_h"][0], s.h, **TOL32)
    np.testing.assert_allclose(got["Y_c"][0], s.c, **TOL32)


@pytest.mark.parametrize("beta", [[0.0, 0.0], [0.0], None], ids=["betas", "one_beta", "no_beta"])
def test_from_onnx_affine_identity_matches_onnxruntime(beta):
    # a missing beta is 0 for ONNX and onnxruntime alike
    rng = np.random.default_rng(3)
    attrs = dict(activations=["Sigmoid", "Affine", "Affine"], activation_alpha=[1.0, 1.0])
    if beta is not None:
        attrs["activation_beta"] = beta
    proto = _single_node(attrs, rng)
    model = fl.from_onnx(proto)
    assert model.activation == "linear"
    X = rng.normal(size=(5, 2, 2)).astype(np.float32)
    got = run_ort(proto, {"X": X})
    Y, s = model(X, time_major=True)
    np.testing.assert_allclose(got["Y"][:, 0], Y, **TOL32)
    np.testing.assert_allclose(got["Y_c"][0], s.c, **TOL32)


def test_from_onnx_without_bias_keeps_the_weights_dtype():
    rng = np.random.default_rng(5)
    model = fl.from_onnx(_single_node({}, rng))          # W and R float32, no B
    assert model.dtype == np.float32 and not model.b.any()


def test_from_onnx_stored_initial_state():
    rng = np.random.default_rng(1)
    h0 = rng.normal(size=(1, 2, 3)).astype(np.float32)
    c0 = rng.normal(size=(1, 2, 3)).astype(np.float32)
    proto = _single_node({}, rng, extra_inits={"h0": h0, "c0": c0},
                         inputs=["X", "W", "R", "", "", "h0", "c0"])
    with pytest.raises(ValueError, match="return_initial_state=True"):
        fl.from_onnx(proto)
    model, s0 = fl.from_onnx(proto, return_initial_state=True)
    np.testing.assert_array_equal(s0.h, h0[0])
    np.testing.assert_array_equal(s0.c, c0[0])
    X = rng.normal(size=(5, 2, 2)).astype(np.float32)
    got = run_ort(proto, {"X": X})
    Y, s = model(X, initial_state=s0, time_major=True)
    np.testing.assert_allclose(got["Y"][:, 0], Y, **TOL32)
    np.testing.assert_allclose(got["Y_c"][0], s.c, **TOL32)
    # one part stored as zeros, the other omitted (zeros in ONNX): a zero state, not
    # "only one of initial_h / initial_c is stored"
    zero = _single_node({}, rng, extra_inits={"h0": np.zeros_like(h0)},
                        inputs=["X", "W", "R", "", "", "h0"])
    np.testing.assert_allclose(fl.from_onnx(zero)(X, time_major=True)[0],
                               run_ort(zero, {"X": X})["Y"][:, 0], **TOL32)
    # one part stored, the other omitted: that one is zeros (ONNX; it was refused)
    for name, value in (("h0", h0), ("c0", c0)):
        inputs = ["X", "W", "R", "", "", "h0"] if name == "h0" else \
            ["X", "W", "R", "", "", "", "c0"]
        half = _single_node({}, rng, extra_inits={name: value}, inputs=inputs)
        model, s0 = fl.from_onnx(half, return_initial_state=True)
        assert not (s0.c if name == "h0" else s0.h).any()
        Y, s = model(X, initial_state=s0, time_major=True)
        got = run_ort(half, {"X": X})
        np.testing.assert_allclose(got["Y"][:, 0], Y, **TOL32)
        np.testing.assert_allclose(got["Y_h"][0], s.h, **TOL32)
        np.testing.assert_allclose(got["Y_c"][0], s.c, **TOL32)


def test_from_onnx_refuses_non_stack_graphs():
    rng = np.random.default_rng(2)
    H, I = 3, 2
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
             for n, s in (("W", (1, 4 * H, I)), ("R", (1, 4 * H, H)))]
    nodes = [helper.make_node("LSTM", ["X", "W", "R"], [f"Y{k}"], hidden_size=H)
             for k in range(2)]  # two LSTMs side by side on the same input
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(f"Y{k}", TensorProto.FLOAT, None)
                               for k in range(2)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    with pytest.raises(ValueError, match="not a plain stack"):
        fl.from_onnx(proto)
    empty = helper.make_model(helper.make_graph([], "g", [], []))
    with pytest.raises(ValueError, match="no LSTM node"):
        fl.from_onnx(empty)
    with pytest.raises(TypeError, match="onnx.ModelProto"):
        fl.from_onnx(12)
    with pytest.raises(ValueError, match="not a valid ONNX model"):   # was protobuf's error
        fl.from_onnx(b"garbage")


def test_from_onnx_layout_1_initial_state():
    rng = np.random.default_rng(3)
    h0 = rng.normal(size=(2, 1, 3)).astype(np.float32)  # layout 1: [N, D, H]
    c0 = rng.normal(size=(2, 1, 3)).astype(np.float32)
    proto = _single_node(dict(layout=1), rng, extra_inits={"h0": h0, "c0": c0},
                         inputs=["X", "W", "R", "", "", "h0", "c0"])
    _, s0 = fl.from_onnx(proto, return_initial_state=True)
    np.testing.assert_array_equal(s0.h, h0[:, 0])
    np.testing.assert_array_equal(s0.c, c0[:, 0])


@pytest.mark.parametrize("opset, folding", [(14, True), (9, False), (14, False), (17, False)])
def test_from_onnx_reads_torch_exported_graphs(opset, folding):
    """torch's export; without constant folding its graph reorders the gates of W, R and
    B with Slice / Concat nodes on the stored weights (that was refused as "not stored")."""
    torch = pytest.importorskip("torch")
    import io
    import warnings

    torch.manual_seed(0)
    m = torch.nn.LSTM(5, 4, num_layers=2, bidirectional=True)
    x = torch.randn(3, 2, 5)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(m, (x,), buf, dynamo=False, opset_version=opset,
                              input_names=["X"], do_constant_folding=folding)
        except Exception as exc:  # pragma: no cover - depends on the torch build
            pytest.skip(f"torch's ONNX exporter is unavailable: {exc}")
    proto = onnx.load_from_string(buf.getvalue())
    lstm_inputs = [n.input[1] for n in proto.graph.node if n.op_type == "LSTM"]
    stored = {t.name for t in proto.graph.initializer}
    assert all(w in stored for w in lstm_inputs) == folding    # the case this test is about
    model = fl.from_onnx(buf.getvalue())
    assert isinstance(model, fl.MultiLSTM) and len(model) == 2
    Y, _ = model(x.numpy(), time_major=True)
    with torch.no_grad():
        want = m(x)[0].numpy()
    np.testing.assert_allclose(Y, want, **TOL32)
    np.testing.assert_allclose(Y, run_ort(proto, {"X": x.numpy()})[proto.graph.output[0].name],
                               **TOL32)


@pytest.mark.parametrize("layers", [1, 2])
def test_from_onnx_torch_graphs_with_computed_initial_states(layers):
    """torch's export computes the initial state inside the graph: zeros (ConstantOfShape)
    for a call without one, a graph input's values when the caller passes it, and a
    broadcast of stored values for a learned initial state, which the model alone cannot
    reproduce: refused (it was dropped, and the outputs silently differed)."""
    torch = pytest.importorskip("torch")
    import io
    import warnings

    torch.manual_seed(0)

    class Learned(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(5, 4, num_layers=layers, batch_first=True)
            self.h0 = torch.nn.Parameter(torch.randn(layers, 1, 4))
            self.c0 = torch.nn.Parameter(torch.randn(layers, 1, 4))

        def forward(self, x):
            n = x.shape[0]
            return self.lstm(x, (self.h0.expand(-1, n, -1).contiguous(),
                                 self.c0.expand(-1, n, -1).contiguous()))[0]

    class Given(torch.nn.Module):
        def __init__(self, lstm):
            super().__init__()
            self.lstm = lstm

        def forward(self, x, h0, c0):
            return self.lstm(x, (h0, c0))[0]

    learned = Learned().eval()
    x = torch.randn(3, 6, 5)
    h0, c0 = torch.randn(layers, 3, 4), torch.randn(layers, 3, 4)

    def export(module, args, names):
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(module, args, buf, dynamo=False, opset_version=14,
                                  input_names=names, dynamic_axes={"x": {0: "n"}})
            except Exception as exc:  # pragma: no cover - depends on the torch build
                pytest.skip(f"torch's ONNX exporter is unavailable: {exc}")
        return buf.getvalue()

    with pytest.raises(ValueError, match="initial_h is computed from values stored"):
        fl.from_onnx(export(learned, (x,), ["x"]))
    # the same LSTM without a state (zeros), and with the state as graph inputs
    plain = fl.from_onnx(export(learned.lstm, (x,), ["x"]))
    given = fl.from_onnx(export(Given(learned.lstm), (x, h0, c0), ["x", "h0", "c0"]))
    with torch.no_grad():
        want0 = learned.lstm(x)[0].numpy()
        want1 = learned.lstm(x, (h0, c0))[0].numpy()
    np.testing.assert_allclose(plain(x.numpy())[0], want0, **TOL32)
    state = tuple(fl.LSTMState(c0[k].numpy(), h0[k].numpy()) for k in range(layers))
    Y, _ = given(x.numpy(), initial_state=state if layers > 1 else state[0])
    np.testing.assert_allclose(Y, want1, **TOL32)


def test_from_onnx_warns_about_stored_sequence_lens():
    rng = np.random.default_rng(2)
    proto = _single_node({}, rng, extra_inits={"L": np.array([5, 3], np.int32)},
                         inputs=["X", "W", "R", "", "L"])
    with pytest.warns(UserWarning, match=r"stores sequence_lens \[5, 3\].*pass lengths="):
        fl.from_onnx(proto)


def _two_nodes(rng, links, layouts=(0, 0), directions=("forward", "forward"), H=3, I=2,
               extra=()):
    """Two LSTM nodes; between them ``links``: (op, attrs, stored inputs) applied in order
    to the first node's Y.  The graph's output is the second node's Y."""
    D0 = 2 if directions[0] == "bidirectional" else 1
    D1 = 2 if directions[1] == "bidirectional" else 1
    inits = {"W0": (D0, 4 * H, I), "R0": (D0, 4 * H, H), "B0": (D0, 8 * H),
             "W1": (D1, 4 * H, D0 * H), "R1": (D1, 4 * H, H), "B1": (D1, 8 * H)}
    tensors = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
               for n, s in inits.items()]
    nodes = [helper.make_node("LSTM", ["X", "W0", "R0", "B0"], ["Y0"], hidden_size=H,
                              layout=layouts[0], direction=directions[0])]
    name = "Y0"
    for k, (op, attrs, stored) in enumerate(links):
        ins = [name]
        for j, value in enumerate(stored):
            tensors.append(numpy_helper.from_array(np.asarray(value, np.int64), f"s{k}_{j}"))
            ins.append(f"s{k}_{j}")
        nodes.append(helper.make_node(op, ins, [f"L{k}"], **attrs))
        name = f"L{k}"
    nodes.append(helper.make_node("LSTM", [name, "W1", "R1", "B1"], ["Y1"], hidden_size=H,
                                  layout=layouts[1], direction=directions[1]))
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("Y1", TensorProto.FLOAT, None)],
                              tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


BIDIR = ("bidirectional", "forward")
LINKS_OK = {
    # torch's export: Squeeze the direction axis / Transpose + Reshape for two directions
    "squeeze": ([("Squeeze", {}, [[1]])], (0, 0), ("forward", "forward")),
    "bidir_transpose_reshape": ([("Transpose", dict(perm=[0, 2, 1, 3]), []),
                                 ("Reshape", {}, [[0, 0, -1]])], (0, 0), BIDIR),
    "bidir_explicit_features": ([("Transpose", dict(perm=[0, 2, 1, 3]), []),
                                 ("Reshape", {}, [[0, 0, 6]])], (0, 0), BIDIR),
    "bidir_flatten_back": ([("Transpose", dict(perm=[0, 2, 1, 3]), []),
                            ("Reshape", {}, [[0, -1, 6]])], (0, 0), BIDIR),
    "layout_1": ([("Squeeze", {}, [[-2]])], (1, 1), ("forward", "forward")),
    "layout_1_bidir": ([("Reshape", {}, [[0, 0, -1]])], (1, 1), BIDIR),
    "layout_0_to_1": ([("Squeeze", {}, [[1]]), ("Transpose", dict(perm=[1, 0, 2]), [])],
                      (0, 1), ("forward", "forward")),
    "unsqueeze_squeeze": ([("Squeeze", {}, [[1]]), ("Unsqueeze", {}, [[0]]),
                           ("Squeeze", {}, [[0]]), ("Identity", {}, [])], (0, 0),
                          ("forward", "forward")),
}


@pytest.mark.parametrize("case", LINKS_OK)
def test_from_onnx_stacks_joined_by_shape_operations(case):
    """Whatever shape operations join two nodes, as long as the second one reads
    [time, batch, forward | backward], the MultiLSTM matches onnxruntime."""
    links, layouts, dirs = LINKS_OK[case]
    rng = np.random.default_rng(3)
    proto = _two_nodes(rng, links, layouts, dirs)
    X = rng.normal(size=(5, 4, 2)).astype(np.float32)   # [T, N, I] or [N, T, I]
    if 1 in layouts:   # onnxruntime has no layout 1: onnx's own reference evaluator
        from onnx.reference import ReferenceEvaluator
        Y = ReferenceEvaluator(proto).run(None, {"X": X})[0]
    else:
        Y = run_ort(proto, {"X": X})["Y1"]
    got, _ = fl.from_onnx(proto)(X, time_major=layouts[0] == 0)
    want = Y[:, 0] if layouts[1] == 0 else Y[:, :, 0]
    if layouts[0] != layouts[1]:   # the second node reads [N, T, ...]: output batch-major
        got = got.transpose(1, 0, 2)
    np.testing.assert_allclose(got, want, **TOL32)


LINKS_BAD = {
    # time and batch swapped: onnxruntime runs the second node over the batch axis
    "swap_time_batch": ([("Squeeze", {}, [[1]]), ("Transpose", dict(perm=[1, 0, 2]), [])],
                        ("forward", "forward"), r"\[batch, time, features\]"),
    "merge_batch_into_features": ([("Reshape", {}, [[0, 1, -1]])], ("forward", "forward"),
                                  "splits or merges the time or batch|not a plain stack"),
    "bidir_without_transpose": ([("Reshape", {}, [[0, 0, -1]])], BIDIR, "not a plain stack"),
    "directions_swapped": ([("Transpose", dict(perm=[0, 2, 3, 1]), []),
                            ("Reshape", {}, [[0, 0, -1]])], BIDIR, "not a plain stack"),
    "squeeze_a_real_axis": ([("Squeeze", {}, [[3]])], ("forward", "forward"),
                            "not of size 1"),
    "computed_shape": ([("Reshape", {}, [])], ("forward", "forward"), "cannot be checked"),
}


@pytest.mark.parametrize("case", LINKS_BAD)
def test_from_onnx_refuses_links_that_move_time_or_batch(case):
    """A stack whose shape operations give the second node anything but [time, batch,
    forward | backward] is refused: the MultiLSTM would compute something else (the
    first case used to import and differ from onnxruntime)."""
    links, dirs, match = LINKS_BAD[case]
    proto = _two_nodes(np.random.default_rng(3), links, (0, 0), dirs)
    if case == "computed_shape":   # the Reshape's shape comes from a graph input
        node = [n for n in proto.graph.node if n.op_type == "Reshape"][0]
        node.input.append("shape")
        proto.graph.input.append(helper.make_tensor_value_info("shape", TensorProto.INT64,
                                                               [3]))
    with pytest.raises(ValueError, match=match):
        fl.from_onnx(proto)


@pytest.mark.parametrize("op", ["Add", "Mul", "Neg"])
def test_from_onnx_refuses_initial_states_computed_by_arithmetic(op):
    """initial_h = op(graph input, stored values) is not the state the caller passes:
    refused (Add with a stored offset used to import, the offset dropped); arithmetic on
    stored zeros alone still imports."""
    rng = np.random.default_rng(4)
    H, I, N = 3, 2, 4
    inits = {"W": rng.normal(size=(1, 4 * H, I)).astype(np.float32),
             "R": rng.normal(size=(1, 4 * H, H)).astype(np.float32),
             "off": rng.normal(size=(1, N, H)).astype(np.float32),
             "zero": np.zeros((1, N, H), np.float32)}

    def graph(a, b):
        ins = [a] if op == "Neg" else [a, b]
        nodes = [helper.make_node(op, ins, ["h0"]),
                 helper.make_node("LSTM", ["X", "W", "R", "", "", "h0", "c_in"], ["Y"],
                                  hidden_size=H)]
        g = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                         for n in ("X", "h_in", "c_in")],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(v, k) for k, v in inits.items()])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])

    with pytest.raises(ValueError, match="initial_h is computed .* by arithmetic"):
        fl.from_onnx(graph("h_in", "off"))
    fl.from_onnx(graph("zero", "zero"))


def _dynamo_like(rng, computed, swap=False, T=5, N=4, H=3, I=2):
    """Two bidirectional nodes joined the way torch's dynamo exporter joins them:
    Transpose [0, 2, 1, 3], then a Reshape to [T, N, 2H] whose shape is stored with the
    sizes the model was exported for (X declared with them), or computed in the graph
    from the Transpose's output: Shape -> Slice -> Mul -> Concat."""
    f = np.float32
    inits = {"W0": rng.normal(size=(2, 4 * H, I)).astype(f),
             "R0": rng.normal(size=(2, 4 * H, H)).astype(f),
             "W1": rng.normal(size=(2, 4 * H, 2 * H)).astype(f),
             "R1": rng.normal(size=(2, 4 * H, H)).astype(f)}
    ints = {"i0": [0], "i1": [1], "i2": [2], "i3": [3], "i4": [4], "m1": [-1],
            "fixed": [N, T, 2 * H] if swap else [T, N, 2 * H]}
    nodes = [helper.make_node("LSTM", ["X", "W0", "R0"], ["Y0"], hidden_size=H,
                              direction="bidirectional"),
             helper.make_node("Transpose", ["Y0"], ["Yt"], perm=[0, 2, 1, 3])]
    if computed:
        nodes += [helper.make_node("Shape", ["Yt"], ["s"])]
        nodes += [helper.make_node("Slice", ["s", f"i{k}", f"i{k + 1}"], [f"d{k}"])
                  for k in range(4)]
        nodes += [helper.make_node("Mul", ["d2", "d3"], ["dh"]),
                  helper.make_node("Reshape", ["dh", "m1"], ["dhf"]),
                  helper.make_node("Concat", ["d1", "d0", "dhf"] if swap else
                                   ["d0", "d1", "dhf"], ["shape"], axis=0)]
    nodes += [helper.make_node("Reshape", ["Yt", "shape" if computed else "fixed"], ["X1"]),
              helper.make_node("LSTM", ["X1", "W1", "R1"], ["Y1"], hidden_size=H,
                               direction="bidirectional")]
    tensors = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    tensors += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, N, I])],
        [helper.make_tensor_value_info("Y1", TensorProto.FLOAT, None)], tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("computed", [False, True], ids=["stored_sizes", "computed"])
def test_from_onnx_reads_dynamo_style_links(computed):
    """torch's dynamo exporter reshapes between layers to sizes stored for the export,
    or computed from Shape: both followed (sizes from ONNX's shape inference); the same
    graphs with time and batch swapped in the shape are refused."""
    rng = np.random.default_rng(5)
    proto = _dynamo_like(rng, computed)
    X = rng.normal(size=(5, 4, 2)).astype(np.float32)
    want = onnx_y_to_fl(run_ort(proto, {"X": X})["Y1"])
    got, _ = fl.from_onnx(proto)(X, time_major=True)
    np.testing.assert_allclose(got.transpose(1, 0, 2), want, **TOL32)
    with pytest.raises(ValueError, match="not a plain stack|splits or merges"):
        fl.from_onnx(_dynamo_like(rng, computed, swap=True))


def test_from_onnx_opset9_computed_shape_and_squeeze_without_axes():
    """Opset 9's Slice keeps starts / ends in attributes (torch's legacy export at opset 9
    computes a Reshape's shape that way: it raised IndexError); a Squeeze without axes
    also removes the time or batch axis when it has size 1, so it is refused."""
    rng = np.random.default_rng(9)
    H, I = 3, 2
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
             for n, s in (("W0", (1, 4 * H, I)), ("R0", (1, 4 * H, H)),
                          ("W1", (1, 4 * H, H)), ("R1", (1, 4 * H, H)))]
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "m1"))

    def graph(between, opset):
        nodes = [helper.make_node("LSTM", ["X", "W0", "R0"], ["Y0"], hidden_size=H)]
        nodes += between + [helper.make_node("LSTM", ["Z", "W1", "R1"], ["Y1"],
                                             hidden_size=H)]
        g = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", I])],
            [helper.make_tensor_value_info("Y1", TensorProto.FLOAT, None)], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])

    sliced = graph([helper.make_node("Shape", ["Y0"], ["s"]),
                    helper.make_node("Slice", ["s"], ["s0"], starts=[0], ends=[1], axes=[0]),
                    helper.make_node("Slice", ["s"], ["s2"], starts=[2], ends=[3], axes=[0]),
                    helper.make_node("Concat", ["s0", "s2", "m1"], ["shape"], axis=0),
                    helper.make_node("Reshape", ["Y0", "shape"], ["Z"])], 9)
    sliced.ir_version = 7
    X = rng.normal(size=(5, 4, I)).astype(np.float32)
    want = run_ort(sliced, {"X": X})["Y1"][:, 0]
    np.testing.assert_allclose(fl.from_onnx(sliced)(X, time_major=True)[0], want, **TOL32)
    squeezed = graph([helper.make_node("Squeeze", ["Y0"], ["Z"])], 14)
    with pytest.raises(ValueError, match="no axes: it also removes the time or batch"):
        fl.from_onnx(squeezed)


@pytest.mark.parametrize("case", ["input_twice", "cast_int", "cast_half"])
def test_from_onnx_refuses_states_that_change_the_input(case):
    """A computed state that reads the graph input twice, once through arithmetic, or
    casts it to integers / half precision, is not the input moved: refused (both were
    accepted, and differed from onnxruntime)."""
    rng = np.random.default_rng(10)
    H, I = 2, 2
    f32 = np.float32
    inits = {"W": rng.normal(size=(1, 4 * H, I)).astype(f32),
             "R": rng.normal(size=(1, 4 * H, H)).astype(f32),
             "zeros": np.zeros((1, 1, H), f32)}
    ints = {"i0": [0], "i1": [1]}
    if case == "input_twice":
        nodes = [helper.make_node("Slice", ["h_in", "i0", "i1", "i1"], ["first"]),
                 helper.make_node("Sub", ["zeros", "first"], ["neg"]),
                 helper.make_node("Concat", ["h_in", "neg"], ["h0"], axis=1)]
    else:
        to = TensorProto.INT32 if case == "cast_int" else TensorProto.FLOAT16
        nodes = [helper.make_node("Cast", ["h_in"], ["narrow"], to=to),
                 helper.make_node("Cast", ["narrow"], ["h0"], to=TensorProto.FLOAT)]
    nodes.append(helper.make_node("LSTM", ["X", "W", "R", "", "", "h0"], ["Y"],
                                  hidden_size=H))
    tensors = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    tensors += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                       for n in ("X", "h_in")],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], tensors)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    with pytest.raises(ValueError, match="initial_h is computed"):
        fl.from_onnx(proto)
    if case == "cast_int":   # a cast between float types keeps the state the caller passes
        proto.graph.node[0].attribute[0].i = TensorProto.DOUBLE
        fl.from_onnx(proto)


def test_from_onnx_sizes_come_from_declared_inputs_only():
    """A value_info hint stating sizes the graph input leaves open does not make a Reshape
    to those sizes acceptable (onnxruntime runs the graph for other sizes, where the
    Reshape moves rows across time and batch)."""
    rng = np.random.default_rng(11)
    H, I = 3, 2
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
             for n, s in (("W0", (1, 4 * H, I)), ("R0", (1, 4 * H, H)),
                          ("W1", (1, 4 * H, H)), ("R1", (1, 4 * H, H)))]
    inits.append(numpy_helper.from_array(np.array([5, 2, -1], np.int64), "shape"))
    nodes = [helper.make_node("LSTM", ["X", "W0", "R0"], ["Y0"], hidden_size=H),
             helper.make_node("Reshape", ["Y0", "shape"], ["Z"]),
             helper.make_node("LSTM", ["Z", "W1", "R1"], ["Y1"], hidden_size=H)]

    def graph(x_shape, hints):
        g = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info("Y1", TensorProto.FLOAT, None)], inits,
            value_info=hints)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])

    hint = [helper.make_tensor_value_info("Y0", TensorProto.FLOAT, [5, 1, 2, H])]
    with pytest.raises(ValueError, match="splits or merges the time or batch"):
        fl.from_onnx(graph(["T", "N", I], hint))
    static = graph([5, 2, I], [])         # declared by the input itself: the export's sizes
    X = rng.normal(size=(5, 2, I)).astype(np.float32)
    np.testing.assert_allclose(fl.from_onnx(static)(X, time_major=True)[0],
                               run_ort(static, {"X": X})["Y1"][:, 0], **TOL32)


@pytest.mark.parametrize("order", ["fw_bw", "bw_fw", "fw_only"])
def test_from_onnx_tf2onnx_direction_slices(order):
    """tf2onnx joins a bidirectional node to the next one by slicing each direction out
    of Y, squeezing it and concatenating [forward | backward] on the feature axis: a plain
    stack, read as one (it was refused); the halves the other way round, or one half
    alone, are not."""
    rng = np.random.default_rng(12)
    H, I, T, N = 3, 2, 5, 4
    f32 = np.float32
    width = H if order == "fw_only" else 2 * H
    inits = [numpy_helper.from_array(rng.normal(size=(2, 4 * H, I)).astype(f32), "W0"),
             numpy_helper.from_array(rng.normal(size=(2, 4 * H, H)).astype(f32), "R0"),
             numpy_helper.from_array(rng.normal(size=(1, 4 * H, width)).astype(f32), "W1"),
             numpy_helper.from_array(rng.normal(size=(1, 4 * H, H)).astype(f32), "R1")]
    inits += [numpy_helper.from_array(np.array([k], np.int64), f"c{k}") for k in range(3)]
    halves = {"fw_bw": ["fw", "bw"], "bw_fw": ["bw", "fw"], "fw_only": ["fw"]}[order]
    nodes = [helper.make_node("LSTM", ["X", "W0", "R0"], ["Y0"], hidden_size=H,
                              direction="bidirectional"),
             helper.make_node("Slice", ["Y0", "c1", "c2", "c1"], ["bw4"]),
             helper.make_node("Squeeze", ["bw4", "c1"], ["bw"]),
             helper.make_node("Slice", ["Y0", "c0", "c1", "c1"], ["fw4"]),
             helper.make_node("Squeeze", ["fw4", "c1"], ["fw"])]
    if len(halves) == 2:
        nodes.append(helper.make_node("Concat", halves, ["X1"], axis=2))
    else:
        nodes.append(helper.make_node("Identity", halves, ["X1"]))
    nodes.append(helper.make_node("LSTM", ["X1", "W1", "R1"], ["Y1"], hidden_size=H))
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", I])],
                          [helper.make_tensor_value_info("Y1", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    if order != "fw_bw":
        with pytest.raises(ValueError, match="Concat before it|one direction"):
            fl.from_onnx(proto)
        return
    X = rng.normal(size=(T, N, I)).astype(f32)
    want = run_ort(proto, {"X": X})["Y1"][:, 0]
    np.testing.assert_allclose(fl.from_onnx(proto)(X, time_major=True)[0], want, **TOL32)


@pytest.mark.parametrize("opset", [7, 9, 13])
def test_export_to_older_opsets_runs_in_onnxruntime(opset):
    """The exported graph (LSTM nodes, Transpose, Reshape with its shape as an input) means
    the same from opset 7 on: it was refused below 14."""
    import onnx
    rng = np.random.default_rng(opset)
    model = fl.MultiLSTM([fl.Bidirectional(fl.LSTM(3, 4, peepholes=True, random_state=0),
                                           fl.LSTM(3, 4, random_state=1)),
                          fl.LSTM(8, 2, recurrent_activation="hard_sigmoid", random_state=2)])
    proto = fl.to_onnx(model, opset=opset, lengths=True)
    assert proto.opset_import[0].version == opset
    onnx.checker.check_model(proto, full_check=True)
    X = rng.normal(size=(3, 5, 3)).astype(np.float32)
    L = np.array([5, 0, 3], np.int32)
    got = run_ort(proto, {"X": X, "sequence_lens": L})
    np.testing.assert_allclose(got["Y"], model(X, lengths=L)[0], **TOL32)


def test_to_onnx_argument_checks(tmp_path):
    """graph_name, path and opset were not checked (the onnx checker's or os.fspath's
    errors; an opset beyond onnx's newest passed the checker and onnxruntime refused it;
    np.int64(14) was refused with a message that contradicted itself)."""
    import io
    import onnx
    model = fl.LSTM(3, 4, random_state=0)
    newest = onnx.defs.onnx_opset_version()
    for opset in (6, newest + 1, 14.0, True):
        with pytest.raises(ValueError, match=f"opset must be an int from 7 .* to {newest}"):
            fl.to_onnx(model, opset=opset)
    assert fl.to_onnx(model, opset=np.int64(14)).opset_import[0].version == 14
    for name in ("", None, 5):
        with pytest.raises(TypeError, match="graph_name must be a non-empty str"):
            fl.to_onnx(model, graph_name=name)
    with pytest.raises(TypeError, match="path must be None, a path or a binary file"):
        fl.to_onnx(model, path=3)
    buf = io.BytesIO()
    fl.to_onnx(model, path=buf)
    X = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(fl.from_onnx(buf.getvalue())(X)[0], model(X)[0])


def test_from_onnx_refuses_undefined_layouts_and_bad_stored_states():
    rng = np.random.default_rng(11)
    with pytest.raises(ValueError, match=r"layout=2 \(ONNX defines 0 and 1\)"):
        fl.from_onnx(_single_node(dict(layout=2), rng))
    # a stored all-zero state of a wrong shape was accepted (onnxruntime refuses it)
    for layout, value in ((0, np.zeros((7, 7), np.float32)),
                          (1, np.zeros(3, np.float32))):
        bad = _single_node(dict(layout=layout), rng, extra_inits={"h0": value},
                           inputs=["X", "W", "R", "", "", "h0"])
        with pytest.raises(ValueError, match="initial_h must have shape"):
            fl.from_onnx(bad, return_initial_state=True)


def test_from_onnx_bytes_of_a_model_with_external_data(tmp_path):
    import onnx
    proto = fl.to_onnx(fl.LSTM(3, 40, random_state=0))
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path), save_as_external_data=True, size_threshold=0)
    with pytest.raises(ValueError, match="external data files, which bytes do not carry"):
        fl.from_onnx(path.read_bytes())
    with pytest.raises(ValueError, match="external data files that are not loaded"):
        fl.from_onnx(proto)                    # onnx.save turned it into references
    X = np.ones((1, 2, 3), np.float32)
    np.testing.assert_array_equal(fl.from_onnx(path)(X)[0],
                                  fl.LSTM(3, 40, random_state=0)(X)[0])


def _external_model(tmp_path, sub, seed, constants=False):
    """A one-layer model saved with its weights in ``sub/w.bin``; with ``constants`` the
    weights are Constant nodes, not initializers.  Returns (path, the layer it holds)."""
    layer = fl.LSTM(3, 5, random_state=seed)
    proto = fl.to_onnx(layer)
    if constants:
        graph = proto.graph
        nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in graph.initializer]
        del graph.initializer[:]
        old = list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes + old)
    (tmp_path / sub).mkdir()
    path = tmp_path / sub / "m.onnx"
    onnx.save(proto, str(path), save_as_external_data=True, location="w.bin",
              size_threshold=0, convert_attribute=constants)
    return path, layer


@pytest.mark.parametrize("constants", [False, True])
def test_from_onnx_external_data_never_read_from_the_working_directory(tmp_path, monkeypatch,
                                                                      constants):
    """A model given as bytes, a file object without a path or a ModelProto whose external
    data is not loaded: onnx would read the tensors from files of that name in the
    working directory (another model's weights), or, for a BytesIO, it did: refused."""
    import io
    path, layer = _external_model(tmp_path, "model", 0, constants)
    _external_model(tmp_path, "other", 1, constants)     # a decoy w.bin of the same size
    monkeypatch.chdir(tmp_path / "other")
    data = path.read_bytes()
    with pytest.raises(ValueError, match="file object has no path to find them by"):
        fl.from_onnx(io.BytesIO(data))
    with pytest.raises(ValueError, match="external data files, which bytes do not carry"):
        fl.from_onnx(data)
    with pytest.raises(ValueError, match="external data files that are not loaded"):
        fl.from_onnx(onnx.load(str(path), load_external_data=False))
    X = np.random.default_rng(2).normal(size=(2, 4, 3)).astype(np.float32)
    want = layer(X)[0]
    with open(path, "rb") as fh:         # an open file knows its path: its own w.bin
        np.testing.assert_array_equal(fl.from_onnx(fh)(X)[0], want)
    np.testing.assert_array_equal(fl.from_onnx(path)(X)[0], want)
    np.testing.assert_array_equal(fl.from_onnx(onnx.load(str(path)))(X)[0], want)


def test_from_onnx_refuses_an_input_stored_in_the_model():
    """The first node's X an initializer, the graph without inputs: the imported model
    would ignore the stored X (as a Constant node's X already was refused)."""
    rng = np.random.default_rng(0)
    model = _single_node({}, rng, extra_inits={"X": np.ones((5, 2, 2), np.float32)})
    del model.graph.input[:]
    with pytest.raises(ValueError, match="X is not a graph input but a value stored"):
        fl.from_onnx(model)


def test_onnx_state_checks_its_arguments():
    s = fl.LSTMState(np.ones((2, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="lengths must be >= 0"):
        onnx_state(s, [-1, 1])
    with pytest.raises(ValueError, match=r"state.h must be 2-D with one row per length"):
        onnx_state(fl.LSTMState(np.ones((2, 4)), np.ones((3, 4))), [0, 1])
    with pytest.raises(ValueError, match=r"state.c must be 2-D"):
        onnx_state(fl.LSTMState(np.float64(1.0), np.float64(1.0)), [1])


def test_from_onnx_stored_state_part_with_the_other_computed_as_zeros():
    """One part stored, the other ConstantOfShape(0) (as exporters write zeros): the
    zeros as if omitted (it was refused as "a graph input")."""
    rng = np.random.default_rng(12)
    I, H, N, T = 3, 4, 2, 5
    W = rng.normal(size=(1, 4 * H, I)).astype(np.float32)
    R = rng.normal(size=(1, 4 * H, H)).astype(np.float32)
    h0 = rng.normal(size=(1, N, H)).astype(np.float32)
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"),
             numpy_helper.from_array(h0, "h0"),
             numpy_helper.from_array(np.array([1, N, H], np.int64), "c0_shape")]
    nodes = [helper.make_node("ConstantOfShape", ["c0_shape"], ["c0"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
             helper.make_node("LSTM", ["X", "W", "R", "", "", "h0", "c0"], ["Y"],
                              hidden_size=H)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, N, I])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    X = rng.normal(size=(T, N, I)).astype(np.float32)
    model, s0 = fl.from_onnx(proto, return_initial_state=True)
    assert not s0.c.any()
    np.testing.assert_allclose(model(X, initial_state=s0, time_major=True)[0],
                               run_ort(proto, {"X": X})["Y"][:, 0], **TOL32)


@pytest.mark.parametrize("stored", ["initial_h", "initial_c"])
def test_from_onnx_stored_zero_part_with_the_other_a_graph_input(stored):
    """One part stored as zeros, the other a graph input: the zeros as if computed (the
    caller passes the state whole), not refused as half-stored."""
    rng = np.random.default_rng(13)
    I, H, N, T = 2, 3, 2, 4
    W = rng.uniform(-1, 1, (1, 4 * H, I)).astype(np.float32)
    R = rng.uniform(-1, 1, (1, 4 * H, H)).astype(np.float32)
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"),
             numpy_helper.from_array(np.zeros((1, N, H), np.float32), "s0")]
    given = "c0" if stored == "initial_h" else "h0"
    names = ["s0", "c0"] if stored == "initial_h" else ["h0", "s0"]
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["X", "W", "R", "", ""] + names, ["Y"], hidden_size=H)],
        "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, N, I]),
              helper.make_tensor_value_info(given, TensorProto.FLOAT, [1, N, H])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    X = rng.normal(size=(T, N, I)).astype(np.float32)
    part = rng.normal(size=(1, N, H)).astype(np.float32)
    zeros = np.zeros((N, H), np.float32)
    state = fl.LSTMState(part[0], zeros) if given == "c0" else fl.LSTMState(zeros, part[0])
    np.testing.assert_allclose(fl.from_onnx(proto)(X, initial_state=state, time_major=True)[0],
                               run_ort(proto, {"X": X, given: part})["Y"][:, 0], **TOL32)


def test_from_onnx_folds_weights_computed_from_stored_values_only():
    """W, R and B computed from stored values alone are evaluated at import; computed from
    a graph input (the caller's values) or by a random operation, refused as not stored."""
    rng = np.random.default_rng(14)
    I, H, N, T = 3, 4, 2, 5
    W = rng.normal(size=(1, 4 * H, I)).astype(np.float32)
    R = rng.normal(size=(1, 4 * H, H)).astype(np.float32)
    B = rng.normal(size=(1, 8 * H)).astype(np.float32)
    X = rng.normal(size=(T, N, I)).astype(np.float32)

    def graph(w_node, extra_inputs=()):
        inits = [numpy_helper.from_array(np.ascontiguousarray(W.transpose(0, 2, 1)), "Wt"),
                 numpy_helper.from_array(R, "R"),
                 numpy_helper.from_array(B[:, :4 * H], "B1"),
                 numpy_helper.from_array(B[:, 4 * H:], "B2")]
        nodes = [w_node,
                 helper.make_node("Concat", ["B1", "B2"], ["B"], axis=1),
                 helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=H)]
        inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, N, I])]
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, I, 4 * H])
                   for n in extra_inputs]
        return helper.make_model(
            helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              inits),
            opset_imports=[helper.make_opsetid("", 14)])

    folded = graph(helper.make_node("Transpose", ["Wt"], ["W"], perm=[0, 2, 1]))
    np.testing.assert_allclose(fl.from_onnx(folded)(X, time_major=True)[0],
                               run_ort(folded, {"X": X})["Y"][:, 0], **TOL32)
    given = graph(helper.make_node("Transpose", ["Wg"], ["W"], perm=[0, 2, 1]), ["Wg"])
    with pytest.raises(ValueError, match=r"W \('W'\) is not stored in the model"):
        fl.from_onnx(given)
    noisy = graph(helper.make_node("RandomUniformLike", ["Wt"], ["W"]))
    with pytest.raises(ValueError, match=r"W \('W'\) is not stored in the model"):
        fl.from_onnx(noisy)


def test_float32_export_refuses_weights_beyond_its_range():
    pytest.importorskip("onnx")
    from fastlstm.interop import to_onnx

    m = fl.LSTM(3, 4, dtype=np.float64, random_state=0)
    m.U[0, 0] = 1e300
    with pytest.raises(ValueError, match="layer 0: U holds values up to 1e\\+300"):
        to_onnx(m, dtype=np.float32)
    to_onnx(m)                                  # float64 holds it


def _two_node_stack(rng, H=3, I=2, sl=("", ""), after=None):
    f = np.float32
    inits = {"W0": rng.normal(size=(1, 4 * H, I)).astype(f),
             "R0": rng.normal(size=(1, 4 * H, H)).astype(f),
             "W1": rng.normal(size=(1, 4 * H, H)).astype(f),
             "R1": rng.normal(size=(1, 4 * H, H)).astype(f)}
    nodes = [helper.make_node("LSTM", ["X", "W0", "R0", "", sl[0]], ["Y0"], hidden_size=H),
             helper.make_node("Squeeze", ["Y0", "ax"], ["X1"]),
             helper.make_node("LSTM", ["X1", "W1", "R1", "", sl[1]], ["Y1", "Yh1"],
                              hidden_size=H)]
    out = "Y1"
    if after == "residual":
        nodes += [helper.make_node("Add", ["Y0", "Y1"], ["out"])]
        out = "out"
    elif after == "joined":     # the LSTM result joined with the input
        nodes += [helper.make_node("Concat", ["Y1", "X"], ["out"], axis=-1)]
        out = "out"
    elif after == "states":     # torch's h_n: the nodes' Y_h concatenated, then squeezed
        nodes[0].output.append("Yh0")
        nodes += [helper.make_node("Concat", ["Yh0", "Yh1"], ["hn"], axis=0)]
        out = "hn"
    tensors = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    tensors.append(numpy_helper.from_array(np.array([1], np.int64), "ax"))
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [5, 2, I])]
    if any(sl):
        inputs.append(helper.make_tensor_value_info("sl", TensorProto.INT32, [2]))
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_from_onnx_refuses_computation_after_the_stack():
    # a residual sum of the two layers' outputs was imported as the bare stack (the
    # right shape, other numbers); the nodes' states concatenated (torch's h_n) are fine
    rng = np.random.default_rng(8)
    with pytest.raises(ValueError, match="graph output 'out' is computed by a Add node"):
        fl.from_onnx(_two_node_stack(rng, after="residual"))
    with pytest.raises(ValueError, match="joins an LSTM result with, 'X', a graph input"):
        fl.from_onnx(_two_node_stack(rng, after="joined"))
    model = fl.from_onnx(_two_node_stack(rng, after="states"))
    assert isinstance(model, fl.MultiLSTM) and len(model.layers) == 2


def test_from_onnx_refuses_layers_reading_different_sequence_lens():
    rng = np.random.default_rng(9)
    with pytest.raises(ValueError, match="different sequence_lens"):
        fl.from_onnx(_two_node_stack(rng, sl=("sl", "")))
    proto = _two_node_stack(rng, sl=("sl", "sl"))
    model = fl.from_onnx(proto)
    X = rng.normal(size=(5, 2, 2)).astype(np.float32)
    L = np.array([5, 3], np.int32)
    want = run_ort(proto, {"X": X, "sl": L})["Y1"]
    got, _ = model(X, lengths=L, time_major=True)
    np.testing.assert_allclose(got.swapaxes(0, 1), onnx_y_to_fl(want), atol=2e-6)


def test_round_trip_keeps_a_bidirectional_with_peepholes_on_one_side():
    from fastlstm.interop import to_onnx

    bi = fl.Bidirectional(fl.LSTM(3, 4, peepholes=True, random_state=0),
                          fl.LSTM(3, 4, random_state=1))
    bi.forward_layer.peepholes[...] = 0.3
    again = fl.from_onnx(to_onnx(bi))
    assert again.forward_layer.use_peepholes and not again.backward_layer.use_peepholes
    assert sorted(again.params) == sorted(bi.params)
    np.testing.assert_array_equal(again.flat_params, bi.flat_params)


def test_round_trip_keeps_a_bias_of_minus_zero():
    # from_onnx summed B's two halves, the recurrent one all zeros: -0.0 came back as +0.0
    m = fl.Bidirectional(fl.LSTM(3, 2, random_state=0), fl.LSTM(3, 2, random_state=1))
    m.forward_layer.b[...] = -0.0
    m.backward_layer.b[2] = -0.0
    back = fl.from_onnx(fl.to_onnx(m))
    assert back.flat_params.tobytes() == m.flat_params.tobytes()


def test_graph_whose_outputs_skip_the_last_lstm_node_is_refused():
    """Outputs taken from layer 0 only: the graph computes one layer, and the import was a
    two-layer stack (with other outputs) without a word."""
    m = fl.MultiLSTM([fl.LSTM(3, 4, random_state=0), fl.LSTM(4, 2, random_state=1)])
    proto = fl.to_onnx(m)
    keep = [o for o in proto.graph.output if o.name in ("Y_h_0", "Y_c_0")]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    onnx.checker.check_model(proto)
    with pytest.raises(ValueError, match="no graph output uses the results of the last LSTM"):
        fl.from_onnx(proto)
    # the last node's state alone is enough
    proto = fl.to_onnx(m)
    keep = [o for o in proto.graph.output if o.name == "Y_h_1"]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    assert fl.from_onnx(proto).flat_params.tobytes() == m.flat_params.tobytes()


def _with_output_op(rng, op, attrs=None, extra_inits=None, extra_inputs=(),
                    out_type=TensorProto.FLOAT):
    """One LSTM node whose Y reaches the graph output through one ``op`` node."""
    H, I = 3, 2
    inits = {"W": rng.normal(size=(1, 4 * H, I)).astype(np.float32),
             "R": rng.normal(size=(1, 4 * H, H)).astype(np.float32)}
    inits.update(extra_inits or {})
    nodes = [helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=H),
             helper.make_node(op, ["Y", *extra_inputs], ["out"], **(attrs or {}))]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [5, 2, I])],
        [helper.make_tensor_value_info("out", out_type, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_from_onnx_refuses_outputs_whose_values_a_cast_or_dropout_changes():
    """Cast and Dropout were taken for operations that only move the results: a Cast to
    int32 / bool / float16 (0.66 off) or a Dropout in training mode (a torch export with
    TrainingMode.TRAINING zeroes half the outputs) imported silently."""
    rng = np.random.default_rng(4)
    refused = [("Cast", dict(to=TensorProto.INT32), None, ()),
               ("Cast", dict(to=TensorProto.FLOAT16), None, ()),
               ("Cast", dict(to=TensorProto.BOOL), None, ()),
               ("Dropout", {}, {"ratio": np.array(0.5, np.float32),
                                "mode": np.array(True)}, ("ratio", "mode"))]
    for op, attrs, inits, ins in refused:
        with pytest.raises(ValueError, match=f"computed by a {op} node"):
            fl.from_onnx(_with_output_op(rng, op, attrs, inits, ins))
    # a Dropout's mask is no LSTM result
    proto = _with_output_op(rng, "Dropout", out_type=TensorProto.BOOL)
    dropout = proto.graph.node[1]
    dropout.output.extend(["mask"])
    proto.graph.output[0].name = "mask"
    with pytest.raises(ValueError, match="computed by a Dropout node in training mode, or "
                                         "its mask"):
        fl.from_onnx(proto)
    kept = [("Cast", dict(to=TensorProto.FLOAT), None, ()),
            ("Cast", dict(to=TensorProto.DOUBLE), None, ()),
            ("Dropout", {}, None, ()),
            ("Dropout", {}, {"ratio": np.array(0.5, np.float32),
                             "mode": np.array(False)}, ("ratio", "mode"))]
    X = rng.normal(size=(5, 2, 2)).astype(np.float32)
    for op, attrs, inits, ins in kept:
        proto = _with_output_op(rng, op, attrs, inits, ins, attrs.get("to", TensorProto.FLOAT))
        np.testing.assert_allclose(fl.from_onnx(proto)(X, time_major=True)[0],
                                   run_ort(proto, {"X": X})["out"][:, 0], **TOL32)


def test_from_onnx_says_when_sequence_lens_are_not_the_callers():
    """A sequence_lens computed in the graph (Sub(L, 1), Expand of a stored value) was
    accepted silently, and one stored behind a Cast (or as a graph input's default) was
    not applied without the warning the docs promise: the caller's lengths= were not the
    node's (0.3-0.7 off).  A computed one warns (a torch export may compute full lengths
    from X's shape, which change nothing)."""
    rng = np.random.default_rng(5)
    H, I = 3, 2

    def graph(pre_nodes, inits, inputs):
        node = helper.make_node("LSTM", ["X", "W", "R", "", "L"], ["Y"], hidden_size=H)
        all_inits = {"W": rng.normal(size=(1, 4 * H, I)).astype(np.float32),
                     "R": rng.normal(size=(1, 4 * H, H)).astype(np.float32), **inits}
        ins = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [5, 2, I])] + [
            helper.make_tensor_value_info(n, TensorProto.INT32, [2]) for n in inputs]
        g = helper.make_graph(pre_nodes + [node], "g", ins,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in all_inits.items()])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])

    computed = graph([helper.make_node("Sub", ["Lin", "one"], ["L"])],
                     {"one": np.array(1, np.int32)}, ["Lin"])
    with pytest.warns(UserWarning, match="sequence_lens is computed in the graph \\(by a "
                                         "Sub node\\).*pass the lengths the graph computes"):
        fl.from_onnx(computed)
    defaulted = graph([], {"L": np.array([5, 3], np.int32)}, ["L"])
    with pytest.warns(UserWarning, match=r"stores sequence_lens \[5, 3\] \(the default of "
                                         r"a graph input\)"):
        fl.from_onnx(defaulted)
    stored = graph([helper.make_node("Cast", ["L64"], ["L"], to=TensorProto.INT32)],
                   {"L64": np.array([5, 3], np.int64)}, [])
    with pytest.warns(UserWarning, match=r"stores sequence_lens \[5, 3\].*pass lengths="):
        fl.from_onnx(stored)
    given = graph([helper.make_node("Cast", ["Lin"], ["L"], to=TensorProto.INT32)], {},
                  ["Lin"])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fl.from_onnx(given)


def test_from_onnx_reads_constants_of_every_kind_and_names_an_lstm_state_source():
    """Constant nodes with value_ints / value_float (opset 12+) were not read as stored:
    Squeeze axes and a zero initial state built from them were refused.  A state taken
    from another LSTM node's final state was refused as "a learned initial state?"."""
    rng = np.random.default_rng(6)
    proto = _two_nodes(rng, [("Squeeze", {}, [[1]])])
    squeeze = next(n for n in proto.graph.node if n.op_type == "Squeeze")
    proto.graph.initializer.remove(next(t for t in proto.graph.initializer
                                        if t.name == squeeze.input[1]))
    proto.graph.node.insert(0, helper.make_node("Constant", [], [squeeze.input[1]],
                                                value_ints=[1]))
    X = rng.normal(size=(5, 4, 2)).astype(np.float32)
    np.testing.assert_allclose(fl.from_onnx(proto)(X, time_major=True)[0],
                               run_ort(proto, {"X": X})["Y1"][:, 0], **TOL32)
    # the second node's initial h: the first node's Y_h
    second = [n for n in proto.graph.node if n.op_type == "LSTM"][1]
    first = [n for n in proto.graph.node if n.op_type == "LSTM"][0]
    first.output.extend(["Y0h"])
    second.input.extend(["", "Y0h"])
    with pytest.raises(ValueError, match="initial_h comes from another LSTM node's final"):
        fl.from_onnx(proto)


def test_from_onnx_dropout_whose_mode_the_caller_gives():
    """training_mode as a graph input (no default): the graph runs inference unless the
    caller asks otherwise; it was refused as "in training mode"."""
    rng = np.random.default_rng(9)
    proto = _with_output_op(rng, "Dropout", {}, {"ratio": np.array(0.5, np.float32)},
                            ("ratio", "tm"))
    proto.graph.input.extend([helper.make_tensor_value_info("tm", TensorProto.BOOL, [])])
    X = rng.normal(size=(5, 2, 2)).astype(np.float32)
    want = run_ort(proto, {"X": X, "tm": np.array(False)})["out"][:, 0]
    np.testing.assert_allclose(fl.from_onnx(proto)(X, time_major=True)[0], want, **TOL32)
