"""TF1 interop against real TensorFlow runs: TF 2.x running the TF1 cell code
(``tf.compat.v1.nn.rnn_cell``, ``dynamic_rnn``, ``bidirectional_dynamic_rnn``) in graph
mode, as SPEC.md Part B describes.  Skipped without ``tensorflow`` and ``tf_keras`` (the
TF1 cells need TF's legacy Keras: ``pip install fastlstm[tf]``).  The oracle is TF itself:
every cell option (peepholes, cell_clip, num_proj, proj_clip, forget_bias, activation),
sequence lengths (with empty rows), initial states and both layouts, in float32 and float64;
the models are read back from the graph's own variables by name."""

import os

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")    # the TF1 cells live in tf_keras
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytest.importorskip("tf_keras")
tf = pytest.importorskip("tensorflow")

import fastlstm as fl  # noqa: E402

v1 = tf.compat.v1
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::UserWarning")

TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}
ACTS = {"tanh": tf.tanh, "relu": tf.nn.relu, "sigmoid": tf.sigmoid}


def _run_tf(make_cells, X, dtype, lengths=None, initial=None, time_major=False,
            bidirectional=False, seed=0):
    """Build the TF1 graph, give every variable random values, run it.

    Returns (outputs, final state, {variable name: value})."""
    rng = np.random.default_rng(seed)
    tdt = tf.float32 if dtype == np.float32 else tf.float64
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tdt, X.shape)
        L = None if lengths is None else v1.constant(lengths, tf.int32)
        if bidirectional:
            fw, bw = make_cells()
            out, state = v1.nn.bidirectional_dynamic_rnn(fw, bw, x, sequence_length=L,
                                                         dtype=tdt, time_major=time_major)
            out = tf.concat(out, axis=-1)
        else:
            cell = make_cells()
            init = None
            if initial is not None:
                init = v1.nn.rnn_cell.LSTMStateTuple(v1.constant(initial[0], tdt),
                                                     v1.constant(initial[1], tdt))
            out, state = v1.nn.dynamic_rnn(cell, x, sequence_length=L, initial_state=init,
                                           dtype=tdt, time_major=time_major)
        variables = v1.global_variables()
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            values = {}
            for var in variables:
                value = rng.normal(scale=0.5, size=var.shape).astype(dtype)
                var.load(value, sess)
                values[var.name] = value
            got_out, got_state = sess.run([out, state], {x: X})
    return got_out, got_state, values


CELL_OPTIONS = {
    "basic": ("basic", {}),
    "basic_forget_bias": ("basic", dict(forget_bias=0.3)),
    "basic_relu": ("basic", dict(activation="relu")),
    "peepholes": ("lstm", dict(use_peepholes=True)),
    "cell_clip": ("lstm", dict(cell_clip=0.4)),
    "cell_clip_zero": ("lstm", dict(cell_clip=0.0, use_peepholes=True)),
    "projection": ("lstm", dict(num_proj=3)),
    "projection_clip": ("lstm", dict(num_proj=3, proj_clip=0.2, cell_clip=0.6)),
    "everything": ("lstm", dict(use_peepholes=True, cell_clip=0.5, num_proj=2, proj_clip=0.3,
                                forget_bias=0.7, activation="sigmoid")),
}


def _tf_cell(kind, H, options):
    opts = dict(options)
    if "activation" in opts:
        opts["activation"] = ACTS[opts["activation"]]
    if kind == "basic":
        return v1.nn.rnn_cell.BasicLSTMCell(H, **opts)
    return v1.nn.rnn_cell.LSTMCell(H, **opts)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("time_major", [False, True], ids=["batch_major", "time_major"])
@pytest.mark.parametrize("name", list(CELL_OPTIONS))
def test_cell_options_match_tf(name, time_major, dtype):
    kind, options = CELL_OPTIONS[name]
    N, T, I, H = 4, 6, 3, 5
    rng = np.random.default_rng(1)
    X = rng.normal(size=(T, N, I) if time_major else (N, T, I)).astype(dtype)
    lengths = np.array([6, 0, 3, 1])
    Hout = options.get("num_proj", H)
    c0 = rng.normal(size=(N, H)).astype(dtype)
    h0 = rng.normal(size=(N, Hout)).astype(dtype)
    out, (c, h), values = _run_tf(lambda: _tf_cell(kind, H, options), X, dtype, lengths,
                                  (c0, h0), time_major)
    model = fl.from_tf1_checkpoint(values, forget_bias=options.get("forget_bias", 1.0),
                                   cell_clip=options.get("cell_clip"),
                                   proj_clip=options.get("proj_clip"),
                                   activation=options.get("activation", "tanh"))
    assert model.dtype == dtype and model.output_size == Hout
    Y, state = model(X, initial_state=(c0, h0), lengths=lengths, time_major=time_major)
    np.testing.assert_allclose(Y, out, **TOL[dtype])
    np.testing.assert_allclose(state.c, c, **TOL[dtype])
    np.testing.assert_allclose(state.h, h, **TOL[dtype])


def test_exported_variables_give_tf_the_same_results():
    # fastlstm -> to_tf1_checkpoint -> TF's own cell: TF computes what fastlstm computes
    N, T, I, H, P = 3, 5, 4, 6, 2
    rng = np.random.default_rng(2)
    model = fl.LSTM(I, H, proj_size=P, peepholes=True, cell_clip=0.8, proj_clip=0.5,
                    random_state=0)
    for v in model.params.values():
        v[...] = rng.normal(scale=0.5, size=v.shape)
    X = rng.normal(size=(N, T, I)).astype(np.float32)
    lengths = np.array([5, 2, 0])
    variables = fl.to_tf1_checkpoint(model, forget_bias=1.0)
    g = tf.Graph()
    with g.as_default():
        cell = v1.nn.rnn_cell.LSTMCell(H, use_peepholes=True, cell_clip=0.8, num_proj=P,
                                       proj_clip=0.5)
        out, state = v1.nn.dynamic_rnn(cell, v1.constant(X), sequence_length=lengths,
                                       dtype=tf.float32)
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            for var in v1.global_variables():
                var.load(variables[var.name[:-2]], sess)
            got, (c, h) = sess.run([out, state])
    Y, s = model(X, lengths=lengths)
    np.testing.assert_allclose(got, Y, **TOL[np.float32])
    np.testing.assert_allclose(c, s.c, **TOL[np.float32])
    np.testing.assert_allclose(h, s.h, **TOL[np.float32])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tutorial_multirnn_stack_matches_tf(dtype):
    # the walk-through's MultiRNNCell of a 4-unit and a 5-unit BasicLSTMCell, dynamic_rnn
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2, 3, 6)).astype(dtype)
    lengths = np.array([3, 1])

    def cells():
        return v1.nn.rnn_cell.MultiRNNCell([v1.nn.rnn_cell.BasicLSTMCell(4),
                                            v1.nn.rnn_cell.BasicLSTMCell(5)])

    out, states, values = _run_tf(cells, X, dtype, lengths)
    model = fl.from_tf1_checkpoint(values)
    assert isinstance(model, fl.MultiLSTM)
    Y, fl_states = model(X, lengths=lengths)
    np.testing.assert_allclose(Y, out, **TOL[dtype])
    for k in range(2):
        np.testing.assert_allclose(fl_states[k].c, states[k].c, **TOL[dtype])
        np.testing.assert_allclose(fl_states[k].h, states[k].h, **TOL[dtype])


def test_one_cell_multirnn_checkpoint_keeps_tfs_state_structure():
    # MultiRNNCell([one cell]): TF's state is a 1-tuple of LSTMStateTuple; the loaded model
    # is a one-layer MultiLSTM with the same structure (state[0].h)
    rng = np.random.default_rng(4)
    X = rng.normal(size=(2, 3, 6)).astype(np.float32)
    out, states, values = _run_tf(
        lambda: v1.nn.rnn_cell.MultiRNNCell([v1.nn.rnn_cell.BasicLSTMCell(4)]), X, np.float32)
    assert isinstance(states, tuple) and len(states) == 1
    model = fl.from_tf1_checkpoint(values)
    assert isinstance(model, fl.MultiLSTM) and len(model) == 1
    Y, fl_states = model(X)
    np.testing.assert_allclose(Y, out, **TOL[np.float32])
    np.testing.assert_allclose(fl_states[0].h, states[0].h, **TOL[np.float32])


def test_keras_lstm_variables_are_not_read_as_a_tf1_cell():
    # a tf.keras LSTM in a TF1 graph saves kernel, recurrent_kernel and bias under its cell
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, (2, 3, 6))
        tf.keras.layers.LSTM(4)(x)
        names = {v.name: np.zeros(v.shape, np.float32) for v in v1.global_variables()}
    assert any(n.endswith("recurrent_kernel:0") for n in names)
    with pytest.raises(ValueError, match="Keras recurrent layer's weights.*from_keras"):
        fl.from_tf1_checkpoint(names)


def test_bidirectional_dynamic_rnn_matches_tf():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(4, 7, 3)).astype(np.float32)
    lengths = np.array([7, 3, 0, 5])

    def cells():
        return (v1.nn.rnn_cell.LSTMCell(4, use_peepholes=True),
                v1.nn.rnn_cell.LSTMCell(4, cell_clip=0.5))

    out, (fw, bw), values = _run_tf(cells, X, np.float32, lengths, bidirectional=True)
    # the two cells' options differ: each direction is read with its own scope
    model = fl.Bidirectional(
        fl.from_tf1_checkpoint(values, scope="bidirectional_rnn/fw"),
        fl.from_tf1_checkpoint(values, scope="bidirectional_rnn/bw", cell_clip=0.5))
    Y, (sf, sb) = model(X, lengths=lengths)
    np.testing.assert_allclose(Y, out, **TOL[np.float32])
    np.testing.assert_allclose(sf.c, fw.c, **TOL[np.float32])
    np.testing.assert_allclose(sb.h, bw.h, **TOL[np.float32])
    # the whole checkpoint at once, both cells with the same options
    out, _, values = _run_tf(lambda: (v1.nn.rnn_cell.BasicLSTMCell(3),
                                      v1.nn.rnn_cell.BasicLSTMCell(3)),
                             X, np.float32, lengths, bidirectional=True, seed=1)
    model = fl.from_tf1_checkpoint(values)
    assert isinstance(model, fl.Bidirectional)
    np.testing.assert_allclose(model(X, lengths=lengths)[0], out, **TOL[np.float32])


def test_fastlstm_tf1_api_matches_tf():
    # the same TF1 program written against fastlstm.tf1 (no graph, no session) and TF
    from fastlstm import tf1 as ftf

    rng = np.random.default_rng(5)
    X = rng.normal(size=(3, 5, 4)).astype(np.float32)
    lengths = np.array([5, 2, 4])
    out, (c, h), values = _run_tf(
        lambda: v1.nn.rnn_cell.LSTMCell(6, use_peepholes=True, num_proj=3, forget_bias=0.5),
        X, np.float32, lengths)
    cell = ftf.nn.rnn_cell.LSTMCell(6, use_peepholes=True, num_proj=3, forget_bias=0.5)
    cell.build(4)
    order = ["rnn/lstm_cell/kernel:0", "rnn/lstm_cell/bias:0", "rnn/lstm_cell/w_f_diag:0",
             "rnn/lstm_cell/w_i_diag:0", "rnn/lstm_cell/w_o_diag:0",
             "rnn/lstm_cell/projection/kernel:0"]
    cell.set_weights([values[name] for name in order])
    got, state = ftf.nn.dynamic_rnn(cell, X, sequence_length=lengths, dtype=ftf.float32)
    np.testing.assert_allclose(got, out, **TOL[np.float32])
    np.testing.assert_allclose(state.c, c, **TOL[np.float32])
    np.testing.assert_allclose(state.h, h, **TOL[np.float32])


@pytest.mark.parametrize("state_is_tuple", [True, False])
def test_walkthrough_program_matches_tf(state_is_tuple):
    """The classic walk-through, line for line in TF1 (graph + session) and in fastlstm.tf1:
    a BasicLSTMCell stepped by hand on its state, an LSTMCell with options, a MultiRNNCell
    of a 4-unit and a 5-unit cell, and dynamic_rnn over [batch, time, features] with
    per-sequence lengths; the weights TF drew go into fastlstm's cells."""
    from fastlstm import tf1 as ftf

    rng = np.random.default_rng(6)
    x1 = rng.normal(size=(2, 6)).astype(np.float32)
    X = rng.normal(size=(2, 3, 6)).astype(np.float32)
    lengths = np.array([3, 2])

    g = tf.Graph()
    with g.as_default():
        cell = v1.nn.rnn_cell.BasicLSTMCell(num_units=4, state_is_tuple=state_is_tuple)
        s0 = cell.zero_state(2, tf.float32)
        step_out, step_state = cell(v1.constant(x1), s0)
        step_out2, step_state2 = cell(v1.constant(x1), step_state)     # stepped by hand
        opt_cell = v1.nn.rnn_cell.LSTMCell(num_units=5, use_peepholes=True, cell_clip=0.6,
                                           num_proj=3, proj_clip=0.4, forget_bias=0.5,
                                           state_is_tuple=state_is_tuple)
        with v1.variable_scope("options"):
            opt_out, opt_state = v1.nn.dynamic_rnn(opt_cell, v1.constant(X),
                                                   sequence_length=lengths, dtype=tf.float32)
        stacked = v1.nn.rnn_cell.MultiRNNCell(
            [v1.nn.rnn_cell.BasicLSTMCell(n, state_is_tuple=state_is_tuple) for n in (4, 5)],
            state_is_tuple=state_is_tuple)
        with v1.variable_scope("stack"):
            outputs, state = v1.nn.dynamic_rnn(stacked, v1.constant(X), sequence_length=lengths,
                                               dtype=tf.float32)
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())      # TF's own initial weights
            want = sess.run([step_out2, step_state2, opt_out, opt_state, outputs, state])
            weights = [cell.get_weights(), opt_cell.get_weights()] + \
                [sess.run(stacked.weights[2 * k:2 * k + 2]) for k in range(2)]
    got = _fastlstm_program(ftf, x1, X, lengths, state_is_tuple, weights)
    assert len(_flat(got)) == len(_flat(want))
    for a, b in zip(_flat(got), _flat(want)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, **TOL[np.float32])


def _flat(x):
    if isinstance(x, (tuple, list)):
        return [a for item in x for a in _flat(item)]
    return [np.asarray(x)]


def _fastlstm_program(t, x1, X, lengths, state_is_tuple, weights):
    cell = t.nn.rnn_cell.BasicLSTMCell(num_units=4, state_is_tuple=state_is_tuple)
    cell.build(6)
    cell.set_weights(weights[0])
    s0 = cell.zero_state(2, t.float32)
    step_out, step_state = cell(x1, s0)
    step_out2, step_state2 = cell(x1, step_state)
    opt_cell = t.nn.rnn_cell.LSTMCell(num_units=5, use_peepholes=True, cell_clip=0.6,
                                      num_proj=3, proj_clip=0.4, forget_bias=0.5,
                                      state_is_tuple=state_is_tuple)
    opt_cell.build(6)
    opt_cell.set_weights(weights[1])
    opt_out, opt_state = t.nn.dynamic_rnn(opt_cell, X, sequence_length=lengths,
                                          dtype=t.float32)
    subs = [t.nn.rnn_cell.BasicLSTMCell(n, state_is_tuple=state_is_tuple) for n in (4, 5)]
    stacked = t.nn.rnn_cell.MultiRNNCell(subs, state_is_tuple=state_is_tuple)
    for k, (sub, width) in enumerate(zip(subs, (6, 4))):
        sub.build(width)
        sub.set_weights(weights[2 + k])
    outputs, state = t.nn.dynamic_rnn(stacked, X, sequence_length=lengths, dtype=t.float32)
    return [step_out2, step_state2, opt_out, opt_state, outputs, state]


def test_partitioned_cell_variables_as_the_graph_lists_them():
    """LSTMCell(num_unit_shards=, num_proj_shards=): the graph lists kernel/part_k and
    projection/kernel/part_k (a Saver checkpoint stores them whole); they are joined along
    the first axis, as TF splits them (they were refused: no cell variables found)."""
    X = np.random.default_rng(8).normal(size=(3, 5, 4)).astype(np.float32)

    def make():
        return v1.nn.rnn_cell.LSTMCell(6, num_unit_shards=3, num_proj=4, num_proj_shards=2,
                                       use_peepholes=True)

    out, state, values = _run_tf(make, X, np.float32, seed=8)
    assert "rnn/lstm_cell/kernel/part_2:0" in values
    model = fl.from_tf1_checkpoint(values)
    Y, s = model(X)
    np.testing.assert_allclose(Y, out, **TOL[np.float32])
    np.testing.assert_allclose(s.c, state.c, **TOL[np.float32])
    del values["rnn/lstm_cell/kernel/part_1:0"]
    with pytest.raises(ValueError, match=r"kernel' has parts \[0, 2\]"):
        fl.from_tf1_checkpoint(values)


def test_keras2_time_major_layer_warns_and_matches_with_time_major_calls():
    """tf_keras' LSTM(time_major=True) takes (T, N, I): from_keras warns (it converted
    silently, and a batch-major call of the result differed by 0.16)."""
    import tf_keras
    rng = np.random.default_rng(9)
    N, T, I, H = 3, 5, 2, 4
    layer = tf_keras.layers.LSTM(H, time_major=True, return_sequences=True)
    layer.build((T, N, I))
    layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32)
                       for w in layer.get_weights()])
    X = rng.normal(size=(T, N, I)).astype(np.float32)
    want = layer(X).numpy()
    with pytest.warns(UserWarning, match="time_major=True"):
        model = fl.from_keras(layer)
    np.testing.assert_allclose(model(X, time_major=True)[0], want, **TOL[np.float32])
    # a Bidirectional warns once, from the caller's line
    bi = tf_keras.layers.Bidirectional(tf_keras.layers.LSTM(H, time_major=True,
                                                            return_sequences=True))
    bi.build((T, N, I))
    import warnings
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fl.from_keras(bi)
    mine = [w for w in seen if "time-major" in str(w.message)]
    assert len(mine) == 1 and mine[0].filename == __file__


def test_tensorflow_bundled_keras2_layers_read_as_keras2(monkeypatch):
    """TensorFlow still ships its Keras 2 code (tensorflow.python.keras, tf.keras of TF
    1.x), whose hard_sigmoid is 0.2 x + 0.5: its layers were read as Keras 3 (TF 2.16+
    names Keras 3 as tf.keras) and imported with x / 6 + 0.5 (0.11 off)."""
    import importlib
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            recurrent = importlib.import_module("tensorflow.python.keras.layers.recurrent")
    except ImportError:  # pragma: no cover - a TensorFlow without its bundled Keras 2
        pytest.skip("this TensorFlow does not ship tensorflow.python.keras")
    rng = np.random.default_rng(10)
    X = rng.normal(size=(2, 5, 3)).astype(np.float32)
    cell = recurrent.LSTMCell(4, recurrent_activation="hard_sigmoid")
    rnn = recurrent.RNN(cell, return_sequences=True)
    rnn(tf.constant(X))
    cell.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in cell.get_weights()])
    want = np.asarray(rnn(tf.constant(X)))
    # whatever tf.keras names (this module sets TF_USE_LEGACY_KERAS: tf_keras, Keras 2;
    # by default TF 2.16+ names Keras 3)
    monkeypatch.setattr(tf.keras, "__version__", "3.15.0", raising=False)
    model = fl.from_keras(cell)
    assert model.recurrent_activation == "hard_sigmoid_keras2"
    np.testing.assert_allclose(model(X)[0], want, **TOL[np.float32])


def test_hard_sigmoid_function_of_the_other_keras_is_read_by_its_own_package():
    """A Keras 2 (tf_keras) layer given Keras 3's hard_sigmoid function, or a Keras 3 layer
    given tf_keras' one, computes that function's formula: the version was taken from the
    layer's package and the import was 0.08 off, silently."""
    keras = pytest.importorskip("keras")
    import tf_keras

    rng = np.random.default_rng(11)
    X = rng.normal(size=(2, 5, 3)).astype(np.float32)
    grid = np.linspace(-4, 4, 33).astype(np.float32)
    formulas = {"hard_sigmoid": np.clip(grid / 6 + 0.5, 0, 1),
                "hard_sigmoid_keras2": np.clip(0.2 * grid + 0.5, 0, 1)}
    # the layers run here only when Keras 3 computes on TensorFlow (another test module
    # may have chosen torch, and the two Kerases then cannot call each other's functions)
    run = keras.backend.backend() == "tensorflow"
    for make, fn, want_name in (
            (tf_keras.layers.LSTM, keras.activations.hard_sigmoid, "hard_sigmoid"),
            (keras.layers.LSTM, tf_keras.activations.hard_sigmoid, "hard_sigmoid_keras2")):
        # the function computes the formula its package stands for
        np.testing.assert_allclose(np.asarray(keras.ops.convert_to_numpy(fn(grid))
                                              if fn is keras.activations.hard_sigmoid
                                              else fn(tf.constant(grid))),
                                   formulas[want_name], atol=1e-6)
        layer = make(4, recurrent_activation=fn, return_sequences=True)
        layer.build((None, 5, 3))
        layer.set_weights([rng.uniform(-2, 2, w.shape).astype(np.float32)
                           for w in layer.get_weights()])
        model = fl.from_keras(layer)
        assert model.recurrent_activation == want_name
        if run:
            np.testing.assert_allclose(model(X)[0], keras.ops.convert_to_numpy(layer(X)),
                                       **TOL[np.float32])
        # from a weights list the function decides too, whatever keras_version says
        model = fl.from_keras(layer.get_weights(), recurrent_activation=fn,
                              keras_version=2 if want_name == "hard_sigmoid" else 3)
        assert model.recurrent_activation == want_name


def test_keras3_legacy_backend_hard_sigmoid_is_keras2s_formula():
    """TF 2.16+'s tf.keras.backend.hard_sigmoid (Keras 3's legacy API) computes Keras 2's
    0.2x + 0.5 inside Keras 3's package: it was read as Keras 3's x/6 + 0.5 (0.09 off)."""
    pytest.importorskip("keras")
    from keras.src.legacy import backend as legacy

    grid = np.linspace(-4, 4, 33).astype(np.float32)
    np.testing.assert_allclose(np.asarray(legacy.hard_sigmoid(tf.constant(grid))),
                               np.clip(0.2 * grid + 0.5, 0, 1), atol=1e-6)
    rng = np.random.default_rng(12)
    weights = [rng.normal(size=s).astype(np.float32) for s in ((3, 16), (4, 16), (16,))]
    for version in (None, 3):
        model = fl.from_keras(weights, recurrent_activation=legacy.hard_sigmoid,
                              keras_version=version)
        assert model.recurrent_activation == "hard_sigmoid_keras2"


def test_stack_with_a_cell_of_another_kind_is_refused():
    """MultiRNNCell([BasicLSTMCell(5), GRUCell(3)]): the GRU on top was left out, and the
    checkpoint loaded as the LSTM layer alone (outputs 5 wide where TF's are 3)."""
    X = np.random.default_rng(5).normal(size=(2, 3, 4)).astype(np.float32)
    R = v1.nn.rnn_cell
    for other, name in ((lambda: R.GRUCell(3), "gru_cell"),
                        (lambda: R.BasicRNNCell(3), "basic_rnn_cell")):
        _, _, values = _run_tf(lambda: R.MultiRNNCell([R.BasicLSTMCell(5), other()]),
                               X, np.float32)
        with pytest.raises(ValueError, match=f"holds cells of other kinds .*cell_1/{name}"):
            fl.from_tf1_checkpoint(values)
        # the LSTM layer alone, asked for by its scope
        assert fl.from_tf1_checkpoint(values, scope="rnn/multi_rnn_cell/cell_0").hidden_size \
            == 5


def test_two_rnns_one_with_a_cell_of_its_own_name_need_a_scope():
    """An encoder LSTMCell(name="enc_cell") beside a decoder BasicLSTMCell: the encoder,
    whose name holds no "lstm", was dropped and the decoder returned without a word."""
    rng = np.random.default_rng(6)
    X = rng.normal(size=(2, 3, 4)).astype(np.float32)
    R = v1.nn.rnn_cell
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, X.shape)
        with v1.variable_scope("encoder"):
            enc, _ = v1.nn.dynamic_rnn(R.LSTMCell(6, name="enc_cell"), x, dtype=tf.float32)
        with v1.variable_scope("decoder"):
            dec, _ = v1.nn.dynamic_rnn(R.BasicLSTMCell(6), enc, dtype=tf.float32)
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            values = {v.name: sess.run(v) for v in v1.global_variables()}
            want = sess.run(enc, {x: X})
    with pytest.raises(ValueError, match="several RNNs .*encoder/rnn/enc_cell.*pass scope="):
        fl.from_tf1_checkpoint(values)
    model = fl.from_tf1_checkpoint(values, scope="encoder")
    np.testing.assert_allclose(model(X)[0], want, **TOL[np.float32])


def test_keras2_masked_call_options_warn_and_fastlstm_matches_what_they_mean():
    """tf_keras (Keras 2 on TensorFlow) with a mask: a layer with zero_output_for_mask=True
    writes 0 on masked steps (fastlstm's raw outputs, not keras_masked_outputs: from_keras
    says so); an unrolled Bidirectional warns (TF's unrolled masked path zeroes the wrong
    steps of the backward half) and fastlstm gives the un-unrolled layer's outputs; a
    float32 wrapper around float64 halves warns about the cast."""
    import tf_keras

    rng = np.random.default_rng(3)
    N, T, I, H = 3, 5, 2, 4
    X = rng.standard_normal((N, T, I)).astype(np.float32)
    L = np.array([5, 2, 3])
    mask = tf.constant(np.arange(T)[None, :] < L[:, None])

    layer = tf_keras.layers.LSTM(H, return_sequences=True, zero_output_for_mask=True)
    layer.build((None, T, I))
    layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32)
                       for w in layer.get_weights()])
    with pytest.warns(UserWarning, match="zero_output_for_mask=True.*not keras_masked"):
        model = fl.from_keras(layer)
    Y, _ = model(X, lengths=L)
    np.testing.assert_allclose(Y, layer(X, mask=mask).numpy(), **TOL[np.float32])

    def bidirectional(unroll, dtype="float32", wrapper=None):
        bi = tf_keras.layers.Bidirectional(
            tf_keras.layers.LSTM(H, return_sequences=True, unroll=unroll, dtype=dtype),
            dtype=wrapper)
        bi.build((None, T, I))
        bi.set_weights([np.random.default_rng(4).normal(scale=0.5, size=w.shape)
                        .astype(dtype) for w in bi.get_weights()])
        return bi

    with pytest.warns(UserWarning, match="unrolled.*wrong time order"):
        model = fl.from_keras(bidirectional(True))
    Y, _ = model(X, lengths=L)
    np.testing.assert_allclose(Y, bidirectional(False)(X, mask=mask).numpy(),
                               **TOL[np.float32])

    with pytest.warns(UserWarning, match="computes in float32 around float64 layers"):
        model = fl.from_keras(bidirectional(False, "float64"))
    assert model.dtype == np.float64
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fl.from_keras(bidirectional(False, "float64", "float64"))
