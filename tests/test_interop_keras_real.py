"""Keras interop against real Keras 3 runs (the torch backend; no TensorFlow needed).

Skipped without the ``keras`` package (``pip install fastlstm[keras]``, with torch as its
backend).  The oracle is Keras itself: ``keras.layers.LSTM`` / ``Bidirectional`` called on
the same inputs, with and without masks and initial states."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":      # pragma: no cover - another backend was chosen
    pytest.skip(f"these tests run Keras on torch, not {keras.backend.backend()}",
                allow_module_level=True)

import fastlstm as fl  # noqa: E402
from fastlstm.interop import keras_config, keras_masked_outputs  # noqa: E402

# Keras' own NumPy 2 deprecation notices, nothing of fastlstm's
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

N, T, I, H = 4, 6, 3, 5
TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _random_weights(layer, rng, dtype):
    layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype(dtype)
                       for w in layer.get_weights()])


def _keras_lstm(rng, dtype=np.float32, **kw):
    layer = keras.layers.LSTM(H, return_sequences=True, return_state=True,
                              dtype=np.dtype(dtype).name, **kw)
    layer.build((None, T, I))
    _random_weights(layer, rng, dtype)
    return layer


def _lengths_mask(lengths):
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "linear"])
@pytest.mark.parametrize("recurrent_activation", ["sigmoid", "hard_sigmoid"])
def test_from_keras_layer_matches_keras(dtype, activation, recurrent_activation):
    rng = np.random.default_rng(0)
    layer = _keras_lstm(rng, dtype, activation=activation,
                        recurrent_activation=recurrent_activation)
    model = fl.from_keras(layer)
    # Keras 3's hard_sigmoid is x/6 + 0.5 (fastlstm's "hard_sigmoid")
    assert (model.activation, model.recurrent_activation) == (activation,
                                                               recurrent_activation)
    assert model.dtype == dtype
    X = rng.normal(size=(N, T, I)).astype(dtype)
    h0 = rng.normal(size=(N, H)).astype(dtype)
    c0 = rng.normal(size=(N, H)).astype(dtype)
    out, h, c = (_np(a) for a in layer(X, initial_state=[h0, c0]))   # Keras: [h, c]
    Y, state = model(X, initial_state=(c0, h0))
    np.testing.assert_allclose(Y, out, **TOL[dtype])
    np.testing.assert_allclose(state.h, h, **TOL[dtype])
    np.testing.assert_allclose(state.c, c, **TOL[dtype])


def test_no_bias_and_unit_forget_bias():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(N, T, I)).astype(np.float32)
    for kw in (dict(use_bias=False), dict(unit_forget_bias=True)):
        layer = keras.layers.LSTM(H, return_sequences=True, **kw)
        layer.build((None, T, I))
        if kw.get("use_bias", True):    # keep Keras' initial bias (forget block 1)
            kernel, rec, bias = layer.get_weights()
            np.testing.assert_array_equal(bias[H:2 * H], 1.0)
        model = fl.from_keras(layer)
        np.testing.assert_allclose(model(X)[0], _np(layer(X)), **TOL[np.float32])


def test_masked_keras_outputs_and_states():
    rng = np.random.default_rng(2)
    layer = _keras_lstm(rng)
    model = fl.from_keras(layer)
    X = rng.normal(size=(N, T, I)).astype(np.float32)
    lengths = np.array([6, 2, 0, 5])
    out, h, c = (_np(a) for a in layer(X, mask=_lengths_mask(lengths)))
    Y, state = model(X, lengths=lengths)
    # Keras repeats the last valid output on padded steps; the states agree as they are
    np.testing.assert_allclose(keras_masked_outputs(Y, lengths), out, **TOL[np.float32])
    np.testing.assert_allclose(state.h, h, **TOL[np.float32])
    np.testing.assert_allclose(state.c, c, **TOL[np.float32])


@pytest.mark.parametrize("masked", [False, True])
def test_bidirectional_matches_keras(masked):
    rng = np.random.default_rng(3)
    bi = keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True))
    bi.build((None, T, I))
    _random_weights(bi, rng, np.float32)
    model = fl.from_keras(bi)
    assert isinstance(model, fl.Bidirectional)
    X = rng.normal(size=(N, T, I)).astype(np.float32)
    lengths = np.array([6, 2, 1, 4]) if masked else None
    out = _np(bi(X, mask=_lengths_mask(lengths)) if masked else bi(X))
    Y, _ = model(X, lengths=lengths)
    for n in range(N):                  # the valid steps of each row
        L = T if lengths is None else lengths[n]
        np.testing.assert_allclose(Y[n, :L], out[n, :L], **TOL[np.float32])


def test_export_builds_the_same_keras_layer():
    rng = np.random.default_rng(4)
    for model in (fl.LSTM(I, H, activation="relu", recurrent_activation="hard_sigmoid",
                          random_state=0),
                  fl.LSTM(I, H, activation="sigmoid", random_state=1)):
        for v in model.params.values():
            v[...] = rng.normal(scale=0.5, size=v.shape)
        layer = keras.layers.LSTM(**keras_config(model))   # sequences and states
        layer.build((None, T, I))
        layer.set_weights(fl.to_keras_weights(model))
        X = rng.normal(size=(N, T, I)).astype(np.float32)
        out, h, c = (_np(a) for a in layer(X))
        Y, state = model(X)
        np.testing.assert_allclose(out, Y, **TOL[np.float32])
        np.testing.assert_allclose(c, state.c, **TOL[np.float32])


def test_go_backwards_is_refused_and_keras2_hard_sigmoid_is_named():
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="go_backwards=True"):
        fl.from_keras(_keras_lstm(rng, go_backwards=True))
    # the Keras 2 formula has no Keras 3 name: exporting it is refused
    with pytest.raises(ValueError, match="hard_sigmoid"):
        keras_config(fl.LSTM(I, H, recurrent_activation="hard_sigmoid_keras2"))


def test_keras_version_of_a_subclass_defined_elsewhere(tmp_path, monkeypatch):
    """A Keras 3 LSTM subclass defined in a package of another version: the version (and
    so hard_sigmoid's formula) comes from the Keras class it derives from, not from the
    package that defines the subclass."""
    pkg = tmp_path / "oldpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('__version__ = "2.4.1"\n')
    (pkg / "layers.py").write_text(
        "import keras\n\nclass MyLSTM(keras.layers.LSTM):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from oldpkg.layers import MyLSTM

    rng = np.random.default_rng(5)
    layer = MyLSTM(H, recurrent_activation="hard_sigmoid", return_sequences=True)
    layer.build((None, T, I))
    _random_weights(layer, rng, np.float32)
    X = rng.normal(scale=2.0, size=(N, T, I)).astype(np.float32)
    model = fl.from_keras(layer)
    assert model.recurrent_activation == "hard_sigmoid"        # Keras 3's x/6 + 0.5
    np.testing.assert_allclose(model(X)[0], _np(layer(X)), **TOL[np.float32])


def test_stateful_layer_warns_and_its_states_continue_the_sequence():
    """A stateful layer's carried states are not weights: from_keras says so, and passing
    them as initial_state gives Keras' next call (it was converted silently, and the second
    call differed by 0.28)."""
    rng = np.random.default_rng(8)
    layer = keras.layers.LSTM(H, return_sequences=True, stateful=True)
    layer.build((N, T, I))
    _random_weights(layer, rng, np.float32)
    X1, X2 = (rng.normal(size=(N, T, I)).astype(np.float32) for _ in range(2))
    layer(X1)
    h, c = (_np(v) for v in layer.states)
    want = _np(layer(X2))
    with pytest.warns(UserWarning, match="is stateful: the states it carries"):
        model = fl.from_keras(layer)
    got, _ = model(X2, initial_state=fl.LSTMState(c, h))
    np.testing.assert_allclose(got, want, **TOL[np.float32])


def test_mixed_precision_layer_warns():
    """A mixed_float16 layer computes in float16: the float32 import differs by float16
    rounding (5e-4), which from_keras now says."""
    layer = keras.layers.LSTM(H, dtype="mixed_float16")
    layer.build((None, T, I))
    with pytest.warns(UserWarning, match="computes in float16"):
        model = fl.from_keras(layer)
    assert model.dtype == np.float32


def test_call_option_warnings_point_at_the_caller():
    layer = keras.layers.LSTM(H, stateful=True)
    layer.build((N, T, I))
    import warnings
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fl.from_keras(layer)
    mine = [w for w in seen if "is stateful" in str(w.message)]
    assert len(mine) == 1 and mine[0].filename == __file__


def test_rnn_over_an_lstm_cell_imports_like_lstm():
    """keras.layers.RNN(LSTMCell(units)) computes what LSTM(units) does: it imports (it was
    refused as "not an LSTM layer"); an RNN over stacked cells is refused with what to do."""
    rng = np.random.default_rng(11)
    rnn = keras.layers.RNN(keras.layers.LSTMCell(H, recurrent_activation="hard_sigmoid"),
                           return_sequences=True, return_state=True)
    rnn.build((None, T, I))
    _random_weights(rnn, rng, np.float32)
    X = rng.normal(size=(N, T, I)).astype(np.float32)
    out, h, c = (_np(a) for a in rnn(X))
    model = fl.from_keras(rnn)
    Y, state = model(X)
    np.testing.assert_allclose(Y, out, **TOL[np.float32])
    np.testing.assert_allclose(state.c, c, **TOL[np.float32])
    bi = keras.layers.Bidirectional(keras.layers.RNN(keras.layers.LSTMCell(H),
                                                     return_sequences=True))
    bi.build((None, T, I))
    _random_weights(bi, rng, np.float32)
    np.testing.assert_allclose(fl.from_keras(bi)(X)[0], _np(bi(X)), **TOL[np.float32])
    stacked = keras.layers.RNN([keras.layers.LSTMCell(H), keras.layers.LSTMCell(H)])
    stacked.build((None, T, I))
    with pytest.raises(TypeError, match="convert each cell"):
        fl.from_keras(stacked)


def test_subclasses_of_any_name_import():
    """A subclass of keras.layers.LSTM (or of RNN over an LSTMCell) is an LSTM whatever
    it is called; it was refused unless its own name held "LSTM"."""
    rng = np.random.default_rng(12)
    X = rng.normal(size=(N, T, I)).astype(np.float32)

    class Encoder(keras.layers.LSTM):
        pass

    class Recurrent(keras.layers.RNN):
        pass

    for layer in (Encoder(H, return_sequences=True),
                  Recurrent(keras.layers.LSTMCell(H), return_sequences=True)):
        layer.build((None, T, I))
        _random_weights(layer, rng, np.float32)
        np.testing.assert_allclose(fl.from_keras(layer)(X)[0], _np(layer(X)),
                                   **TOL[np.float32])
    with pytest.raises(TypeError, match="expected a Keras LSTM layer, got GRU"):
        fl.from_keras(keras.layers.GRU(H))


def test_subclasses_overriding_call_are_refused():
    """A subclass of keras.layers.LSTM (or of an LSTMCell under RNN) that overrides call
    may compute anything from the same weights: it was imported silently (0.23 off for a
    call that scales its input), as torch subclasses overriding forward are refused."""
    rng = np.random.default_rng(13)
    X = rng.normal(size=(N, T, I)).astype(np.float32)

    class Scaled(keras.layers.LSTM):
        def call(self, sequences, initial_state=None, mask=None, training=False):
            return super().call(2.0 * sequences, initial_state=initial_state, mask=mask,
                                training=training)

    class HalfCell(keras.layers.LSTMCell):
        def call(self, inputs, states, training=False):
            h, (h2, c) = super().call(inputs, states, training=training)
            return 0.5 * h, [0.5 * h2, c]

    for layer, name in ((Scaled(H, return_sequences=True), "Scaled"),
                        (keras.layers.RNN(HalfCell(H), return_sequences=True), "HalfCell")):
        layer(X)
        with pytest.raises(TypeError, match=f"{name} subclasses Keras' .* overrides call"):
            fl.from_keras(layer)


def test_subclasses_overriding_other_methods_or_a_bidirectional_are_refused():
    """Overriding LSTM.inner_loop, a cell's gate computation, or Bidirectional.call
    changes the outputs from the same weights as much as overriding call does: they were
    imported silently (0.23, 0.18 and 0.41 off).  A subclass adding its own methods or
    only its own defaults still imports."""
    rng = np.random.default_rng(14)
    X = rng.normal(size=(N, T, I)).astype(np.float32)

    class Looped(keras.layers.LSTM):
        def inner_loop(self, sequences, initial_state, mask, training=False):
            last, outputs, states = super().inner_loop(sequences, initial_state, mask,
                                                       training)
            return 2.0 * last, 2.0 * outputs, states

    class Gates(keras.layers.LSTMCell):
        def _compute_carry_and_output_fused(self, z, c_tm1):
            c, o = super()._compute_carry_and_output_fused(z, c_tm1)
            return 0.5 * c, o

    class Summed(keras.layers.Bidirectional):
        def call(self, sequences, initial_state=None, mask=None, training=None):
            return 2.0 * super().call(sequences, initial_state=initial_state, mask=mask,
                                      training=training)

    class Started(keras.layers.LSTM):
        def get_initial_state(self, batch_size):
            return [keras.ops.ones((batch_size, H)), keras.ops.ones((batch_size, H))]

    class Plain(keras.layers.LSTM):
        def __init__(self, units, **kwargs):
            super().__init__(units, return_sequences=True, **kwargs)

        def describe(self):
            return f"{self.units} units"

        def get_config(self):
            return super().get_config()

        def get_build_config(self):             # Keras 3's saving: no maths
            return super().get_build_config()

        def save_own_variables(self, store):
            super().save_own_variables(store)

    cases = ((Looped(H, return_sequences=True), "Looped .* overrides inner_loop"),
             (keras.layers.RNN(Gates(H), return_sequences=True),
              "Gates .* overrides _compute_carry_and_output_fused"),
             (Summed(keras.layers.LSTM(H, return_sequences=True)), "Summed .* overrides call"),
             (Started(H, return_sequences=True), "Started .* overrides get_initial_state"))
    for layer, match in cases:
        layer(X)
        with pytest.raises(TypeError, match=match):
            fl.from_keras(layer)
    plain = Plain(H)
    plain.build((None, T, I))
    _random_weights(plain, rng, np.float32)
    np.testing.assert_allclose(fl.from_keras(plain)(X)[0], _np(plain(X)), **TOL[np.float32])


def test_mixed_precision_backward_half_warns():
    """Keras lets a Bidirectional's backward layer compute in float16 beside a float32
    forward layer: only the forward layer's policy was looked at (no warning, 3e-4 off)."""
    bi = keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True),
                                    backward_layer=keras.layers.LSTM(
                                        H, return_sequences=True, go_backwards=True,
                                        dtype="mixed_float16"))
    bi.build((None, T, I))
    with pytest.warns(UserWarning, match="the backward layer of Keras Bidirectional .* "
                                         "computes in float16"):
        fl.from_keras(bi)


def test_keras_config_keeps_the_dtype():
    """A float64 layer's config built a float32 Keras layer (1e-7 off, not 1e-12)."""
    rng = np.random.default_rng(15)
    model = fl.LSTM(I, H, dtype=np.float64, random_state=0)
    layer = keras.layers.LSTM(**keras_config(model))
    layer.build((None, T, I))
    layer.set_weights(fl.to_keras_weights(model))
    X = rng.normal(size=(N, T, I))
    np.testing.assert_allclose(_np(layer(X)[0]), model(X)[0], **TOL[np.float64])


def test_bfloat16_layer_imports_its_weights_exactly():
    """A bfloat16 Keras layer's weights (ml_dtypes' bfloat16, exact in float32) were refused
    as "not real numbers"; now they import, with the mixed-precision warning."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    layer = keras.layers.LSTM(H, dtype="bfloat16", recurrent_initializer="glorot_uniform",
                              return_sequences=True)
    layer.build((None, T, I))
    weights = layer.get_weights()
    assert weights[0].dtype == ml_dtypes.bfloat16
    with pytest.warns(UserWarning, match="computes in bfloat16"):
        model = fl.from_keras(layer)
    assert model.dtype == np.float32
    np.testing.assert_array_equal(model.W, weights[0].astype(np.float32))
    np.testing.assert_array_equal(model.U, weights[1].astype(np.float32))


def test_layers_and_cells_of_the_users_own_are_refused_whatever_their_names():
    """A layer of one's own holding an LSTM (imported with the default tanh where its LSTM
    ran relu: 0.33 off), a hand-written cell under RNN (another gate order: 0.47 off) and
    a layer with forward and backward layers that sums them (read as a concatenating
    Bidirectional: 8 wide where Keras gives 4) were imported by their names."""
    rng = np.random.default_rng(16)
    X = rng.normal(size=(N, T, I)).astype(np.float32)

    class LSTMBlock(keras.layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.lstm = keras.layers.LSTM(units, activation="relu", return_sequences=True)

        def call(self, x):
            return self.lstm(x)

    class MyLSTMCell(keras.layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units, self.state_size = units, [units, units]

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], 4 * self.units))
            self.recurrent_kernel = self.add_weight(shape=(self.units, 4 * self.units))
            self.bias = self.add_weight(shape=(4 * self.units,))

        def call(self, x, states):
            h, c = states
            z = keras.ops.matmul(x, self.kernel) + keras.ops.matmul(h, self.recurrent_kernel)
            i, f, o, g = keras.ops.split(z + self.bias, 4, axis=-1)
            c = keras.ops.sigmoid(f) * c + keras.ops.sigmoid(i) * keras.ops.tanh(g)
            h = keras.ops.sigmoid(o) * keras.ops.tanh(c)
            return h, [h, c]

    class SumBiLSTM(keras.layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.forward_layer = keras.layers.LSTM(units, return_sequences=True)
            self.backward_layer = keras.layers.LSTM(units, return_sequences=True,
                                                    go_backwards=True)
            self.merge_mode = "concat"

        def call(self, x):
            return self.forward_layer(x) + keras.ops.flip(self.backward_layer(x), axis=1)

    block, summed = LSTMBlock(H), SumBiLSTM(H)
    rnn = keras.layers.RNN(MyLSTMCell(H), return_sequences=True)
    for layer in (block, rnn, summed):
        layer(X)
    with pytest.raises(TypeError, match="got LSTMBlock \\(a class of its own"):
        fl.from_keras(block)
    with pytest.raises(TypeError, match="over a MyLSTMCell, not Keras' LSTMCell \\(a cell "
                                        "of your own"):
        fl.from_keras(rnn)
    gru = keras.layers.RNN(keras.layers.GRUCell(H))
    gru.build((None, T, I))
    with pytest.raises(TypeError, match="over a GRUCell, not Keras' LSTMCell$"):
        fl.from_keras(gru)
    with pytest.raises(TypeError, match="expected a Keras Bidirectional, got SumBiLSTM"):
        fl.from_keras(summed)
    # their Keras LSTMs convert one by one
    np.testing.assert_allclose(fl.from_keras(block.lstm)(X)[0], _np(block(X)),
                               **TOL[np.float32])


def test_float16_bidirectional_wrapper_warns_and_layer_activation_objects_are_explained():
    """A Bidirectional wrapper computing in float16 casts its input first (2e-4 off) with
    float32 layers inside: no warning was given.  A layer's activation given as a layer
    object is refused with advice that works for a layer object (passing activation= is
    ignored then)."""
    bi = keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True),
                                    dtype="mixed_float16")
    bi.build((None, T, I))
    assert (bi.compute_dtype, bi.forward_layer.compute_dtype) == ("float16", "float32")
    with pytest.warns(UserWarning, match="Keras Bidirectional .* computes in float16"):
        fl.from_keras(bi)
    layer = keras.layers.LSTM(H, activation=keras.layers.Activation("tanh"))
    layer.build((None, T, I))
    with pytest.raises(ValueError, match="convert the layer's get_weights\\(\\) with "
                                         "activation= that name"):
        fl.from_keras(layer)
    assert fl.from_keras(layer.get_weights(), activation="tanh").activation == "tanh"


def test_bidirectional_halves_of_two_dtypes_are_a_value_error():
    """Keras 3 runs a Bidirectional whose halves have different dtypes; a fastlstm
    Bidirectional has one: from_keras refuses with a ValueError naming both (dtype= imports
    both in one)."""
    bi = keras.layers.Bidirectional(
        keras.layers.LSTM(H, return_sequences=True),
        backward_layer=keras.layers.LSTM(H, return_sequences=True, go_backwards=True,
                                         dtype="float64"))
    bi.build((None, T, I))
    with pytest.raises(ValueError, match="hold float32 and float64 weights.*dtype="):
        fl.from_keras(bi)
    model = fl.from_keras(bi, dtype=np.float64)
    assert model.dtype == np.float64
