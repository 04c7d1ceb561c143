"""fastlstm.freeze: a read-only copy whose layers pack their weights once.

Its results are checked against the NumPy reference and, bit for bit, against the model it
was frozen from, on every forward path (forced through ``layers._FORCE_PATH``), both
instruction sets of the packed kernel, 1-3 threads, and with the training cache; then the
read-only rules (setters, in-place writes, containers, optimisers, pickles).
"""

import copy
import pickle

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import _forward, layers
from fastlstm import reference as ref

from conftest import isa_params, path_layer, ref_options

TOL = {np.float32: 2e-5, np.float64: 1e-11}


# partial last panels (H not a multiple of 16 / 8), row counts around the 6-row tile
SHAPES = [(8, 5, 6, 37), (13, 4, 9, 16), (2, 6, 5, 70), (1, 7, 4, 8), (24, 3, 5, 33)]


@pytest.mark.parametrize("path", ["packed-rows", "packed-units", "blas", None])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_frozen_matches_reference_and_original(force, monkeypatch, path, dtype, n_threads):
    force(path)
    rng = np.random.default_rng(3)
    for k, (N, T, I, H) in enumerate(SHAPES):
        # own copies per thread and one shared copy on the unfrozen side
        monkeypatch.setattr(layers, "_PACKED_OWN_MAX_BYTES", (1 << 40) if k % 2 else 0)
        layer = path_layer(I, H, dtype, k, peepholes=k % 2 == 0, cell_clip=0.5 if k else None,
                       n_threads=n_threads)
        frozen = fl.freeze(layer)
        X = rng.standard_normal((N, T, I)).astype(dtype)
        L = rng.integers(0, T + 1, N)
        s0 = (rng.standard_normal((N, H)).astype(dtype),
              rng.standard_normal((N, H)).astype(dtype))
        for lengths, reverse, tm in ((None, False, False), (L, True, False), (L, False, True)):
            Xc = X.transpose(1, 0, 2) if tm else X
            for _ in range(2):      # the first call packs, the second reads the pack
                Y, st = frozen(Xc, initial_state=s0, lengths=lengths, reverse=reverse,
                               time_major=tm)
                Yo, sto = layer(Xc, initial_state=s0, lengths=lengths, reverse=reverse,
                                time_major=tm)
                np.testing.assert_array_equal(Y, Yo)
                np.testing.assert_array_equal(st.c, sto.c)
                np.testing.assert_array_equal(st.h, sto.h)
            Yr, (cr, hr) = ref.lstm_forward(X, layer.params, initial_state=s0,
                                            lengths=lengths, reverse=reverse,
                                            **ref_options(layer))
            if tm:
                Y = Y.transpose(1, 0, 2)
            np.testing.assert_allclose(Y, Yr, rtol=0, atol=TOL[dtype])
            np.testing.assert_allclose(st.c, cr, rtol=0, atol=TOL[dtype])
            np.testing.assert_allclose(st.h, hr, rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("path", ["packed-rows", "packed-units"])
def test_frozen_on_each_instruction_set(force, isa, path):
    force(path)
    _forward.packed_isa(isa)
    rng = np.random.default_rng(isa)
    layer = path_layer(9, 37, np.float32, 1, peepholes=True, n_threads=2)
    frozen = fl.freeze(layer)
    X = rng.standard_normal((7, 6, 9)).astype(np.float32)
    Yr, _ = ref.lstm_forward(X, layer.params, **ref_options(layer))
    for _ in range(2):
        np.testing.assert_allclose(frozen(X)[0], Yr, rtol=0, atol=TOL[np.float32])
        np.testing.assert_array_equal(frozen(X)[0], layer(X)[0])


def test_weights_are_packed_once(force):
    force("packed-rows")
    frozen = fl.freeze(path_layer(6, 20, np.float32, 0))
    X = np.ones((4, 3, 6), np.float32)
    frozen(X)
    pack = frozen._pack
    frozen(X)
    assert frozen._pack is pack
    assert fl.freeze(frozen)._prepacked() is not pack     # a copy packs its own


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stacks_and_bidirectional(dtype):
    rng = np.random.default_rng(5)
    stack = fl.MultiLSTM([fl.LSTM(10, 40, dtype=dtype, random_state=0),
                          fl.Bidirectional(fl.LSTM(40, 24, dtype=dtype, random_state=1),
                                           fl.LSTM(40, 24, dtype=dtype, random_state=2)),
                          fl.LSTM(48, 8, proj_size=5, dtype=dtype, random_state=3)])
    frozen = fl.freeze(stack)
    assert frozen.frozen and not stack.frozen
    assert all(layer.frozen for layer in layers._lstm_layers(frozen))
    X = rng.standard_normal((9, 12, 10)).astype(dtype)
    L = rng.integers(0, 13, 9)
    for lengths in (None, L):
        Y, states = frozen(X, lengths=lengths)
        Yo, stateso = stack(X, lengths=lengths)
        np.testing.assert_array_equal(Y, Yo)
        # against the reference, layer by layer
        inp = X
        for layer in stack.layers:
            if isinstance(layer, fl.Bidirectional):
                f, _ = ref.lstm_forward(inp, layer.forward_layer.params, lengths=lengths)
                b, _ = ref.lstm_forward(inp, layer.backward_layer.params, lengths=lengths,
                                        reverse=True)
                inp = np.concatenate([f, b], axis=-1)
            else:
                inp, _ = ref.lstm_forward(inp, layer.params, lengths=lengths)
        np.testing.assert_allclose(Y, inp, rtol=0, atol=TOL[dtype] * 10)
    # the tutorial stack (its small-kernel path) and a step
    tut = fl.MultiLSTM([fl.LSTM(6, 4, random_state=0), fl.LSTM(4, 5, random_state=1)])
    ftut = fl.freeze(tut)
    Xt = rng.standard_normal((2, 3, 6)).astype(np.float32)
    np.testing.assert_array_equal(ftut(Xt)[0], tut(Xt)[0])
    np.testing.assert_array_equal(ftut.step(Xt[:, 0])[0], tut.step(Xt[:, 0])[0])


def test_training_on_a_frozen_model_gives_the_reference_gradients(force):
    force("packed-rows")
    rng = np.random.default_rng(2)
    layer = path_layer(5, 20, np.float64, 0, peepholes=True)
    frozen = fl.freeze(layer)
    X = rng.standard_normal((6, 4, 5))
    dY = rng.standard_normal((6, 4, 20))
    L = np.array([4, 0, 2, 3, 1, 4])
    frozen(X)                                     # packed before the training forward
    Y, st, cache = frozen.forward(X, lengths=L)
    dX, _ = frozen.backward(dY, cache)
    want = ref.lstm_backward(dY, X, layer.params, lengths=L, **ref_options(layer))
    np.testing.assert_allclose(dX, want["X"], rtol=1e-9, atol=1e-11)
    for name in ("W", "U", "b", "peepholes"):
        np.testing.assert_allclose(frozen.grads[name], want[name], rtol=1e-9, atol=1e-11)


def test_parameters_are_read_only_and_the_original_is_not():
    layer = path_layer(6, 8, np.float32, 0, peepholes=True)
    frozen = fl.freeze(layer)
    before = {k: v.copy() for k, v in frozen.params.items()}
    for name, value in frozen.params.items():
        assert not value.flags.writeable, name
        with pytest.raises(ValueError, match="read-only"):
            value[...] = 0
        with pytest.raises(ValueError, match=f"frozen.*setting {name}"):
            setattr(frozen, name, np.zeros_like(value))
    assert not frozen.flat_params.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        frozen.flat_params[0] = 1
    # the memory itself is read-only: the flag cannot be set back, on any array
    for arr in (frozen.flat_params, frozen.W, frozen.W.base):
        with pytest.raises(ValueError, match="WRITEABLE"):
            arr.flags.writeable = True
    with pytest.raises(ValueError, match=r"frozen.*reset_parameters\(\)"):
        frozen.reset_parameters(0)
    # the original stays trainable; changing it does not change the frozen copy
    assert layer.W.flags.writeable and layer.flat_params.flags.writeable
    X = np.random.default_rng(0).standard_normal((3, 4, 6)).astype(np.float32)
    Y0 = frozen(X)[0].copy()
    layer.W[...] = 0
    layer.b = np.ones(32)
    for k, v in before.items():
        np.testing.assert_array_equal(frozen.params[k], v)
    np.testing.assert_array_equal(frozen(X)[0], Y0)
    # options may still change, and apply
    frozen.activation = "relu"
    Yr, _ = ref.lstm_forward(X, frozen.params, activation="relu")
    np.testing.assert_allclose(frozen(X)[0], Yr, rtol=0, atol=2e-5)


def test_containers_optimisers_and_arguments_refuse_frozen_models():
    frozen = fl.freeze(fl.LSTM(4, 6, random_state=0))
    with pytest.raises(ValueError, match=r"layers\[0\] is frozen"):
        fl.MultiLSTM([frozen])
    with pytest.raises(ValueError, match="forward_layer is frozen"):
        fl.Bidirectional(frozen, fl.LSTM(4, 6))
    with pytest.raises(ValueError, match=r"params\[0\] is a frozen model"):
        fl.optim.Adam(frozen, lr=0.1)
    for bad in (None, "model", fl.Dense(4, 2)):
        with pytest.raises(TypeError, match="model must be a fastlstm LSTM"):
            fl.freeze(bad)


def test_prepacked_weights_must_match(force):
    force("packed-rows")
    a = fl.freeze(fl.LSTM(4, 16, random_state=0))
    a(np.ones((2, 2, 4), np.float32))
    b = fl.LSTM(4, 16, dtype=np.float64, random_state=0)
    p = b.params
    c, h = np.zeros((2, 16)), np.zeros((2, 16))
    with pytest.raises(ValueError, match="prepacked was packed from other weights"):
        _forward.forward_packed(np.ones((4, 4)), 2, 2, False, p["W"], p["U"], p["b"], None,
                                c, h, np.zeros((4, 16)), None, False, 0, 0, None, 1, True,
                                1 << 16, prepacked=a._pack)


def test_pickles_and_copies_stay_frozen_and_save_load_is_trainable(tmp_path):
    stack = fl.MultiLSTM([fl.LSTM(5, 20, random_state=0), fl.LSTM(20, 7, random_state=1)])
    frozen = fl.freeze(stack)
    X = np.random.default_rng(1).standard_normal((8, 6, 5)).astype(np.float32)
    Y = frozen(X)[0]
    for other in (pickle.loads(pickle.dumps(frozen)), copy.deepcopy(frozen),
                  copy.copy(frozen)):
        assert other.frozen and all(layer.frozen for layer in other.layers)
        assert not other.flat_params.flags.writeable
        assert not other.layers[1].U.flags.writeable
        assert not np.shares_memory(other.flat_params, frozen.flat_params)
        np.testing.assert_array_equal(other(X)[0], Y)
    fl.save(frozen, tmp_path / "m.npz")
    loaded = fl.load(tmp_path / "m.npz")
    assert not loaded.frozen and loaded.flat_params.flags.writeable
    np.testing.assert_array_equal(loaded(X)[0], Y)


def test_copies_keep_every_attribute():
    """Copies read a model's attributes by the names in ``_STATE`` (not through
    ``__dict__``, which would slow the original's later calls): every attribute a model
    holds, after calls, training, option changes and freezing, is among them or is one a
    copy drops on purpose (views, container links, scratch); and a copy has the same
    attribute values."""
    import fastlstm.tf1 as ftf

    dropped = set(fl.LSTM._TRANSIENT)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 5, 3)).astype(np.float32)
    lstm = fl.LSTM(3, 20, peepholes=True, cell_clip=0.5, n_threads=1, reverse=True)
    bi = fl.Bidirectional(fl.LSTM(20, 6), fl.LSTM(20, 6, proj_size=4))
    stack = fl.MultiLSTM([fl.LSTM(3, 20), bi])
    lstm.activation = "relu"
    lstm(X)
    Y, _, cache = stack.forward(X)
    stack.backward(np.ones_like(Y), cache)
    dense = fl.Dense(10, 2)
    frozen = fl.freeze(lstm)
    frozen(X)
    cell = ftf.MultiRNNCell([ftf.BasicLSTMCell(4), ftf.BasicLSTMCell(5)])
    cell(X[:, 0], cell.zero_state(8, np.float32))
    lent = cell._model
    for model in (lstm, bi, stack, stack.layers[0], bi.backward_layer, dense, frozen, lent):
        names = set(vars(model))
        assert names - dropped <= set(model._STATE), (type(model).__name__, names)
        twin = copy.deepcopy(model)
        for name in names - dropped:
            a, b = getattr(model, name), getattr(twin, name)
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b)
            elif not isinstance(a, (tuple, fl.LSTM)):
                assert a == b, name


def test_attributes_of_the_users_own_are_kept_by_copies():
    """model.name = ... on a plain or frozen model survives pickle, deepcopy and freeze;
    so do extra keys of a state dict (a pickle made before copies read by name)."""
    layer = fl.LSTM(3, 5, random_state=0)
    layer.name = "encoder"
    stack = fl.MultiLSTM([fl.LSTM(3, 4), fl.LSTM(4, 2)])
    stack.vocab = ["a", "b"]
    for model, attr, value in ((layer, "name", "encoder"), (stack, "vocab", ["a", "b"])):
        for copied in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model),
                       fl.freeze(model), copy.deepcopy(fl.freeze(model))):
            assert getattr(copied, attr) == value
    state = layer.__getstate__()
    state["tag"] = 7
    old = fl.LSTM.__new__(fl.LSTM)
    old.__setstate__(state)
    assert copy.deepcopy(old).tag == 7


def test_setstate_on_a_used_frozen_object_drops_its_pack(force):
    force("packed-rows")
    X = np.random.default_rng(0).standard_normal((8, 4, 3)).astype(np.float32)
    a = fl.freeze(fl.LSTM(3, 20, random_state=0))
    b = fl.freeze(fl.LSTM(3, 20, random_state=1))
    a(X)
    a.__setstate__(b.__getstate__())
    np.testing.assert_array_equal(a(X)[0], b(X)[0])
