"""TF1 weights interop without TensorFlow: golden TF numbers, and a NumPy transcription of
TF1's LSTMCell / dynamic_rnn / reverse_sequence (SPEC.md §1-§4) as the oracle."""

import math
import os

import numpy as np
import pytest

import fastlstm as fl
import fastlstm.tf1 as tf1
from fastlstm.interop import to_tf1

DATA = os.path.join(os.path.dirname(__file__), "data")
TOL = {np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6),
       np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13)}


# ---------------------------------------------------------------------------------------
# TF1's maths, transcribed


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


TF_ACT = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0), "sigmoid": _sigmoid,
          "linear": lambda x: x}


def tf_cell_step(x, c, m, v, forget_bias=1.0, cell_clip=None, proj_clip=None,
                 activation="tanh"):
    """TF1 LSTMCell.call; ``v`` holds the variables by their TF names."""
    act = TF_ACT[activation]
    z = np.concatenate([x, m], axis=1) @ v["kernel"] + v["bias"]
    i, j, f, o = np.split(z, 4, axis=1)
    if "w_f_diag" in v:
        c_new = _sigmoid(f + forget_bias + v["w_f_diag"] * c) * c \
            + _sigmoid(i + v["w_i_diag"] * c) * act(j)
    else:
        c_new = _sigmoid(f + forget_bias) * c + _sigmoid(i) * act(j)
    if cell_clip is not None:
        c_new = np.clip(c_new, -cell_clip, cell_clip)
    if "w_o_diag" in v:
        m_new = _sigmoid(o + v["w_o_diag"] * c_new) * act(c_new)
    else:
        m_new = _sigmoid(o) * act(c_new)
    if "projection/kernel" in v:
        m_new = m_new @ v["projection/kernel"]
        if proj_clip is not None:
            m_new = np.clip(m_new, -proj_clip, proj_clip)
    return m_new, c_new


def tf_dynamic_rnn(X, cells, lengths=None, **opts):
    """dynamic_rnn over MultiRNNCell(cells) (a list of variable dicts), zero state."""
    N, T, _ = X.shape
    L = np.full(N, T) if lengths is None else np.asarray(lengths)
    states = []
    for v in cells:
        H = v["bias"].shape[0] // 4
        Ho = v["projection/kernel"].shape[1] if "projection/kernel" in v else H
        states.append((np.zeros((N, H)), np.zeros((N, Ho))))
    outs = np.zeros((N, T, states[-1][1].shape[1]))
    for t in range(T):
        inp = X[:, t]
        alive = (t < L)[:, None]
        for k, v in enumerate(cells):
            c, m = states[k]
            m_new, c_new = tf_cell_step(inp, c, m, v, **opts)
            states[k] = (np.where(alive, c_new, c), np.where(alive, m_new, m))
            inp = m_new
        outs[:, t] = np.where(alive, inp, 0.0)
    return outs, states


def reverse_sequence(X, lengths):
    out = X.copy()
    for n, length in enumerate(lengths):
        out[n, :length] = X[n, :length][::-1]
    return out


def random_vars(rng, I, H, P=None, peepholes=False, scale=0.6):
    Ho = P or H
    v = {"kernel": rng.normal(scale=scale, size=(I + Ho, 4 * H)),
         "bias": rng.normal(scale=scale, size=4 * H)}
    if peepholes:
        for k in ("w_i_diag", "w_f_diag", "w_o_diag"):
            v[k] = rng.normal(scale=scale, size=H)
    if P:
        v["projection/kernel"] = rng.normal(scale=scale, size=(H, P))
    return v


# ---------------------------------------------------------------------------------------
# golden TF numbers


@pytest.mark.parametrize("suffix", ["f32", "f64"])
@pytest.mark.parametrize("stored", [False, True], ids=["float", "stored-0d-array"])
def test_golden_basic_cell_step(suffix, stored):
    g = np.load(os.path.join(DATA, f"tf1_basic_cell_step_{suffix}.npz"))
    # the file stores forget_bias as a 0-d array: it goes in as it is, or as a float
    fb = g["forget_bias"] if stored else float(g["forget_bias"])
    layer = fl.from_tf1(g["kernel"], g["bias"], fb)
    out, s = layer.step(g["x"], (g["state.c"], g["state.h"]))
    tol = TOL[layer.dtype]
    np.testing.assert_allclose(out, g["output"], **tol)
    np.testing.assert_allclose(s.c, g["new_state.c"], **tol)
    np.testing.assert_allclose(s.h, g["new_state.h"], **tol)


@pytest.mark.parametrize("name", ["tf1_multirnn_4_5_tutorial_f32", "tf1_multirnn_4_5_tutorial_f64",
                                  "tf1_multirnn_4_5_tutorial_seqlen_f32",
                                  "tf1_multirnn_4_5_tutorial_seqlen_f64"])
@pytest.mark.parametrize("naming", ["tf12", "tf11", "tf0"])
@pytest.mark.parametrize("stored", [False, True], ids=["float", "stored-0d-array"])
def test_golden_multirnn_checkpoint(name, naming, stored):
    g = np.load(os.path.join(DATA, name + ".npz"))
    names = {"tf12": "rnn/multi_rnn_cell/cell_{k}/basic_lstm_cell/{v}",
             "tf11": "rnn/multi_rnn_cell/cell_{k}/basic_lstm_cell/{v}:0",
             "tf0": "RNN/MultiRNNCell/Cell{k}/BasicLSTMCell/Linear/{v}"}[naming]
    leaf = {"tf12": {"kernel": "kernel", "bias": "bias"},
            "tf11": {"kernel": "weights", "bias": "biases"},
            "tf0": {"kernel": "Matrix", "bias": "Bias"}}[naming]
    variables = {names.format(k=k, v=leaf[v]): g[f"cell_{k}.{v}"]
                 for k in range(2) for v in ("kernel", "bias")}
    # optimizer slots and unrelated variables (a Dense layer on top) are ignored
    variables[names.format(k=0, v=leaf["kernel"]) + "/Adam"] = np.zeros(3)
    variables["global_step"] = np.array(7)
    variables["dense/kernel"] = np.zeros((5, 8))
    variables["dense/bias"] = np.zeros(8)
    fb = g["forget_bias"] if stored else float(g["forget_bias"])
    model = fl.from_tf1_checkpoint(variables, forget_bias=fb)
    assert isinstance(model, fl.MultiLSTM)
    assert [layer.hidden_size for layer in model.layers] == [4, 5]
    lengths = g["sequence_length"] if "sequence_length" in g.files else None
    Y, states = model(g["inputs"], lengths=lengths)
    tol = TOL[model.dtype]
    np.testing.assert_allclose(Y, g["outputs"], **tol)
    for k in range(2):
        np.testing.assert_allclose(states[k].c, g[f"final_state.{k}.c"], **tol)
        np.testing.assert_allclose(states[k].h, g[f"final_state.{k}.h"], **tol)


# ---------------------------------------------------------------------------------------
# LSTMCell options against the transcription

OPTIONS = {
    "basic": (dict(), dict()),
    "forget_bias_0": (dict(), dict(forget_bias=0.0)),
    "peepholes": (dict(peepholes=True), dict(forget_bias=0.5)),
    "clip": (dict(peepholes=True), dict(cell_clip=0.4)),
    "clip_zero": (dict(), dict(cell_clip=0.0)),
    "proj": (dict(P=3), dict()),
    "proj_clip": (dict(P=3, peepholes=True), dict(cell_clip=1.0, proj_clip=0.1)),
    "relu": (dict(), dict(activation="relu")),
    "identity": (dict(P=2), dict(activation="linear", cell_clip=2.0)),
}


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_cell_options_match_tf_formulas(option, with_lengths):
    var_kw, call_kw = OPTIONS[option]
    rng = np.random.default_rng(list(OPTIONS).index(option))
    v0 = random_vars(rng, 5, 4, **var_kw)
    v1 = random_vars(rng, var_kw.get("P") or 4, 3, **var_kw)
    X = rng.normal(size=(3, 6, 5))
    lengths = np.array([6, 0, 3]) if with_lengths else None
    want, wstates = tf_dynamic_rnn(X, [v0, v1], lengths, **call_kw)
    layers = [fl.from_tf1(v["kernel"], v["bias"], call_kw.get("forget_bias", 1.0),
                          w_i_diag=v.get("w_i_diag"), w_f_diag=v.get("w_f_diag"),
                          w_o_diag=v.get("w_o_diag"), projection_kernel=v.get("projection/kernel"),
                          cell_clip=call_kw.get("cell_clip"), proj_clip=call_kw.get("proj_clip"),
                          activation=call_kw.get("activation", "tanh")) for v in (v0, v1)]
    Y, states = fl.MultiLSTM(layers)(X, lengths=lengths)
    tol = TOL[np.dtype(np.float64)]
    np.testing.assert_allclose(Y, want, **tol)
    for s, (c, m) in zip(states, wstates):
        np.testing.assert_allclose(s.c, c, **tol)
        np.testing.assert_allclose(s.h, m, **tol)
    # export gives back TF's variables (the forget bias round trip rounds once)
    for layer, v in zip(layers, (v0, v1)):
        out = to_tf1(layer, forget_bias=call_kw.get("forget_bias", 1.0))
        assert set(out) == set(v)
        for k in v:
            np.testing.assert_allclose(out[k], v[k], rtol=0, atol=1e-15)


def test_bidirectional_checkpoint_matches_reverse_sequence():
    rng = np.random.default_rng(7)
    vf, vb = random_vars(rng, 5, 4, peepholes=True), random_vars(rng, 5, 4, peepholes=True)
    variables = {f"bidirectional_rnn/{d}/lstm_cell/{k}": a
                 for d, v in (("fw", vf), ("bw", vb)) for k, a in v.items()}
    model = fl.from_tf1_checkpoint(variables, cell_clip=0.8)
    assert isinstance(model, fl.Bidirectional)
    X = rng.normal(size=(3, 5, 5))
    lengths = np.array([5, 2, 0])
    yf, (sf,) = tf_dynamic_rnn(X, [vf], lengths, cell_clip=0.8)
    yb_rev, (sb,) = tf_dynamic_rnn(reverse_sequence(X, lengths), [vb], lengths, cell_clip=0.8)
    yb = reverse_sequence(yb_rev, lengths)
    Y, (s_fw, s_bw) = model(X, lengths=lengths)
    tol = TOL[np.dtype(np.float64)]
    np.testing.assert_allclose(Y, np.concatenate([yf, yb], -1), **tol)
    np.testing.assert_allclose(s_fw.c, sf[0], **tol)
    np.testing.assert_allclose(s_bw.h, sb[1], **tol)
    # export -> import is the same model
    again = fl.from_tf1_checkpoint(fl.to_tf1_checkpoint(model, forget_bias=0.0), cell_clip=0.8,
                                   forget_bias=0.0)
    np.testing.assert_array_equal(again.flat_params, model.flat_params)


def test_stack_bidirectional_checkpoint():
    rng = np.random.default_rng(8)
    vs = {(k, d): random_vars(rng, 5 if k == 0 else 6, 3) for k in range(2) for d in ("fw", "bw")}
    variables = {f"stack_bidirectional_rnn/cell_{k}/bidirectional_rnn/{d}/basic_lstm_cell/{n}": a
                 for (k, d), v in vs.items() for n, a in v.items()}
    model = fl.from_tf1_checkpoint(variables)
    assert isinstance(model, fl.MultiLSTM)
    assert all(isinstance(layer, fl.Bidirectional) for layer in model.layers)
    X = rng.normal(size=(2, 4, 5))
    inp = X
    L = np.array([4, 4])
    for k in range(2):
        yf, _ = tf_dynamic_rnn(inp, [vs[(k, "fw")]])
        yb = reverse_sequence(tf_dynamic_rnn(reverse_sequence(inp, L), [vs[(k, "bw")]])[0], L)
        inp = np.concatenate([yf, yb], -1)
    np.testing.assert_allclose(model(X)[0], inp, **TOL[np.dtype(np.float64)])
    names = fl.to_tf1_checkpoint(model)
    assert set(names) == set(variables)


def test_one_cell_stack_checkpoint_is_a_stack():
    # multi_rnn_cell/cell_0 alone: a one-layer MultiLSTM (TF's state is a 1-tuple), and a
    # one-layer MultiLSTM written with to_tf1_checkpoint reads back as one
    rng = np.random.default_rng(9)
    v = random_vars(rng, 6, 4)
    variables = {f"rnn/multi_rnn_cell/cell_0/basic_lstm_cell/{n}": a for n, a in v.items()}
    model = fl.from_tf1_checkpoint(variables)
    assert isinstance(model, fl.MultiLSTM) and len(model) == 1
    X = rng.normal(size=(2, 3, 6))
    Y, state = model(X)
    want, [(c, h)] = tf_dynamic_rnn(X, [v])
    np.testing.assert_allclose(Y, want, **TOL[np.dtype(np.float64)])
    np.testing.assert_allclose(state[0].h, h, **TOL[np.dtype(np.float64)])
    np.testing.assert_allclose(state[0].c, c, **TOL[np.dtype(np.float64)])
    assert set(fl.to_tf1_checkpoint(model)) == set(variables)
    assert isinstance(fl.from_tf1_checkpoint(fl.to_tf1_checkpoint(model)), fl.MultiLSTM)
    # a single cell outside a stack stays an LSTM
    alone = {f"rnn/basic_lstm_cell/{n}": a for n, a in v.items()}
    assert isinstance(fl.from_tf1_checkpoint(alone), fl.LSTM)


def test_keras_weights_in_a_checkpoint_are_refused():
    rng = np.random.default_rng(10)
    variables = {"lstm/lstm_cell/kernel": rng.normal(size=(10, 16)),
                 "lstm/lstm_cell/recurrent_kernel": rng.normal(size=(4, 16)),
                 "lstm/lstm_cell/bias": np.zeros(16)}
    with pytest.raises(ValueError, match="'lstm/lstm_cell' holds a Keras recurrent layer's weights"):
        fl.from_tf1_checkpoint(variables)


def test_two_stacks_under_fw_bw_are_refused_but_load_by_scope():
    rng = np.random.default_rng(9)
    variables = {}
    for d in ("fw", "bw"):
        for k in range(2):
            for n, a in random_vars(rng, 5 if k == 0 else 4, 4).items():
                variables[f"bidirectional_rnn/{d}/multi_rnn_cell/cell_{k}/basic_lstm_cell/{n}"] = a
    with pytest.raises(ValueError, match="two MultiRNNCell stacks"):
        fl.from_tf1_checkpoint(variables)
    fw = fl.from_tf1_checkpoint(variables, scope="bidirectional_rnn/fw")
    assert isinstance(fw, fl.MultiLSTM) and len(fw) == 2


def test_checkpoint_of_other_tf1_cells_is_refused():
    """TF1's BasicRNNCell, GRUCell and Dense kernels (their default scopes, as TF names
    them) were read as LSTM cells of the sizes their shapes suggest."""
    rng = np.random.default_rng(12)
    rnn = {"rnn/basic_rnn_cell/kernel": rng.normal(size=(12, 8)),
           "rnn/basic_rnn_cell/bias": np.zeros(8)}
    gru = {"rnn/gru_cell/gates/kernel": rng.normal(size=(8, 8)),
           "rnn/gru_cell/gates/bias": np.zeros(8),
           "rnn/gru_cell/candidate/kernel": rng.normal(size=(8, 4)),
           "rnn/gru_cell/candidate/bias": np.zeros(4)}
    dense = {"dense/kernel": rng.normal(size=(10, 8)), "dense/bias": np.zeros(8)}
    for variables, scope in ((rnn, None), (gru, None), (gru, "rnn/gru_cell/gates"),
                             (dense, None)):
        with pytest.raises(ValueError, match="not an LSTM"):
            fl.from_tf1_checkpoint(variables, scope=scope)
    # beside an LSTM cell, even one of a name of its own, they are left out
    lstm = {f"enc/encoder/{k}": v for k, v in random_vars(rng, 5, 4).items()}
    model = fl.from_tf1_checkpoint({**lstm, **gru, **dense, "enc/dense_1/kernel":
                                    rng.normal(size=(9, 8))})
    assert (model.input_size, model.hidden_size) == (5, 4)


def test_checkpoint_errors():
    rng = np.random.default_rng(10)
    a, b = random_vars(rng, 5, 4), random_vars(rng, 3, 2)
    variables = {f"enc/rnn/basic_lstm_cell/{k}": v for k, v in a.items()}
    variables.update({f"dec/rnn/basic_lstm_cell/{k}": v for k, v in b.items()})
    with pytest.raises(ValueError, match="several RNNs"):
        fl.from_tf1_checkpoint(variables)
    dec = fl.from_tf1_checkpoint(variables, scope="dec")
    assert (dec.input_size, dec.hidden_size) == (3, 2)
    with pytest.raises(ValueError, match="no TF1 LSTM cell variables"):
        fl.from_tf1_checkpoint({"dense/kernel2": np.zeros(3)})
    with pytest.raises(ValueError, match="only one direction"):
        fl.from_tf1_checkpoint({f"bidirectional_rnn/fw/lstm_cell/{k}": v
                                for k, v in a.items()})
    with pytest.raises(ValueError, match="cell_clip has 3 entries for 1 layers"):
        fl.from_tf1_checkpoint(variables, scope="dec", cell_clip=[1, 2, 3])
    with pytest.raises(ValueError, match="must be given together"):
        fl.from_tf1(a["kernel"], a["bias"], w_i_diag=np.zeros(4))
    with pytest.raises(ValueError, match="kernel must have shape"):
        fl.from_tf1(np.zeros((5, 7)))
    with pytest.raises(ValueError, match="activation=.*elu"):
        fl.from_tf1(a["kernel"], a["bias"], activation="elu")
    with pytest.raises(ValueError, match="projection_kernel must have shape"):
        fl.from_tf1(a["kernel"], a["bias"], projection_kernel=np.zeros((3, 2)))


def test_activation_given_as_function():
    rng = np.random.default_rng(11)
    v = random_vars(rng, 3, 2)

    def relu(x):
        return x

    # a function of the user's own says nothing by its name (this "relu" is the identity)
    for make in (lambda act: fl.from_tf1(v["kernel"], v["bias"], activation=act),
                 lambda act: tf1.BasicLSTMCell(4, activation=act),
                 lambda act: tf1.LSTMCell(4, activation=act),
                 lambda act: fl.from_keras([v["kernel"][:3], v["kernel"][3:], v["bias"]],
                                           activation=act)):
        with pytest.raises(ValueError, match=r"activation=<function .*relu.* is not a function "
                                             r"fastlstm can identify.*activation='tanh'"):
            make(relu)
    # TensorFlow's own (stand-in: the module tf.nn.relu is defined in), NumPy's, math's
    relu.__module__ = "tensorflow.python.ops.gen_nn_ops"
    assert fl.from_tf1(v["kernel"], v["bias"], activation=relu).activation == "relu"
    assert fl.from_tf1(v["kernel"], v["bias"], activation=np.tanh).activation == "tanh"
    assert fl.from_tf1(v["kernel"], v["bias"], activation=math.tanh).activation == "tanh"
    assert fl.from_tf1(v["kernel"], v["bias"], activation=None).activation == "tanh"
    assert tf1.BasicLSTMCell(4, activation=relu)._activation == "relu"


def test_to_tf1_refuses_hard_sigmoid():
    with pytest.raises(ValueError, match="recurrent_activation='hard_sigmoid'"):
        to_tf1(fl.LSTM(3, 4, recurrent_activation="hard_sigmoid"))
    with pytest.raises(ValueError, match="mixing"):
        fl.to_tf1_checkpoint(fl.MultiLSTM([fl.LSTM(3, 4),
                                           fl.Bidirectional(fl.LSTM(4, 2), fl.LSTM(4, 2))]))
    # the layer (and direction) is named, as the other exporters name it
    hard = fl.LSTM(4, 2, recurrent_activation="hard_sigmoid_keras2")
    stacks = ((fl.MultiLSTM([fl.LSTM(3, 4), fl.LSTM(4, 2, recurrent_activation="hard_sigmoid")]),
               "layer 1 cannot"),
              (fl.MultiLSTM([fl.Bidirectional(fl.LSTM(3, 2), fl.LSTM(3, 2)),
                             fl.Bidirectional(fl.LSTM(4, 2), hard)]), r"layer 1 \(backward\)"))
    for model, where in stacks:
        with pytest.raises(ValueError, match=where + ".* in a TF1 LSTMCell: it has "
                                                     "recurrent_activation="):
            fl.to_tf1_checkpoint(model)


def test_checkpoint_of_cells_of_different_kinds():
    # MultiRNNCell([LSTMCell(4, use_peepholes=True, num_proj=3), BasicLSTMCell(5)]) and
    # bidirectional_dynamic_rnn(LSTMCell, BasicLSTMCell): each cell's variables sit under
    # its own class name, lstm_cell or basic_lstm_cell, in one RNN
    rng = np.random.default_rng(12)
    v0, v1 = random_vars(rng, 6, 4, P=3, peepholes=True), random_vars(rng, 3, 5)
    variables = {f"rnn/multi_rnn_cell/cell_0/lstm_cell/{n}": a for n, a in v0.items()}
    variables.update({f"rnn/multi_rnn_cell/cell_1/basic_lstm_cell/{n}": a
                      for n, a in v1.items()})
    model = fl.from_tf1_checkpoint(variables, cell_clip=[0.7, None], proj_clip=[0.5, None])
    assert isinstance(model, fl.MultiLSTM) and len(model) == 2
    X = rng.normal(size=(3, 4, 6))
    lengths = np.array([4, 0, 2])
    # the transcription takes one set of options for all its cells: run layer 0 with its
    # clips, then layer 1 on its outputs (a stack runs layer by layer)
    y0, s0 = tf_dynamic_rnn(X, [v0], lengths, cell_clip=0.7, proj_clip=0.5)
    y1, s1 = tf_dynamic_rnn(y0, [v1], lengths)
    Y, (st0, st1) = model(X, lengths=lengths)
    tol = TOL[np.dtype(np.float64)]
    np.testing.assert_allclose(Y, y1, **tol)
    np.testing.assert_allclose(st0.c, s0[0][0], **tol)
    np.testing.assert_allclose(st1.h, s1[0][1], **tol)
    # its own export (lstm_cell for layer 0, basic_lstm_cell for layer 1) reads back
    again = fl.from_tf1_checkpoint(fl.to_tf1_checkpoint(model, forget_bias=0.0),
                                   forget_bias=0.0, cell_clip=[0.7, None],
                                   proj_clip=[0.5, None])
    np.testing.assert_array_equal(again.flat_params, model.flat_params)

    vf, vb = random_vars(rng, 5, 4, peepholes=True), random_vars(rng, 5, 3)
    variables = {f"bidirectional_rnn/fw/lstm_cell/{n}": a for n, a in vf.items()}
    variables.update({f"bidirectional_rnn/bw/basic_lstm_cell/{n}": a for n, a in vb.items()})
    model = fl.from_tf1_checkpoint(variables)
    assert isinstance(model, fl.Bidirectional)
    X = rng.normal(size=(3, 5, 5))
    lengths = np.array([5, 2, 0])
    yf, _ = tf_dynamic_rnn(X, [vf], lengths)
    yb = reverse_sequence(tf_dynamic_rnn(reverse_sequence(X, lengths), [vb], lengths)[0],
                          lengths)
    np.testing.assert_allclose(model(X, lengths=lengths)[0], np.concatenate([yf, yb], -1), **tol)
    # two cells in one place are still an error
    variables["bidirectional_rnn/fw/basic_lstm_cell/kernel"] = vb["kernel"]
    with pytest.raises(ValueError, match="fw"):
        fl.from_tf1_checkpoint(variables)


def test_checkpoint_stack_with_a_custom_cell_name():
    # MultiRNNCell([LSTMCell(4), LSTMCell(5, name="top")]) next to a Dense layer: the cell
    # named "top" is layer 1 of the stack, not another layer's variables
    rng = np.random.default_rng(13)
    v0, v1 = random_vars(rng, 6, 4), random_vars(rng, 4, 5)
    variables = {f"rnn/multi_rnn_cell/cell_0/lstm_cell/{n}": a for n, a in v0.items()}
    variables.update({f"rnn/multi_rnn_cell/cell_1/top/{n}": a for n, a in v1.items()})
    variables.update({"dense/kernel": rng.normal(size=(5, 2)), "dense/bias": np.zeros(2)})
    model = fl.from_tf1_checkpoint(variables)
    assert isinstance(model, fl.MultiLSTM) and len(model) == 2
    X = rng.normal(size=(2, 3, 6))
    np.testing.assert_allclose(model(X)[0], tf_dynamic_rnn(X, [v0, v1])[0],
                               **TOL[np.dtype(np.float64)])


def test_to_tf1_checkpoint_cell_names_per_layer():
    """MultiRNNCell([BasicLSTMCell(4), LSTMCell(5)]): the variable names come back exactly
    with one cell_name per layer (one name for every layer could not write them)."""
    rng = np.random.default_rng(14)
    v0, v1 = random_vars(rng, 6, 4), random_vars(rng, 4, 5)
    variables = {f"rnn/multi_rnn_cell/cell_0/basic_lstm_cell/{n}": a for n, a in v0.items()}
    variables.update({f"rnn/multi_rnn_cell/cell_1/lstm_cell/{n}": a for n, a in v1.items()})
    model = fl.from_tf1_checkpoint(variables)
    back = fl.to_tf1_checkpoint(model, cell_name=["basic_lstm_cell", "lstm_cell"])
    assert set(back) == set(variables)
    for name, value in variables.items():
        np.testing.assert_allclose(back[name], value, rtol=1e-15, atol=1e-15)
    assert set(fl.to_tf1_checkpoint(model, cell_name=[None, "lstm_cell/"])) == set(variables)
    for bad in (5, "", ["lstm_cell"], ["lstm_cell", 3]):
        with pytest.raises((TypeError, ValueError), match="cell_name"):
            fl.to_tf1_checkpoint(model, cell_name=bad)


def test_to_tf1_forget_bias_per_layer_and_checked():
    """to_tf1_checkpoint takes forget_bias per layer, as from_tf1_checkpoint does: the
    variables read back exactly (a list was broadcast over the units of every layer, or
    failed to broadcast); values that are not a finite float are refused (None gave NaN
    biases, "1.0" and True were taken)."""
    rng = np.random.default_rng(7)
    stack = fl.MultiLSTM([fl.LSTM(3, 2, random_state=0), fl.LSTM(2, 2, random_state=1)])
    stack.flat_params[...] = rng.normal(size=stack.n_params)
    fb = [1.0, 0.0]
    variables = fl.to_tf1_checkpoint(stack, forget_bias=fb)
    bias0 = variables["rnn/multi_rnn_cell/cell_0/basic_lstm_cell/bias"]
    np.testing.assert_array_equal(   # TF's f block (i, j, f, o): layer 0's bias - 1.0
        bias0[4:6], (stack.layers[0].b[2:4] - np.float32(1.0)))
    back = fl.from_tf1_checkpoint(variables, forget_bias=fb)
    # b - fb + fb rounds once in the last bit
    np.testing.assert_allclose(back.flat_params, stack.flat_params, rtol=0, atol=3e-7)
    bidir = fl.MultiLSTM([fl.Bidirectional(fl.LSTM(3, 2), fl.LSTM(3, 2))])
    v = fl.to_tf1_checkpoint(bidir, forget_bias=[0.5])
    np.testing.assert_allclose(fl.from_tf1_checkpoint(v, forget_bias=[0.5]).flat_params,
                               bidir.flat_params, rtol=0, atol=3e-7)
    with pytest.raises(ValueError, match="forget_bias has 3 entries for 2 layers"):
        fl.to_tf1_checkpoint(stack, forget_bias=[1.0, 0.0, 1.0])
    for bad, err in ((None, TypeError), ("1.0", TypeError), (True, TypeError),
                     (np.nan, ValueError), ([1.0, np.inf], ValueError)):
        with pytest.raises(err, match=r"forget_bias(\[1\])? must be"):
            fl.to_tf1_checkpoint(stack, forget_bias=bad)
        if not isinstance(bad, list):
            with pytest.raises(err, match="forget_bias must be"):
                fl.interop.to_tf1(stack.layers[0], forget_bias=bad)


def test_tf1_cell_ignores_proj_clip_without_projection():
    """TF's LSTMCell ignores proj_clip without num_proj (any value); so does the drop-in."""
    from fastlstm import tf1
    x = np.ones((2, 3), np.float32)
    a = tf1.LSTMCell(4, proj_clip=-1.0, random_state=0)
    b = tf1.LSTMCell(4, random_state=0)
    np.testing.assert_array_equal(a(x, a.zero_state(2, np.float32))[0],
                                  b(x, b.zero_state(2, np.float32))[0])


def test_checkpoint_scope_partitions_and_mixed_dtypes():
    """scope=0 was an AttributeError and scope="" dropped every variable; an export scope
    ending in / wrote "enc//..."; parts of different widths failed in NumPy; float32 and
    float64 halves of one bidirectional layer failed in Bidirectional."""
    ck = fl.to_tf1_checkpoint(fl.LSTM(3, 4, random_state=0))
    for scope in (0, "", "/"):
        with pytest.raises(TypeError, match="scope must be None or a non-empty"):
            fl.from_tf1_checkpoint(ck, scope=scope)
        with pytest.raises(TypeError, match="scope must be None or a non-empty"):
            fl.to_tf1_checkpoint(fl.LSTM(3, 4), scope=scope)
    assert sorted(fl.to_tf1_checkpoint(fl.LSTM(3, 4), scope="enc/")) == \
        ["enc/basic_lstm_cell/bias", "enc/basic_lstm_cell/kernel"]
    parts = {"rnn/lstm_cell/kernel/part_0": np.zeros((4, 16)),
             "rnn/lstm_cell/kernel/part_1": np.zeros((3, 15))}
    with pytest.raises(ValueError, match="its parts have shapes"):
        fl.from_tf1_checkpoint(parts)
    bi = fl.Bidirectional(fl.LSTM(3, 4, random_state=1), fl.LSTM(3, 4, random_state=2))
    v = fl.to_tf1_checkpoint(bi)
    mixed = fl.from_tf1_checkpoint({k: a.astype(np.float64) if "/bw/" in k else a
                                    for k, a in v.items()})
    assert mixed.dtype == np.float64
    np.testing.assert_allclose(mixed.flat_params, bi.flat_params, rtol=0, atol=3e-7)


def test_to_tf1_forget_bias_within_the_model_dtype():
    """forget_bias=1e39 wrote -inf biases into a float32 export."""
    with pytest.raises(ValueError, match="within float32's range"):
        to_tf1(fl.LSTM(3, 4), forget_bias=1e39)
    with pytest.raises(ValueError, match="within float32's range"):
        fl.to_tf1_checkpoint(fl.LSTM(3, 4), forget_bias=1e39)
    assert np.isfinite(to_tf1(fl.LSTM(3, 4, dtype=np.float64), forget_bias=1e39)["bias"]).all()


def test_narrowing_import_refuses_values_beyond_the_dtype():
    # float64 weights imported as float32: a finite value beyond float32's range would
    # become infinite; refused, naming the array (infinities themselves are kept)
    from fastlstm.interop import from_tf1

    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(size=(3 + 2, 8)), rng.normal(size=8)
    big = kernel.copy()
    big[0, 0] = 1e300
    with pytest.raises(ValueError, match="input kernel holds values up to 1e\\+300"):
        from_tf1(big, bias, dtype=np.float32)
    big_b = bias.copy()
    big_b[3] = -4e38
    with pytest.raises(ValueError, match="bias holds values up to 4e\\+38"):
        from_tf1(kernel, big_b, dtype=np.float32)
    inf = kernel.copy()
    inf[0, 0] = np.inf
    assert np.isinf(from_tf1(inf, bias, dtype=np.float32).W).any()
    assert from_tf1(big, bias).dtype == np.float64           # float64 holds it
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got 'junk'"):
        from_tf1(kernel, bias, dtype="junk")


def test_zero_forget_bias_keeps_the_bias_bit_exact():
    # adding forget_bias=0.0 turned a bias of -0.0 into +0.0 (as documented: bit-exact)
    H = 2
    bias = np.full(4 * H, -0.0, np.float32)
    bias[3] = 0.25
    model = fl.from_tf1_checkpoint({"rnn/lstm_cell/kernel": np.ones((3 + H, 4 * H), np.float32),
                                    "rnn/lstm_cell/bias": bias}, forget_bias=0.0)
    back = fl.to_tf1_checkpoint(model, forget_bias=0.0)
    got = next(v for k, v in back.items() if k.endswith("/bias"))
    assert got.tobytes() == bias.tobytes()


def test_checkpoint_of_a_layer_normalised_cell_is_refused():
    """TF1 contrib's LayerNormBasicLSTMCell keeps a kernel (no bias) and gamma / beta per
    gate and for c: it loaded as a plain LSTM, its normalisation ignored."""
    rng = np.random.default_rng(0)
    path = "rnn/layer_norm_basic_lstm_cell"
    variables = {f"{path}/kernel": rng.normal(size=(7, 12)).astype(np.float32),
                 f"{path}/bias": np.zeros(12, np.float32),
                 f"{path}/kernel/Adam": np.zeros((7, 12), np.float32)}   # a slot: fine
    assert fl.from_tf1_checkpoint(variables).hidden_size == 3
    del variables[f"{path}/bias"]                # the layer-normalised cell has none
    with pytest.raises(ValueError, match="has a kernel but no bias"):
        fl.from_tf1_checkpoint(variables)
    for part in ("input", "transform", "forget", "output", "state"):
        variables[f"{path}/{part}/gamma"] = np.ones(3, np.float32)
        variables[f"{path}/{part}/beta"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="also holds .*input/gamma.* layer-normalised"):
        fl.from_tf1_checkpoint(variables)


def test_cells_beside_an_lstm_stack_need_a_scope_only_when_they_may_be_lstm_cells():
    """Under dynamic_rnn's "rnn" scope, a kernel and bias of an LSTM cell's shapes in a
    cell of its own name is a second RNN (it was dropped and the other RNN returned); an
    attention layer's kernel (no bias) beside a wrapped LSTM cell is not."""
    rng = np.random.default_rng(1)
    lstm = {"rnn/attention_wrapper/basic_lstm_cell/kernel":
            rng.normal(size=(9, 16)).astype(np.float32),
            "rnn/attention_wrapper/basic_lstm_cell/bias": np.zeros(16, np.float32)}
    attention = {"rnn/attention_wrapper/attention_layer/kernel":
                 rng.normal(size=(12, 8)).astype(np.float32)}
    assert fl.from_tf1_checkpoint({**lstm, **attention}).hidden_size == 4
    other = {"encoder/rnn/enc_cell/kernel": rng.normal(size=(10, 24)).astype(np.float32),
             "encoder/rnn/enc_cell/bias": np.zeros(24, np.float32)}
    with pytest.raises(ValueError, match="several RNNs .*encoder/rnn/enc_cell"):
        fl.from_tf1_checkpoint({**lstm, **other})
    assert fl.from_tf1_checkpoint({**lstm, **other}, scope="encoder").hidden_size == 6


def test_dense_heads_beside_an_lstm_load_and_rnn_scoped_cells_need_a_scope():
    """Dense heads of names of their own ("fc", "logits") of an LSTM cell's shapes sit
    beside the LSTM in most checkpoints: they are left out, as before.  A cell of a name
    of its own under an RNN function's scope (dynamic_rnn's "rnn") is a second RNN: scope=
    is asked for, with the LSTM cells' scope proposed."""
    rng = np.random.default_rng(3)
    lstm = {f"model/rnn/lstm_cell/{k}": v for k, v in random_vars(rng, 4, 6).items()}
    heads = {"model/fc/kernel": rng.normal(size=(6, 8)), "model/fc/bias": np.zeros(8),
             "logits/kernel": rng.normal(size=(8, 4)), "logits/bias": np.zeros(4)}
    assert fl.from_tf1_checkpoint({**lstm, **heads}).input_size == 4
    enc = {f"encoder/rnn/enc/{k}": v for k, v in random_vars(rng, 5, 6).items()}
    with pytest.raises(ValueError, match="several RNNs .*'encoder/rnn/enc'.*pass scope= "
                                         "\\(scope='model/rnn' for the first\\)"):
        fl.from_tf1_checkpoint({**lstm, **heads, **enc})
    assert fl.from_tf1_checkpoint({**lstm, **heads, **enc}, scope="encoder").input_size == 5


def test_a_kernel_without_its_bias_is_refused():
    """scope= naming the kernel itself (or a mapping without the bias) loaded the cell with
    a zero bias; TF1's LSTM cells always have one."""
    v = random_vars(np.random.default_rng(4), 3, 4)
    variables = {f"rnn/lstm_cell/{k}": a for k, a in v.items()}
    for bad in (dict(scope="rnn/lstm_cell/kernel"), dict()):
        given = variables if bad else {"rnn/lstm_cell/kernel": v["kernel"]}
        with pytest.raises(ValueError, match="'rnn/lstm_cell' has a kernel but no bias"):
            fl.from_tf1_checkpoint(given, **bad)
    np.testing.assert_array_equal(fl.from_tf1_checkpoint(variables).W, fl.from_tf1(
        v["kernel"], v["bias"]).W)


def test_scopes_and_cells_called_cell_k_are_no_stack():
    """A user's variable_scope("cell1") around a plain RNN, or LSTMCell(name="cell_1"),
    was read as layer 1 of a MultiRNNCell ("cell indices must be 0..L-1, found [1]"); a
    scope "cell0" made a one-layer MultiLSTM.  A stack's cell_k follows multi_rnn_cell
    (or precedes a stacked bidirectional RNN's bidirectional_rnn)."""
    v = random_vars(np.random.default_rng(5), 3, 4)
    for path in ("cell1/rnn/lstm_cell", "rnn/cell_1", "cell0/rnn/basic_lstm_cell"):
        model = fl.from_tf1_checkpoint({f"{path}/{k}": a for k, a in v.items()})
        assert isinstance(model, fl.LSTM), path
    stack = fl.from_tf1_checkpoint({f"x/multi_rnn_cell/cell_0/cell_7/{k}": a
                                    for k, a in v.items()})
    assert isinstance(stack, fl.MultiLSTM) and len(stack) == 1


def test_float16_checkpoints_warn():
    """A float16 TF1 graph computes in float16: loading it as float32 said nothing (5e-4
    off); from_keras already warned for such layers."""
    v = random_vars(np.random.default_rng(6), 3, 4)
    half = {f"rnn/lstm_cell/{k}": a.astype(np.float16) for k, a in v.items()}
    with pytest.warns(UserWarning, match="'rnn/lstm_cell' hold float16 / bfloat16"):
        model = fl.from_tf1_checkpoint(half)
    assert model.dtype == np.float32
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fl.from_tf1_checkpoint({k: a.astype(np.float32) for k, a in half.items()})


def test_float16_tensors_of_other_libraries_warn_too():
    """A float16 torch (or TF) tensor's dtype is not a NumPy dtype: such variables loaded
    as float32 without the warning a float16 NumPy array gets."""
    torch = pytest.importorskip("torch")
    v = random_vars(np.random.default_rng(7), 3, 4)
    half = {f"rnn/lstm_cell/{k}": torch.from_numpy(a).half() for k, a in v.items()}
    with pytest.warns(UserWarning, match="hold float16 / bfloat16 variables"):
        assert fl.from_tf1_checkpoint(half).dtype == np.float32


def test_static_stack_bidirectional_names_load_as_a_stack():
    """TF's static stack_bidirectional_rnn names its layers cell_k/fw and cell_k/bw (no
    bidirectional_rnn level): those were taken for two RNNs once cell_k had to follow
    multi_rnn_cell or precede bidirectional_rnn."""
    rng = np.random.default_rng(8)
    variables = {}
    for k, width in enumerate((3, 8)):
        for d in ("fw", "bw"):
            v = random_vars(rng, width, 4)
            variables.update({f"stack_bidirectional_rnn/cell_{k}/{d}/basic_lstm_cell/{n}": a
                              for n, a in v.items()})
    model = fl.from_tf1_checkpoint(variables)
    assert isinstance(model, fl.MultiLSTM) and len(model) == 2
    assert all(isinstance(layer, fl.Bidirectional) for layer in model.layers)
    dynamic = fl.from_tf1_checkpoint({k.replace("/fw/", "/bidirectional_rnn/fw/")
                                      .replace("/bw/", "/bidirectional_rnn/bw/"): v
                                      for k, v in variables.items()})
    X = rng.normal(size=(2, 5, 3))
    np.testing.assert_array_equal(model(X)[0], dynamic(X)[0])
