"""The NumPy reference forward against outputs of real TF1, Keras, PyTorch and onnxruntime runs.

The golden files (tests/data/*.npz, described by tests/data/manifest.json) hold each
framework's weights in its own layout; ``_convert`` maps them to fastlstm's (SPEC.md §8).
"""

import json
import os

import numpy as np
import pytest

from fastlstm import reference as ref

from _convert import from_keras, from_onnx, from_tf, from_torch, torch_layer

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
with open(os.path.join(DATA, "manifest.json")) as fh:
    MANIFEST = json.load(fh)
CASES = sorted(MANIFEST["cases"])


def load(name):
    return np.load(os.path.join(DATA, name + ".npz"))


def meta(npz):
    return json.loads(str(npz["meta_json"]))


def atol(name):
    return {"_f32": 1e-5, "_f64": 1e-12}[name[-4:]]


def close(actual, expected, name):
    expected = np.asarray(expected)
    assert np.asarray(actual).shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol(name))


def cases_with(prefix):
    return [c for c in CASES if c.startswith(prefix)]


def test_every_golden_case_is_tested():
    tested = set()
    for prefix in ("tf1_basic_cell_step", "tf1_multirnn", "torch_", "onnx_", "xfw_"):
        tested.update(cases_with(prefix))
    assert tested == set(CASES)
    for name in CASES:
        assert os.path.exists(os.path.join(DATA, name + ".npz"))


def test_golden_dtypes_match_names():
    for name in CASES:
        npz = load(name)
        want = np.float32 if name.endswith("_f32") else np.float64
        floats = [k for k in npz.files if npz[k].dtype.kind == "f"]
        assert floats and all(npz[k].dtype == want for k in floats), name


# ---------------------------------------------------------------------------------------------
# TF1
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", cases_with("tf1_basic_cell_step"))
def test_tf1_basic_cell_step(name):
    d = load(name)
    x = d["x"]
    params = from_tf(d["kernel"], d["bias"], d["forget_bias"], x.shape[1])
    assert params["b"].dtype == x.dtype
    state = (d["state.c"], d["state.h"])
    # as one step ...
    m, c = ref.lstm_step(x, *state, params)
    close(m, d["output"], name)
    close(c, d["new_state.c"], name)
    # ... and as a length-1 sequence
    Y, (c, h) = ref.lstm_forward(x[:, None, :], params, initial_state=state)
    assert Y.dtype == x.dtype
    close(Y[:, 0], d["output"], name)
    close(c, d["new_state.c"], name)
    close(h, d["new_state.h"], name)


@pytest.mark.parametrize("name", cases_with("tf1_multirnn"))
def test_tf1_multirnn_dynamic_rnn(name):
    d = load(name)
    X = d["inputs"]
    lengths = d["sequence_length"] if "sequence_length" in d.files else None
    layers = []
    width = X.shape[2]
    for k in range(2):
        p = from_tf(d[f"cell_{k}.kernel"], d[f"cell_{k}.bias"], d["forget_bias"], width)
        layers.append(("lstm", p, None))
        width = p["U"].shape[0]
    Y, states = ref.stack_forward(X, layers, lengths=lengths)
    assert Y.dtype == X.dtype
    close(Y, d["outputs"], name)
    for k in range(2):
        close(states[k][0], d[f"final_state.{k}.c"], name)
        close(states[k][1], d[f"final_state.{k}.h"], name)


# ---------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", cases_with("torch_"))
def test_torch_multilayer_bidirectional(name):
    d = load(name)
    cfg = meta(d)["config"]
    assert cfg["batch_first"] and cfg["bidirectional"]
    L = cfg["num_layers"]
    D = 2
    X = d["input"]                              # batch_first: (N, T, I)
    layers, state0 = [], []
    for k in range(L):
        layers.append(("bidirectional", (torch_layer(d, k), None),
                       (torch_layer(d, k, reverse=True), None)))
        # torch's h0/c0 are (L*D, N, H), index layer*D + direction
        state0.append(tuple((d["c0"][k * D + j], d["h0"][k * D + j]) for j in range(D)))
    Y, states = ref.stack_forward(X, layers, initial_state=tuple(state0))
    close(Y, d["output"], name)
    for k in range(L):
        for j in range(D):
            close(states[k][j][0], d["c_n"][k * D + j], name)
            close(states[k][j][1], d["h_n"][k * D + j], name)


# ---------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------

def run_onnx_reference(W, R, B, X, initial_h, initial_c, direction, sequence_lens=None):
    """ONNX LSTM (layout 0) through the reference: returns Y [T,D,N,H], Y_h, Y_c [D,N,H].

    ONNX differs from TF in one place (SPEC §5): a row of length 0 has Y_h = Y_c = 0, not
    the initial state.
    """
    D = W.shape[0]
    Xb = np.transpose(X, (1, 0, 2))             # (T, N, I) -> (N, T, I)
    reverses = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[
        direction]
    assert len(reverses) == D
    Ys, hs, cs = [], [], []
    for j, rev in enumerate(reverses):
        p = from_onnx(W, R, B, direction=j)
        Y, (c, h) = ref.lstm_forward(Xb, p, initial_state=(initial_c[j], initial_h[j]),
                                     lengths=sequence_lens, reverse=rev)
        if sequence_lens is not None:
            empty = (np.asarray(sequence_lens) == 0)[:, None]
            c = np.where(empty, 0, c)
            h = np.where(empty, 0, h)
        Ys.append(np.transpose(Y, (1, 0, 2)))
        hs.append(h)
        cs.append(c)
    return np.stack(Ys, axis=1), np.stack(hs), np.stack(cs)


@pytest.mark.parametrize("name", cases_with("onnx_"))
def test_onnx(name):
    d = load(name)
    m = meta(d)
    assert m["layout"] == 0
    seq = d["sequence_lens"] if "sequence_lens" in d.files else None
    Y, Y_h, Y_c = run_onnx_reference(d["W"], d["R"], d["B"], d["X"], d["initial_h"],
                                     d["initial_c"], m["attributes"]["direction"], seq)
    close(Y, d["Y"], name)
    close(Y_h, d["Y_h"], name)
    close(Y_c, d["Y_c"], name)


def test_onnx_zero_length_rule():
    """The ONNX adapter above zeroes a length-0 row's state where the reference keeps it."""
    rng = np.random.default_rng(0)
    T, N, I, H = 3, 2, 2, 2
    W, R = rng.normal(size=(1, 4 * H, I)), rng.normal(size=(1, 4 * H, H))
    B = rng.normal(size=(1, 8 * H))
    X = rng.normal(size=(T, N, I))
    h0, c0 = rng.normal(size=(1, N, H)), rng.normal(size=(1, N, H))
    Y, Y_h, Y_c = run_onnx_reference(W, R, B, X, h0, c0, "forward", np.array([0, 3]))
    assert np.all(Y[:, :, 0] == 0) and np.all(Y_h[:, 0] == 0) and np.all(Y_c[:, 0] == 0)
    _, (c, h) = ref.lstm_forward(np.transpose(X, (1, 0, 2)), from_onnx(W, R, B),
                                 initial_state=(c0[0], h0[0]), lengths=[0, 3])
    np.testing.assert_array_equal(c[0], c0[0, 0])
    np.testing.assert_array_equal(h[0], h0[0, 0])
    np.testing.assert_array_equal(Y_c[0, 1], c[1])


# ---------------------------------------------------------------------------------------------
# one model in four layouts
# ---------------------------------------------------------------------------------------------

def xfw_params(d):
    I = d["inputs"].shape[2]
    return {
        "tf": from_tf(d["tf.kernel"], d["tf.bias"], d["tf.forget_bias"], I),
        "keras": from_keras(d["keras.kernel"], d["keras.recurrent_kernel"], d["keras.bias"]),
        "torch": from_torch(d["torch.weight_ih_l0"], d["torch.weight_hh_l0"],
                            d["torch.bias_ih_l0"], d["torch.bias_hh_l0"]),
        "onnx": from_onnx(d["onnx.W"], d["onnx.R"], d["onnx.B"]),
    }


@pytest.mark.parametrize("framework", ["tf", "keras", "torch", "onnx"])
@pytest.mark.parametrize("name", cases_with("xfw_"))
def test_cross_framework(name, framework):
    d = load(name)
    params = xfw_params(d)[framework]
    lengths = d["sequence_length"] if "sequence_length" in d.files else None
    s0 = (d["initial_state.c"], d["initial_state.h"])
    Y, (c, h) = ref.lstm_forward(d["inputs"], params, initial_state=s0, lengths=lengths)
    assert Y.dtype == d["inputs"].dtype
    close(Y, d["outputs"], name)
    close(c, d["final_state.c"], name)
    close(h, d["final_state.h"], name)
    if framework == "onnx":
        # and through the ONNX calling convention (time-major, direction axis, h before c)
        seq = None if lengths is None else np.asarray(lengths)
        Yo, Y_h, Y_c = run_onnx_reference(
            d["onnx.W"], d["onnx.R"], d["onnx.B"], np.transpose(d["inputs"], (1, 0, 2)),
            d["initial_state.h"][None], d["initial_state.c"][None], "forward", seq)
        close(np.transpose(Yo[:, 0], (1, 0, 2)), d["outputs"], name)
        close(Y_h[0], d["final_state.h"], name)
        close(Y_c[0], d["final_state.c"], name)


@pytest.mark.parametrize("name", [c for c in cases_with("xfw_") if "seqlen" in c])
def test_keras_masked_outputs(name):
    """Keras repeats the last valid output on masked steps (0 before the first one)."""
    d = load(name)
    lengths = d["sequence_length"]
    params = xfw_params(d)["keras"]
    Y, _ = ref.lstm_forward(d["inputs"], params,
                            initial_state=(d["initial_state.c"], d["initial_state.h"]),
                            lengths=lengths)
    keras_Y = Y.copy()
    for b, L in enumerate(lengths):
        keras_Y[b, L:] = Y[b, L - 1] if L > 0 else 0
    assert not np.allclose(keras_Y, Y)
    close(keras_Y, d["keras.outputs_masked"], name)
