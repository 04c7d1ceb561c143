"""The compiled kernels, through the public API, against real TF1 / PyTorch / ONNX runs."""

import numpy as np
import pytest
from _convert import from_onnx, from_tf, torch_layer
from test_golden import cases_with, close, load, meta

import fastlstm as fl


def make_layer(params, dtype, n_threads=1):
    W = params["W"]
    layer = fl.LSTM(W.shape[0], params["b"].shape[0] // 4, dtype=dtype, n_threads=n_threads,
                    proj_size=params["P"].shape[1] if "P" in params else None,
                    peepholes="peepholes" in params)
    for name, value in params.items():
        setattr(layer, name, value)
    return layer


@pytest.mark.parametrize("name", cases_with("tf1_basic_cell_step"))
def test_tf1_basic_cell_step(name):
    d = load(name)
    x = d["x"]
    cell = make_layer(from_tf(d["kernel"], d["bias"], d["forget_bias"], x.shape[1]), x.dtype)
    out, state = cell.step(x, fl.LSTMState(d["state.c"], d["state.h"]))
    close(out, d["output"], name)
    close(state.c, d["new_state.c"], name)
    close(state.h, d["new_state.h"], name)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("name", cases_with("tf1_multirnn"))
def test_tf1_multirnn_dynamic_rnn(name, time_major, n_threads):
    d = load(name)
    X = d["inputs"]
    lengths = d["sequence_length"] if "sequence_length" in d.files else None
    layers, width = [], X.shape[2]
    for k in range(2):
        p = from_tf(d[f"cell_{k}.kernel"], d[f"cell_{k}.bias"], d["forget_bias"], width)
        layers.append(make_layer(p, X.dtype, n_threads))
        width = p["U"].shape[0]
    stack = fl.MultiLSTM(layers)
    Xin = np.swapaxes(X, 0, 1) if time_major else X
    Y, states = stack(Xin, lengths=lengths, time_major=time_major)
    if time_major:
        Y = np.swapaxes(Y, 0, 1)
    close(Y, d["outputs"], name)
    for k in range(2):
        close(states[k].c, d[f"final_state.{k}.c"], name)
        close(states[k].h, d[f"final_state.{k}.h"], name)
    # stepping the stack by hand gives the same (without lengths)
    if lengths is None:
        state = stack.zero_state(X.shape[0])
        for t in range(X.shape[1]):
            out, state = stack.step(X[:, t], state)
            close(out, d["outputs"][:, t], name)


@pytest.mark.parametrize("name", cases_with("torch_"))
def test_torch_multilayer_bidirectional(name):
    d = load(name)
    cfg = meta(d)["config"]
    X = d["input"]
    D, L = 2, cfg["num_layers"]
    layers, state0 = [], []
    for k in range(L):
        layers.append(fl.Bidirectional(make_layer(torch_layer(d, k), X.dtype),
                                       make_layer(torch_layer(d, k, reverse=True), X.dtype)))
        state0.append(tuple(fl.LSTMState(d["c0"][k * D + j], d["h0"][k * D + j])
                            for j in range(D)))
    Y, states = fl.MultiLSTM(layers)(X, initial_state=tuple(state0))
    close(Y, d["output"], name)
    for k in range(L):
        for j in range(D):
            close(states[k][j].c, d["c_n"][k * D + j], name)
            close(states[k][j].h, d["h_n"][k * D + j], name)


@pytest.mark.parametrize("name", cases_with("onnx_"))
def test_onnx(name):
    d = load(name)
    direction = meta(d)["attributes"]["direction"]
    lens = d["sequence_lens"] if "sequence_lens" in d.files else None
    dirs = [0, 1] if direction == "bidirectional" else [0]
    for j in dirs:
        layer = make_layer(from_onnx(d["W"], d["R"], d["B"], direction=j), d["X"].dtype)
        # ONNX layout 0 is time-major: X [T, N, I], Y [T, D, N, H]
        Y, state = layer(d["X"], time_major=True, lengths=lens, reverse=j == 1,
                         initial_state=(d["initial_c"][j], d["initial_h"][j]))
        close(Y, d["Y"][:, j], name)
        if lens is not None:
            assert np.all(lens > 0)  # ONNX zeroes Y_h / Y_c of length-0 rows, TF keeps the state
        close(state.h, d["Y_h"][j], name)
        close(state.c, d["Y_c"][j], name)


@pytest.mark.parametrize("name", cases_with("xfw_"))
def test_cross_framework(name):
    d = load(name)
    layer = make_layer(from_tf(d["tf.kernel"], d["tf.bias"], d["tf.forget_bias"],
                               d["inputs"].shape[2]), d["inputs"].dtype)
    lengths = d["sequence_length"] if "sequence_length" in d.files else None
    Y, state = layer(d["inputs"], lengths=lengths,
                     initial_state=(d["initial_state.c"], d["initial_state.h"]))
    close(Y, d["outputs"], name)
    close(state.c, d["final_state.c"], name)
    close(state.h, d["final_state.h"], name)
