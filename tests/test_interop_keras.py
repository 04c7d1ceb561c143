"""Keras interop without Keras: golden Keras 3 numbers, and a NumPy transcription of Keras'
LSTM step (its [h, c] state, its two hard_sigmoid formulas) as the oracle."""

import os

import numpy as np
import pytest

import fastlstm as fl
from fastlstm.interop import keras_config, keras_masked_outputs

DATA = os.path.join(os.path.dirname(__file__), "data")


# ---------------------------------------------------------------------------------------
# Keras' maths, transcribed (SPEC.md §6), float64


def _sigmoid(x):
    # 1 / (1 + e^-x) without overflowing e^-x for very negative x
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


KERAS_RECURRENT = {
    ("sigmoid", 2): _sigmoid,
    ("sigmoid", 3): _sigmoid,
    # Keras 2: x = 0.2 * x + 0.5, then clip to [0, 1]
    ("hard_sigmoid", 2): lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0),
    # Keras 3: relu6(x + 3) / 6
    ("hard_sigmoid", 3): lambda x: np.minimum(np.maximum(x + 3.0, 0.0), 6.0) / 6.0,
}
KERAS_ACT = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0), "sigmoid": _sigmoid,
             "linear": lambda x: x}


def keras_lstm(X, kernel, recurrent_kernel, bias, activation, recurrent_activation, version,
               go_backwards=False):
    """keras.layers.LSTM(return_sequences=True, return_state=True) without a mask:
    returns (outputs, h, c) -- Keras' [h, c] order."""
    act = KERAS_ACT[activation]
    rec = KERAS_RECURRENT[(recurrent_activation, version)]
    N, T, _ = X.shape
    H = recurrent_kernel.shape[0]
    h = np.zeros((N, H))
    c = np.zeros((N, H))
    outs = []
    steps = range(T - 1, -1, -1) if go_backwards else range(T)
    for t in steps:
        z = X[:, t] @ kernel + h @ recurrent_kernel + bias
        zi, zf, zc, zo = np.split(z, 4, axis=1)
        c = rec(zf) * c + rec(zi) * act(zc)
        h = rec(zo) * act(c)
        outs.append(h)
    return np.stack(outs, axis=1), h, c


def _weights(rng, I=5, H=4, scale=0.7):
    return [rng.normal(scale=scale, size=(I, 4 * H)), rng.normal(scale=scale, size=(H, 4 * H)),
            rng.normal(scale=scale, size=(4 * H,))]


# ---------------------------------------------------------------------------------------
# golden (real Keras 3.15 numbers)


@pytest.mark.parametrize("name", ["xfw_basic_tutorial_f32", "xfw_basic_tutorial_f64",
                                  "xfw_basic_tutorial_seqlen_f32",
                                  "xfw_basic_tutorial_seqlen_f64"])
def test_golden_keras_weights(name):
    g = np.load(os.path.join(DATA, name + ".npz"))
    layer = fl.from_keras([g["keras.kernel"], g["keras.recurrent_kernel"], g["keras.bias"]])
    dt = g["keras.kernel"].dtype
    assert layer.dtype == dt
    lengths = g["sequence_length"] if "sequence_length" in g.files else None
    Y, s = layer(g["inputs"], initial_state=(g["initial_state.c"], g["initial_state.h"]),
                 lengths=lengths)
    tol = dict(rtol=1e-5, atol=1e-6) if dt == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(Y, g["outputs"], **tol)
    np.testing.assert_allclose(s.c, g["final_state.c"], **tol)
    np.testing.assert_allclose(s.h, g["final_state.h"], **tol)
    if "keras.outputs_masked" in g.files:  # Keras repeats the last valid output
        np.testing.assert_allclose(keras_masked_outputs(Y, lengths), g["keras.outputs_masked"],
                                   **tol)
    # and back
    for a, b in zip(fl.to_keras_weights(layer),
                    [g["keras.kernel"], g["keras.recurrent_kernel"], g["keras.bias"]]):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------
# against the transcription


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("recurrent", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "linear"])
def test_weights_list_matches_keras_formulas(activation, recurrent, version):
    rng = np.random.default_rng(hash((activation, recurrent, version)) % 2**32)
    w = _weights(rng, scale=1.5)  # large enough to reach the hard sigmoids' flat parts
    X = rng.normal(size=(3, 6, 5))
    want, h, c = keras_lstm(X, *w, activation, recurrent, version)
    layer = fl.from_keras(w, activation=activation, recurrent_activation=recurrent,
                          keras_version=version)
    assert layer.dtype == np.float64
    Y, s = layer(X)
    np.testing.assert_allclose(Y, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.h, h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.c, c, rtol=1e-12, atol=1e-12)


def test_hard_sigmoid_versions_differ_and_need_a_version():
    rng = np.random.default_rng(0)
    w = _weights(rng, scale=1.5)
    X = rng.normal(size=(2, 4, 5))
    with pytest.raises(ValueError, match="keras_version=2 or 3"):
        fl.from_keras(w, recurrent_activation="hard_sigmoid")
    y2 = fl.from_keras(w, recurrent_activation="hard_sigmoid", keras_version=2)(X)[0]
    y3 = fl.from_keras(w, recurrent_activation="hard_sigmoid", keras_version=3)(X)[0]
    assert np.abs(y2 - y3).max() > 1e-3
    # explicit names need no version
    l2 = fl.from_keras(w, recurrent_activation="hard_sigmoid_keras2")
    l3 = fl.from_keras(w, recurrent_activation="hard_sigmoid_keras3")
    assert (l2.recurrent_activation, l3.recurrent_activation) == \
        ("hard_sigmoid_keras2", "hard_sigmoid")


@pytest.mark.parametrize("kwargs, match", [
    (dict(activation="elu"), "activation='elu'"),
    (dict(activation="hard_sigmoid"), "activation='hard_sigmoid'"),
    (dict(recurrent_activation="tanh"), "recurrent_activation='tanh'"),
])
def test_unsupported_activations_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fl.from_keras(_weights(np.random.default_rng(0)), **kwargs)


def test_weights_list_shapes_and_variants():
    rng = np.random.default_rng(1)
    k, r, b = _weights(rng)
    no_bias = fl.from_keras([k, r])
    np.testing.assert_array_equal(no_bias.b, 0)
    cudnn = fl.from_keras([k, r, np.concatenate([b, 2 * b])])  # CuDNNLSTM: two biases
    np.testing.assert_allclose(cudnn.b, 3 * b)
    with pytest.raises(ValueError, match="recurrent_kernel must have shape"):
        fl.from_keras([k, r[:, :8], b])
    with pytest.raises(ValueError, match="bias must have shape"):
        fl.from_keras([k, r, b[:5]])
    with pytest.raises(ValueError, match="list of 4 arrays"):
        fl.from_keras([k, r, b, b])
    assert fl.from_keras([k, r, b], dtype=np.float32).dtype == np.float32


# ---------------------------------------------------------------------------------------
# layer objects (duck-typed stand-ins for keras.layers.LSTM / Bidirectional)


def keras_hard_sigmoid(x):  # a function named like Keras' own, with Keras 2's formula
    return np.clip(0.2 * np.asarray(x) + 0.5, 0.0, 1.0)


keras_hard_sigmoid.__name__ = "hard_sigmoid"
keras_hard_sigmoid.__module__ = "tf_keras.src.activations"   # where Keras' own lives


def fake_lstm(weights, activation=np.tanh, recurrent=keras_hard_sigmoid, module="tf_keras",
              go_backwards=False, name="lstm"):
    cls = type("LSTM", (), {"__module__": module + ".layers"})
    layer = cls()
    layer.get_weights = lambda: [np.array(w) for w in weights]
    layer.activation = activation
    layer.recurrent_activation = recurrent
    layer.go_backwards = go_backwards
    layer.name = name
    return layer


def test_layer_object_reads_version_from_its_package():
    rng = np.random.default_rng(2)
    w = _weights(rng, scale=1.5)
    X = rng.normal(size=(2, 5, 5))
    # the name "hard_sigmoid" is read by the layer's package: tf_keras is Keras 2
    layer = fl.from_keras(fake_lstm(w, module="tf_keras", recurrent="hard_sigmoid"))
    assert layer.recurrent_activation == "hard_sigmoid_keras2"
    np.testing.assert_allclose(layer(X)[0], keras_lstm(X, *w, "tanh", "hard_sigmoid", 2)[0],
                               rtol=1e-12, atol=1e-12)
    # a class of another package is no Keras LSTM, whatever it is called (a layer of the
    # user's own holding one, a hand-written cell): it may compute anything
    with pytest.raises(TypeError, match="got LSTM \\(a class of its own"):
        fl.from_keras(fake_lstm(w, module="somewhere_unknown", recurrent="hard_sigmoid"))
    # Keras' own function object is read by the package that defines it (tf_keras here),
    # whatever the layer's package or keras_version say
    for module, version in (("keras", None), ("keras", 3)):
        layer = fl.from_keras(fake_lstm(w, module=module), keras_version=version)
        assert layer.recurrent_activation == "hard_sigmoid_keras2"
    with pytest.raises(ValueError, match="go_backwards"):
        fl.from_keras(fake_lstm(w, go_backwards=True))
    with pytest.raises(ValueError, match="not built"):
        fl.from_keras(fake_lstm([]))


def _named(fn, module, name="hard_sigmoid"):
    fn.__name__, fn.__module__ = name, module
    return fn


def test_keras_hard_sigmoid_read_by_what_it_computes():
    """A Keras function named hard_sigmoid is read by its formula: TF 2.16+'s public
    tf.keras.backend.hard_sigmoid lives in Keras 3's package (keras.src.legacy) but
    computes Keras 2's 0.2x + 0.5, and was read as Keras 3's x/6 + 0.5 (0.09 off); a
    function of tf_keras may compute x/6 + 0.5 (relu6(x + 3) / 6)."""
    rng = np.random.default_rng(4)
    w = _weights(rng, scale=1.5)
    keras2 = lambda x: np.clip(0.2 * np.asarray(x) + 0.5, 0, 1)     # noqa: E731
    keras3 = lambda x: np.clip(np.asarray(x) / 6 + 0.5, 0, 1)       # noqa: E731
    for fn, module, want in ((keras2, "keras.src.legacy.backend", "hard_sigmoid_keras2"),
                             (keras2, "keras.src.activations", "hard_sigmoid_keras2"),
                             (keras3, "tf_keras.src.applications.mobilenet_v3",
                              "hard_sigmoid")):
        fn = _named(fn, module)
        for version in (None, 2, 3):     # the function's formula decides
            assert fl.from_keras(w, recurrent_activation=fn, keras_version=version) \
                .recurrent_activation == want
            assert fl.from_keras(fake_lstm(w, recurrent=fn, module="keras"),
                                 keras_version=version).recurrent_activation == want
    with pytest.raises(ValueError, match="computes neither Keras 2's nor Keras 3's"):
        fl.from_keras(w, recurrent_activation=_named(lambda x: np.asarray(x), "keras.src.x"))

    def symbolic(x):                     # not callable on arrays here (graph mode)
        raise TypeError("symbolic tensors only")
    # then the package decides: Keras 3's legacy API is Keras 2's maths
    assert fl.from_keras(w, recurrent_activation=_named(symbolic, "keras.src.legacy.backend"),
                         keras_version=3).recurrent_activation == "hard_sigmoid_keras2"


def test_wrapped_functions_are_identified_by_what_they_wrap():
    """np.vectorize reports numpy's module and the wrapped function's name: a function of
    the user's own called relu (computing 3 * relu) was read as relu."""
    def relu(x):
        return 3 * np.maximum(x, 0)
    w = _weights(np.random.default_rng(5))
    with pytest.raises(ValueError, match="not a function fastlstm can identify"):
        fl.from_keras(w, activation=np.vectorize(relu))
    with pytest.raises(ValueError, match="not a function fastlstm can identify"):
        fl.from_tf1(np.zeros((9, 16)), activation=np.vectorize(relu))
    assert fl.from_keras(w, activation=np.vectorize(np.tanh)).activation == "tanh"


def test_matrix_constructors_and_classes_are_not_read_as_activations():
    """np.identity(n) builds a matrix and torch's functional linear(x, W) is a product: they
    are not the identity / linear activation their names say (TF and Keras fail on them);
    a class (torch.nn.Tanh) builds an object when called.  tf.identity, Keras' linear and
    fastlstm.tf1's identity still read as linear."""
    import fastlstm.tf1 as ftf

    def _named(name, module):
        def fn(x):
            return x
        fn.__name__, fn.__module__ = name, module
        return fn

    w = _weights(np.random.default_rng(6))
    refused = [np.identity, _named("identity", "keras.src.ops.numpy"),
               _named("identity", "jax.numpy"), _named("linear", "torch._C._nn"),
               type("Tanh", (), {"__module__": "torch.nn.modules.activation"})]
    for fn in refused:
        with pytest.raises(ValueError, match="not a function fastlstm can identify"):
            fl.from_keras(w, activation=fn)
        with pytest.raises(ValueError, match="not a function fastlstm can identify"):
            ftf.BasicLSTMCell(3, activation=fn)
    for fn in (_named("identity", "tensorflow.python.ops.array_ops"), ftf.identity):
        assert ftf.BasicLSTMCell(3, activation=fn)._activation == "linear"
    assert fl.from_keras(w, activation=_named("linear", "keras.src.activations.activations")
                         ).activation == "linear"


def test_bidirectional_layer_object():
    rng = np.random.default_rng(3)
    wf, wb = _weights(rng), _weights(rng)
    bi = type("Bidirectional", (), {"__module__": "tf_keras.layers"})()
    bi.forward_layer = fake_lstm(wf, recurrent=_sigmoid_named())
    bi.backward_layer = fake_lstm(wb, recurrent=_sigmoid_named(), go_backwards=True)
    bi.merge_mode = "concat"
    model = fl.from_keras(bi)
    assert isinstance(model, fl.Bidirectional)
    X = rng.normal(size=(2, 5, 5))
    yf = keras_lstm(X, *wf, "tanh", "sigmoid", 2)[0]
    yb = keras_lstm(X, *wb, "tanh", "sigmoid", 2, go_backwards=True)[0][:, ::-1]
    np.testing.assert_allclose(model(X)[0], np.concatenate([yf, yb], -1), rtol=1e-12,
                               atol=1e-12)
    assert len(fl.to_keras_weights(model)) == 6
    bi.merge_mode = "sum"
    with pytest.raises(ValueError, match="merge_mode"):
        fl.from_keras(bi)


def _sigmoid_named():
    def sigmoid(x):
        return x
    sigmoid.__module__ = "tf_keras.src.activations"
    return sigmoid


# ---------------------------------------------------------------------------------------
# export


def test_to_keras_weights_and_config():
    layer = fl.LSTM(5, 4, dtype=np.float64, random_state=0,
                    recurrent_activation="hard_sigmoid_keras2", activation="relu")
    k, r, b = fl.to_keras_weights(layer)
    np.testing.assert_array_equal(k, layer.W)
    k[...] = 0  # copies, not views
    assert layer.W.any()
    cfg = keras_config(layer, keras_version=2)
    assert cfg["recurrent_activation"] == "hard_sigmoid" and cfg["activation"] == "relu"
    assert cfg["units"] == 4
    with pytest.raises(ValueError, match="no Keras 3 equivalent"):
        keras_config(layer, keras_version=3)
    # the exported weights, run through Keras' maths, give fastlstm's outputs
    X = np.random.default_rng(0).normal(size=(2, 4, 5))
    want = keras_lstm(X, *fl.to_keras_weights(layer), "relu", "hard_sigmoid", 2)[0]
    np.testing.assert_allclose(layer(X)[0], want, rtol=1e-12, atol=1e-12)
    stack = fl.MultiLSTM([fl.LSTM(5, 4), fl.LSTM(4, 3)])
    ws = fl.to_keras_weights(stack)
    assert [len(w) for w in ws] == [3, 3] and ws[1][1].shape == (3, 12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(peepholes=True), "peepholes"),
    (dict(proj_size=2), "projection"),
    (dict(cell_clip=0.5), "cell_clip"),
])
def test_to_keras_refuses(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fl.to_keras_weights(fl.LSTM(3, 4, **kwargs))


def test_keras_masked_outputs_checks():
    Y = np.arange(12.0).reshape(1, 4, 3)
    out = keras_masked_outputs(Y * (np.arange(4) < 2)[None, :, None], [2])
    np.testing.assert_array_equal(out[0, 2:], np.broadcast_to(Y[0, 1], (2, 3)))
    with pytest.raises(ValueError, match="lengths must be in"):
        keras_masked_outputs(Y, [5])


def test_keras_version_and_masked_output_arguments():
    w = [np.zeros((3, 16)), np.zeros((4, 16)), np.zeros(16)]
    for bad in (7, "x", True):
        with pytest.raises(ValueError, match="keras_version must be None, 2 or 3"):
            fl.from_keras(w, keras_version=bad)
    with pytest.raises(TypeError, match="Y must hold real numbers"):
        keras_masked_outputs(np.full((1, 2, 3), "a"), [1])
