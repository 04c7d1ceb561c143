"""Bad input raises a clear ValueError / TypeError naming the argument, before any kernel."""

import numpy as np
import pytest

import fastlstm as fl


@pytest.fixture
def layer():
    return fl.LSTM(3, 4, random_state=0)


GOOD_X = np.zeros((2, 5, 3), np.float32)

CALL_CASES = [
    ("X 2-D", dict(X=np.zeros((5, 3))), ValueError, r"X must be 3-D \[batch, time, features\]"),
    ("X 4-D", dict(X=np.zeros((1, 2, 5, 3))), ValueError, "X must be 3-D"),
    ("features", dict(X=np.zeros((2, 5, 4))), ValueError, "X must have 3 features"),
    ("complex", dict(X=np.zeros((2, 5, 3), complex)), TypeError, "X must hold real numbers"),
    ("object", dict(X=np.array([[[None] * 3] * 5] * 2)), TypeError, "X must hold real numbers"),
    ("strings", dict(X=np.full((2, 5, 3), "a")), TypeError, "X must hold real numbers"),
    ("ragged", dict(X=[[[1, 2, 3]], [[1, 2]]]), TypeError, "X must be a numeric array"),
    ("lengths float", dict(lengths=np.array([1.0, 2.0])), ValueError, "lengths must be integers"),
    ("lengths shape", dict(lengths=[1, 2, 3]), ValueError, r"lengths must have shape \(2,\)"),
    ("lengths 2-D", dict(lengths=[[1, 2]]), ValueError, r"lengths must have shape \(2,\)"),
    ("lengths negative", dict(lengths=[-1, 2]), ValueError, r"lengths must be in \[0, T=5\]"),
    ("lengths > T", dict(lengths=[6, 2]), ValueError, r"lengths must be in \[0, T=5\]"),
    ("lengths str", dict(lengths=["a", "b"]), ValueError, "lengths must be integers"),
    ("state c shape", dict(initial_state=(np.zeros((2, 3)), np.zeros((2, 4)))), ValueError,
     r"initial_state.c must have shape \(2, 4\)"),
    ("state h shape", dict(initial_state=(np.zeros((2, 4)), np.zeros((1, 4)))), ValueError,
     r"initial_state.h must have shape \(2, 4\)"),
    ("state one array", dict(initial_state=np.zeros((2, 4))), TypeError,
     r"initial_state must be an LSTMState\(c, h\)"),
    ("state triple", dict(initial_state=(np.zeros((2, 4)),) * 3), TypeError, "initial_state"),
    ("state complex", dict(initial_state=(np.zeros((2, 4), complex), np.zeros((2, 4)))),
     TypeError, "initial_state.c must hold real numbers"),
    ("time_major str", dict(time_major="yes"), TypeError, "time_major must be a bool"),
]


@pytest.mark.parametrize("case", CALL_CASES, ids=[c[0] for c in CALL_CASES])
def test_call_errors(layer, case):
    _, kwargs, exc, match = case
    kwargs = dict(kwargs)
    X = kwargs.pop("X", GOOD_X)
    with pytest.raises(exc, match=match):
        layer(X, **kwargs)


def test_time_major_message_names_layout(layer):
    with pytest.raises(ValueError, match=r"\[time, batch, features\]"):
        layer(np.zeros((5, 3)), time_major=True)


STEP_CASES = [
    ("x 1-D", dict(x=np.zeros(3)), ValueError, r"x must be 2-D \[batch, features\]"),
    ("x features", dict(x=np.zeros((1, 4))), ValueError, "features=3"),
    ("x complex", dict(x=np.zeros((1, 3), complex)), TypeError, "x must hold real numbers"),
    ("state shape", dict(state=(np.zeros((1, 4)), np.zeros((1, 5)))), ValueError,
     r"state.h must have shape \(1, 4\)"),
]


@pytest.mark.parametrize("case", STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_step_errors(layer, case):
    _, kwargs, exc, match = case
    kwargs = dict(kwargs)
    x = kwargs.pop("x", np.zeros((1, 3)))
    with pytest.raises(exc, match=match):
        layer.step(x, **kwargs)


CTOR_CASES = [
    (dict(input_size=0, hidden_size=4), ValueError, "input_size must be a positive int"),
    (dict(input_size=3.0, hidden_size=4), TypeError, "input_size must be a positive int"),
    (dict(input_size=3, hidden_size=-1), ValueError, "hidden_size must be a positive int"),
    (dict(input_size=3, hidden_size=True), TypeError, "hidden_size"),
    (dict(input_size=3, hidden_size=2**30), ValueError, "too large for 32-bit BLAS"),
    (dict(input_size=3, hidden_size=4, proj_size=0), ValueError, "proj_size"),
    (dict(input_size=3, hidden_size=4, cell_clip=-1.0), ValueError, "cell_clip"),
    (dict(input_size=3, hidden_size=4, cell_clip=float("nan")), ValueError, "cell_clip"),
    (dict(input_size=3, hidden_size=4, proj_clip="1"), TypeError, "proj_clip"),
    (dict(input_size=3, hidden_size=4, activation="gelu"), ValueError, "activation must be one of"),
    (dict(input_size=3, hidden_size=4, recurrent_activation="tanh"), ValueError,
     "recurrent_activation must be one of"),
    (dict(input_size=3, hidden_size=4, dtype=np.float16), TypeError, "dtype must be float32 or float64"),
    (dict(input_size=3, hidden_size=4, dtype=np.int32), TypeError, "dtype must be float32 or float64"),
    (dict(input_size=3, hidden_size=4, dtype="nonsense"), TypeError, "dtype must be float32 or float64"),
    (dict(input_size=3, hidden_size=4, n_threads=0), ValueError, "n_threads=0"),
    # a count no OpenMP team can have (2**31 failed with an OverflowError in the kernel)
    (dict(input_size=3, hidden_size=4, n_threads=2**31), ValueError, "out of range"),
    (dict(input_size=3, hidden_size=4, n_threads=-5000), ValueError, "out of range"),
    (dict(input_size=3, hidden_size=4, n_threads=1.5), TypeError, "n_threads must be None or an int"),
    (dict(input_size=3, hidden_size=4, n_threads="2"), TypeError, "n_threads must be None or an int"),
    (dict(input_size=3, hidden_size=4, random_state="x"), TypeError, "random_state"),
    (dict(input_size=3, hidden_size=4, peepholes="yes"), TypeError, "peepholes must be a bool"),
    (dict(input_size=3, hidden_size=4, forget_bias=None), TypeError, "forget_bias"),
    # (a NaN forget bias made every output NaN; 1e300 overflowed to inf in float32)
    (dict(input_size=3, hidden_size=4, forget_bias=float("nan")), ValueError,
     "forget_bias must be a finite float"),
    (dict(input_size=3, hidden_size=4, forget_bias=-np.inf), ValueError, "forget_bias"),
    (dict(input_size=3, hidden_size=4, forget_bias=1e300), ValueError,
     "within float32's range"),
    # errors that did not name the argument (an unhashable choice, NumPy's seed message)
    (dict(input_size=3, hidden_size=4, activation=["tanh"]), ValueError,
     "activation must be one of"),
    (dict(input_size=3, hidden_size=4, recurrent_activation={}), ValueError,
     "recurrent_activation must be one of"),
    (dict(input_size=3, hidden_size=4, random_state=-1), ValueError,
     "random_state must be a non-negative int"),
    # np.dtype(None) is float64: a layer of the wrong dtype, silently
    (dict(input_size=3, hidden_size=4, dtype=None), TypeError, "dtype must be float32 or"),
]


@pytest.mark.parametrize("case", CTOR_CASES, ids=[str(i) for i in range(len(CTOR_CASES))])
def test_constructor_errors(case):
    kwargs, exc, match = case
    with pytest.raises(exc, match=match):
        fl.LSTM(**kwargs)


def test_stack_errors():
    with pytest.raises(ValueError, match="non-empty"):
        fl.MultiLSTM([])
    for bad in (None, 5):
        with pytest.raises(TypeError, match="layers must be a non-empty list"):
            fl.MultiLSTM(bad)
    with pytest.raises(ValueError, match=r"layers\[1\].input_size=5 must equal layers\[0\].output_size=4"):
        fl.MultiLSTM([fl.LSTM(6, 4), fl.LSTM(5, 5)])
    with pytest.raises(TypeError, match=r"layers\[1\] must be an LSTM or Bidirectional"):
        fl.MultiLSTM([fl.LSTM(6, 4), "layer"])
    with pytest.raises(TypeError, match="share one dtype"):
        fl.MultiLSTM([fl.LSTM(6, 4), fl.LSTM(4, 5, dtype=np.float64)])
    a = fl.LSTM(4, 4)
    with pytest.raises(ValueError, match="appears twice"):
        fl.MultiLSTM([a, a])
    stack = fl.MultiLSTM([fl.LSTM(6, 4), fl.LSTM(4, 5)])
    with pytest.raises(TypeError, match="one state per layer"):
        stack(np.zeros((2, 3, 6)), initial_state=stack.zero_state(2)[:1])
    with pytest.raises(ValueError, match=r"initial_state\[1\].c must have shape \(2, 5\)"):
        stack(np.zeros((2, 3, 6)), initial_state=(stack.zero_state(2)[0], (np.zeros((2, 4)),) * 2))
    bi = fl.MultiLSTM([fl.Bidirectional(fl.LSTM(6, 2), fl.LSTM(6, 2))])
    with pytest.raises(TypeError, match="Bidirectional, which cannot run one step"):
        bi.step(np.zeros((1, 6)))


def test_bidirectional_errors():
    with pytest.raises(ValueError, match="input_size"):
        fl.Bidirectional(fl.LSTM(3, 4), fl.LSTM(2, 4))
    with pytest.raises(TypeError, match="forward_layer must be a fastlstm.LSTM"):
        fl.Bidirectional("a", fl.LSTM(2, 4))
    bi = fl.Bidirectional(fl.LSTM(3, 4), fl.LSTM(3, 4))
    with pytest.raises(TypeError, match=r"\(forward_state, backward_state\)"):
        bi(np.zeros((2, 5, 3)), initial_state=fl.LSTMState(np.zeros((2, 4)), np.zeros((2, 4))))


def test_errors_leave_inputs_untouched(layer):
    X = np.ones((2, 5, 3))
    with pytest.raises(ValueError):
        layer(X, lengths=[9, 9])
    assert np.all(X == 1)


def test_too_large_for_blas_is_refused(layer):
    # a broadcast view: no memory behind it, so the check must come before any copy
    X = np.broadcast_to(np.zeros((1, 1, 3), np.float32), (2**16, 2**15 + 1, 3))
    with pytest.raises(ValueError, match="too large"):
        layer(X)


def test_step_with_batch_times_features_beyond_32_bits_is_refused():
    """As a call's: batch*features must stay below 2**31 (a broadcast view, no memory)."""
    wide = fl.LSTM(2**20, 1, random_state=0)
    x = np.broadcast_to(np.zeros(2**20, np.float32), (2**11, 2**20))
    with pytest.raises(ValueError, match=r"batch\*features = 2147483648 must stay below"):
        wide.step(x)
    with pytest.raises(ValueError, match=r"batch\*features = 2147483648 must stay below"):
        wide(x[:, None, :])


@pytest.mark.parametrize("lengths", [np.array([1.0, 2.0]), [1.5, 2], [True, False], ["a", "b"]])
def test_non_integer_lengths_are_a_value_error_and_a_type_error(layer, lengths):
    # SPEC.md Part A: lengths must be integers in [0, T], others are a ValueError; a wrong
    # dtype is a TypeError as well, so code catching either sees it
    with pytest.raises(ValueError, match="lengths must be integers") as info:
        layer(GOOD_X, lengths=lengths)
    assert isinstance(info.value, TypeError)


def test_scalars_stored_as_0d_arrays_are_accepted():
    """np.load gives a stored scalar (golden/ keeps forget_bias so) as a 0-d array."""
    from fastlstm import reference as ref

    layer = fl.LSTM(np.array(3), np.array(4), proj_size=np.array(2), peepholes=True,
                    cell_clip=np.array(0.5, np.float32), proj_clip=np.array(0.25),
                    forget_bias=np.array(1.5, np.float32), n_threads=np.array(1),
                    random_state=0)
    assert (layer.input_size, layer.hidden_size, layer.proj_size) == (3, 4, 2)
    for name, want in (("cell_clip", 0.5), ("proj_clip", 0.25), ("forget_bias", 1.5)):
        value = getattr(layer, name)
        assert type(value) is float and value == want, name
    np.testing.assert_array_equal(layer.b[4:8], np.float32(1.5))
    assert layer.zero_state(np.array(2)).c.shape == (2, 4)
    X = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    Y, _ = layer(X)
    want, _ = ref.lstm_forward(X, layer.params, cell_clip=0.5, proj_clip=0.25)
    np.testing.assert_allclose(Y, want, rtol=1e-5, atol=1e-6)
    for bad in (np.array([1.0]), np.array(True), np.array("1.0")):
        with pytest.raises(TypeError, match="forget_bias must be a float"):
            fl.LSTM(3, 4, forget_bias=bad)
        with pytest.raises(TypeError, match="cell_clip must be None or a non-negative float"):
            fl.LSTM(3, 4, cell_clip=bad)


def test_layer_belongs_to_one_model():
    """A layer's parameters are views into one container's buffer: a second live container
    (or the same layer twice, also inside a Bidirectional) is refused, so that no model's
    optimiser silently updates a stale copy."""
    import copy
    import gc
    import pickle

    from fastlstm import optim

    a, b = fl.LSTM(4, 4, random_state=0), fl.LSTM(4, 4, random_state=1)
    with pytest.raises(ValueError, match=r"layers\[0\] already belongs to a Bidirectional"):
        fl.MultiLSTM([a, fl.Bidirectional(a, b)])
    l0, l1 = fl.LSTM(3, 4, random_state=0), fl.LSTM(4, 5, random_state=1)
    stack = fl.MultiLSTM([l0, l1])
    W0 = l0.W.copy()
    for build in (lambda: fl.MultiLSTM([l0]), lambda: fl.Bidirectional(l0, fl.LSTM(3, 4))):
        with pytest.raises(ValueError, match="already belongs to a MultiLSTM.*deepcopy"):
            build()
    # the refusal changed nothing: the stack still trains layer 0
    X = np.random.default_rng(0).normal(size=(2, 6, 3)).astype(np.float32)
    Y, _, cache = stack.forward(X)
    stack.backward(np.ones_like(Y), cache)
    assert np.shares_memory(stack.params["0.W"], l0.W) and stack.grads["0.W"].any()
    optim.SGD(stack, lr=0.5).step()
    assert not np.array_equal(l0.W, W0)
    # a deep copy belongs to no model
    enc = fl.MultiLSTM([copy.deepcopy(l0)])
    np.testing.assert_array_equal(enc.params["0.W"], l0.W)
    assert not np.shares_memory(enc.params["0.W"], l0.W)
    # an unpickled stack owns its own (new) layers again; a layer pickled alone is free
    stack2 = pickle.loads(pickle.dumps(stack))
    with pytest.raises(ValueError, match="already belongs"):
        fl.MultiLSTM([stack2.layers[0]])
    fl.MultiLSTM([pickle.loads(pickle.dumps(l1))])
    # once the first model is gone, its layers can join another
    del stack, cache
    gc.collect()
    again = fl.MultiLSTM([l0])
    assert np.shares_memory(again.params["0.W"], l0.W)


def test_sizes_and_parts_cannot_be_reassigned():
    """The sizes shape the parameter arrays the kernels read: reassigning one read out of
    bounds (garbage, heap corruption); a stack's list took any layer appended to it."""
    layer = fl.LSTM(3, 4, random_state=0)
    for name, value in (("input_size", 100000), ("hidden_size", 64), ("proj_size", 2),
                        ("use_peepholes", True)):
        with pytest.raises(AttributeError, match=f"{name} cannot be changed after the LSTM"):
            setattr(layer, name, value)
    assert (layer.input_size, layer.hidden_size, layer.proj_size, layer.use_peepholes) == \
        (3, 4, None, False)
    stack = fl.MultiLSTM([fl.LSTM(3, 5), fl.LSTM(5, 2)])
    with pytest.raises(AttributeError, match="layers cannot be changed"):
        stack.layers = [fl.LSTM(3, 5)]
    with pytest.raises(AttributeError):
        stack.layers.append(fl.LSTM(500, 3))
    bi = fl.Bidirectional(fl.LSTM(3, 2), fl.LSTM(3, 2))
    with pytest.raises(AttributeError, match="backward_layer cannot be changed"):
        bi.backward_layer = fl.LSTM(3, 7)
    X = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
    ref = fl.reference.lstm_forward(X, layer.params)[0]
    np.testing.assert_allclose(layer(X)[0], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, value, exc, match", [
    ("cell_clip", -1.0, ValueError, "cell_clip must be None or a non-negative float"),
    ("cell_clip", "big", TypeError, "cell_clip must be None or a non-negative float"),
    ("proj_clip", float("nan"), ValueError, "proj_clip must be None or a non-negative"),
    ("activation", "softmax", ValueError, "activation must be one of"),
    ("recurrent_activation", None, ValueError, "recurrent_activation must be one of"),
    ("forget_bias", float("nan"), ValueError, "forget_bias must be a finite float"),
])
def test_options_are_checked_when_assigned(name, value, exc, match):
    """Options set after construction get the constructor's checks (they ran silently,
    or failed inside the kernel call with a KeyError / Cython's message)."""
    layer = fl.LSTM(3, 4, random_state=0)
    before = getattr(layer, name)
    with pytest.raises(exc, match=match):
        setattr(layer, name, value)
    assert getattr(layer, name) == before


def test_assigned_options_take_effect():
    layer = fl.LSTM(3, 4, random_state=0)
    layer.cell_clip = 0.25
    layer.activation = "relu"
    layer.recurrent_activation = "hard_sigmoid"
    X = np.random.default_rng(1).normal(size=(2, 6, 3)) * 3
    X = X.astype(np.float32)
    want = fl.reference.lstm_forward(X, layer.params, cell_clip=0.25,
                                     activation="relu",
                                     recurrent_activation="hard_sigmoid")[0]
    np.testing.assert_allclose(layer(X)[0], want, rtol=1e-5, atol=1e-6)
    assert "cell_clip=0.25" in repr(layer)


def test_empty_lengths_list_for_an_empty_batch():
    """lengths=[] for a batch of 0 rows (an empty list is a float array): accepted."""
    layer = fl.LSTM(3, 4, random_state=0)
    Y, state = layer(np.zeros((0, 5, 3)), lengths=[])
    assert Y.shape == (0, 5, 4) and state.c.shape == (0, 4)
    with pytest.raises(ValueError, match="lengths must be integers"):
        layer(np.zeros((1, 5, 3)), lengths=[1.0])


def test_masked_arrays_and_tensors_that_need_grad():
    """A masked array's mask was dropped silently; a torch tensor that requires grad
    raised torch's RuntimeError."""
    layer = fl.LSTM(3, 4, random_state=0)
    X = np.ma.masked_array(np.ones((2, 5, 3)), mask=np.zeros((2, 5, 3), bool))
    np.testing.assert_array_equal(layer(X)[0], layer(np.ones((2, 5, 3)))[0])  # no entry masked
    X.mask[1, 3:] = True
    with pytest.raises(TypeError, match="X is a masked array with masked entries"):
        layer(X)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="X must be a numeric array"):
        layer(torch.ones((2, 5, 3), requires_grad=True))


@pytest.mark.parametrize("module, call, match", [
    ("onnx", lambda: fl.to_onnx(fl.LSTM(3, 4)), r"to_onnx needs onnx.*fastlstm\[onnx\]"),
    ("onnx", lambda: fl.from_onnx(b"x"), r"from_onnx needs onnx.*fastlstm\[onnx\]"),
    ("torch", lambda: fl.to_torch(fl.LSTM(3, 4)), r"to_torch needs torch.*fastlstm\[torch\]"),
])
def test_missing_optional_package_names_the_extra(module, call, match, monkeypatch):
    """A missing optional package said only "No module named 'onnx'"."""
    monkeypatch.setitem(__import__("sys").modules, module, None)   # import -> ImportError
    with pytest.raises(ImportError, match=match):
        call()



def test_installed_but_broken_optional_package_is_told_apart(monkeypatch):
    import sys
    import types
    from fastlstm import _optional

    def broken(name, *a, **k):
        raise ModuleNotFoundError("No module named 'its_dependency'", name="its_dependency")
    monkeypatch.setattr(_optional.importlib, "import_module", broken)
    monkeypatch.setitem(sys.modules, "onnx_probe", types.ModuleType("onnx_probe"))
    with pytest.raises(ImportError, match="installed but failed to import: No module named"):
        _optional.need("onnx", "to_onnx")


def test_options_of_an_unbuilt_layer_read_as_missing_attributes():
    """Before __init__ ran (a subclass checking an option first) the properties raised
    KeyError; they raise AttributeError, so hasattr and getattr defaults work."""
    raw = object.__new__(fl.LSTM)
    assert not hasattr(raw, "activation") and getattr(raw, "hidden_size", None) is None


def test_float64_values_beyond_float32_are_refused_not_made_infinite():
    # a float32 model casts float64 input on the way in: a finite value beyond float32's
    # range would become infinity (NumPy only warns); refused, naming the argument
    big = np.zeros((2, 5, 3))
    big[1, 2, 0] = -1e39
    layer = fl.LSTM(3, 4, random_state=0)
    stack = fl.MultiLSTM([fl.LSTM(3, 4, random_state=1), fl.LSTM(4, 2, random_state=2)])
    bi = fl.Bidirectional(fl.LSTM(3, 4, random_state=3), fl.LSTM(3, 4, random_state=4))
    state = (np.zeros((2, 4)), np.full((2, 4), 5e38))
    U0 = layer.U.copy()
    with np.errstate(all="raise"):      # refused before any cast: no NumPy warning either
        for model in (layer, stack, bi):
            with pytest.raises(ValueError, match=r"X holds values up to 1e\+39, beyond the "
                                                 r"range of float32 .* dtype=np.float64"):
                model(big)
            with pytest.raises(ValueError, match="X holds values up to 1e"):
                model.forward(big)
        with pytest.raises(ValueError, match=r"initial_state.h holds values up to 5e\+38"):
            layer(np.zeros((2, 5, 3)), initial_state=state)
        with pytest.raises(ValueError, match=r"state.h holds values up to 5e\+38"):
            layer.step(np.zeros((2, 3)), state)
        with pytest.raises(ValueError, match=r"x holds values up to 1e\+39"):
            layer.step(big[:, 2])
        with pytest.raises(ValueError, match=r"x holds values up to 1e\+39"):
            stack.step(big[:, 2])
        with pytest.raises(ValueError, match=r"U holds values up to 1e\+39"):
            layer.U = np.full(layer.U.shape, 1e39)
        Y, _, cache = layer.forward(np.ones((2, 5, 3)))
        with pytest.raises(ValueError, match=r"dY holds values up to 1e\+39"):
            layer.backward(np.full(Y.shape, 1e39), cache)
        with pytest.raises(ValueError, match=r"dstate.h holds values up to 5e\+38"):
            layer.backward(np.zeros(Y.shape), cache, dstate=state)
        dense = fl.Dense(3, 2, random_state=0)
        with pytest.raises(ValueError, match=r"H holds values up to 1e\+39"):
            dense(big)
        out, dcache = dense.forward(np.ones((2, 3)))
        with pytest.raises(ValueError, match=r"dout holds values up to 1e\+39"):
            dense.backward(np.full(out.shape, 1e39), dcache)
    np.testing.assert_array_equal(layer.U, U0)      # left unchanged
    # NaN and infinities are values, not overflow: they pass (and stay in their rows)
    odd = np.zeros((2, 5, 3))
    odd[1, 2] = [np.nan, np.inf, -np.inf]
    Y, _ = layer(odd)
    assert np.isfinite(Y[0]).all() and np.isnan(Y[1, 2:]).all()
    # what the cast rounds to the largest float32 fits (up to 2**128 - 2**103, exclusive),
    # also in a strided or big-endian array; from there on it would be infinite
    f32max = float(np.finfo(np.float32).max)
    for value, fits in ((f32max, True), (2.0**128 - 2.0**103 - 2.0**75, True),
                        (2.0**128 - 2.0**103, False)):
        edge = np.zeros((2, 5, 3))
        edge[0, 0, 0] = -value
        for arr in (edge, np.asfortranarray(edge), edge.astype(">f8")):
            if fits:
                assert np.isfinite(layer(arr)[0]).all()
            else:
                with pytest.raises(ValueError, match=r"X holds values up to 3.4e\+38, beyond "
                                                     r"the range of float32 \(largest "
                                                     r"3.4028235e\+38\)"):
                    layer(arr)
    dense = fl.Dense(3, 2, random_state=0)
    for name in ("W", "b"):
        with pytest.raises(ValueError, match=f"{name} holds values up to 1e\\+39"):
            setattr(dense, name, np.full(getattr(dense, name).shape, 1e39))
        assert np.isfinite(getattr(dense, name)).all()
    wide = fl.LSTM(3, 4, dtype=np.float64, random_state=0)
    assert np.isfinite(wide(big)[0]).all()


def test_boolean_flags_stored_as_0d_arrays_are_accepted():
    """peepholes, reverse and time_major (and the optimisers' flags) take 0-d arrays, as
    the other scalar options do."""
    from fastlstm import optim

    layer = fl.LSTM(3, 4, peepholes=np.array(True), random_state=0)
    assert layer.use_peepholes is True
    X = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    Y, s = layer(X, reverse=np.array(True), time_major=np.array(False))
    Yr, sr = layer(X, reverse=True, time_major=False)
    np.testing.assert_array_equal(Y, Yr)
    np.testing.assert_array_equal(s.h, sr.h)
    assert fl.LSTM(3, 4, reverse=np.array(True)).reverse is True
    opt = optim.SGD(layer, lr=0.1, momentum=0.9, nesterov=np.array(True))
    assert opt.nesterov is True
    for bad in (np.array([True]), np.array(1)):
        with pytest.raises(TypeError, match="peepholes must be a bool"):
            fl.LSTM(3, 4, peepholes=bad)
        with pytest.raises(TypeError, match="time_major must be a bool"):
            layer(X, time_major=bad)


def test_masked_lengths_with_masked_entries_are_refused():
    layer = fl.LSTM(3, 4, random_state=0)
    X = np.ones((2, 5, 3), np.float32)
    L = np.ma.masked_array([3, 1], mask=[False, False])
    np.testing.assert_array_equal(layer(X, lengths=L)[0], layer(X, lengths=[3, 1])[0])
    L.mask[1] = True
    with pytest.raises(TypeError, match="lengths is a masked array with masked entries"):
        layer(X, lengths=L)
    from fastlstm import readout
    with pytest.raises(TypeError, match="lengths is a masked array with masked entries"):
        readout.sequence_mask(L, 5)


def test_values_beyond_float64_are_shown_as_themselves_with_fitting_advice():
    """A long double beyond float64's range was shown as inf, and a float64 model (or a
    float32 one) was told to use dtype=np.float64, where only scaling helps."""
    if np.finfo(np.longdouble).max <= np.finfo(np.float64).max:
        pytest.skip("long double is float64 on this platform")
    huge = np.full((1, 1, 2), np.longdouble("1e400"))
    for dtype in (np.float64, np.float32):
        with pytest.raises(ValueError, match=r"X holds values up to 1\.00e\+400, .*"
                                             r"infinite; scale them$"):
            fl.LSTM(2, 3, dtype=dtype)(huge)
    with pytest.raises(ValueError, match=r"up to 1e\+39, .*; build the model with "
                                         r"dtype=np\.float64$"):
        fl.LSTM(2, 3)(np.full((1, 1, 2), 1e39))


def test_zero_state_batch_size_type_and_value():
    """A batch size that is no integer ("2", 2.0, None) was a ValueError: a TypeError now,
    as for every other argument of a wrong type; a negative one stays a ValueError."""
    layer = fl.LSTM(3, 4)
    for bad in ("2", 2.0, None, True, np.array(2.0)):
        with pytest.raises(TypeError, match="batch_size must be a non-negative int"):
            layer.zero_state(bad)
    with pytest.raises(ValueError, match="batch_size must be a non-negative int, got -1"):
        layer.zero_state(-1)
    assert layer.zero_state(np.int64(0)).h.shape == (0, 4)
