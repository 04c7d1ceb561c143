"""Forward kernels against the NumPy reference, over dtypes, threads, shapes and options."""

import itertools

import numpy as np
import pytest
from conftest import randomize, ref, ref_options, ref_params, reference_stack, tol

import fastlstm as fl

OPTIONS = {
    "plain": {},
    "peepholes": dict(peepholes=True),
    "cell_clip": dict(cell_clip=0.3),
    "cell_clip_zero": dict(cell_clip=0.0),
    "proj": dict(proj_size=3),
    "proj_clip": dict(proj_size=3, proj_clip=0.05),
    "all": dict(peepholes=True, cell_clip=0.5, proj_size=2, proj_clip=0.2),
    "relu": dict(activation="relu"),
    "sigmoid_act": dict(activation="sigmoid"),
    "linear_act": dict(activation="linear", cell_clip=2.0),
    "hard_sigmoid": dict(recurrent_activation="hard_sigmoid"),
    "hard_sigmoid_keras2": dict(recurrent_activation="hard_sigmoid_keras2", peepholes=True),
}
SHAPES = [(1, 1, 1, 1), (2, 3, 6, 4), (5, 7, 3, 5), (17, 12, 4, 8), (64, 3, 2, 3),
          (3, 50, 5, 6)]


def run_case(dtype, n_threads, shape, options, lengths_kind, reverse, time_major, seed=0):
    rng = np.random.default_rng(seed)
    N, T, I, H = shape
    layer = randomize(fl.LSTM(I, H, dtype=dtype, n_threads=n_threads, **options), rng)
    X = rng.normal(scale=1.5, size=(N, T, I))
    if lengths_kind == "none":
        L = None
    elif lengths_kind == "random":
        L = rng.integers(0, T + 1, size=N)
        L[0] = T
        if N > 1:
            L[-1] = 0
    else:
        L = np.full(N, T)
    s0 = (rng.normal(size=(N, H)), rng.normal(size=(N, layer.output_size)))
    Xin = np.swapaxes(X, 0, 1) if time_major else X
    Y, state = layer(Xin, initial_state=s0, lengths=L, time_major=time_major, reverse=reverse)
    if time_major:
        Y = np.swapaxes(Y, 0, 1)
    Yr, (cr, hr) = ref.lstm_forward(X.astype(dtype).astype(np.float64), ref_params(layer),
                                    initial_state=s0, lengths=L, reverse=reverse,
                                    **ref_options(layer))
    assert Y.dtype == dtype and state.c.dtype == dtype and state.h.dtype == dtype
    assert Y.shape == (N, T, layer.output_size)
    np.testing.assert_allclose(Y, Yr, **tol(dtype))
    np.testing.assert_allclose(state.c, cr, **tol(dtype))
    np.testing.assert_allclose(state.h, hr, **tol(dtype))
    return Y, state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("option", list(OPTIONS))
def test_options_against_reference(dtype, n_threads, shape, option):
    run_case(dtype, n_threads, shape, OPTIONS[option], "random", False, False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("lengths_kind,reverse,time_major",
                         list(itertools.product(["none", "random", "full"], [False, True],
                                                [False, True])))
@pytest.mark.parametrize("option", ["plain", "all"])
def test_layouts_lengths_directions(dtype, n_threads, lengths_kind, reverse, time_major, option):
    for shape in [(1, 4, 3, 2), (9, 11, 3, 4), (33, 6, 2, 5)]:
        run_case(dtype, n_threads, shape, OPTIONS[option], lengths_kind, reverse, time_major)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_and_two_threads_identical(dtype):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 30, 16))
    L = rng.integers(0, 31, size=40)
    outs = []
    for n in (1, 2):
        layer = fl.LSTM(16, 32, peepholes=True, proj_size=8, dtype=dtype, random_state=0,
                        n_threads=n)
        outs.append(layer(X, lengths=L, reverse=True))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1].c, outs[1][1].c)
    np.testing.assert_array_equal(outs[0][1].h, outs[1][1].h)


def test_long_sequence_uses_several_time_blocks(monkeypatch):
    """Sequences longer than one input-projection block give the same result."""
    import fastlstm.layers as layers

    monkeypatch.setattr(layers, "_WORKSPACE_ELEMENTS", 4 * 4 * 5 * 3)  # 3 steps per block
    for reverse, time_major, lengths_kind in itertools.product([False, True], [False, True],
                                                               ["none", "random"]):
        run_case(np.float64, 1, (5, 20, 3, 4), OPTIONS["all"], lengths_kind, reverse,
                 time_major)
        run_case(np.float64, 2, (5, 20, 3, 4), OPTIONS["plain"], lengths_kind, reverse,
                 time_major)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("option", ["plain", "all", "relu"])
def test_steps_equal_sequence(dtype, option):
    rng = np.random.default_rng(5)
    layer = randomize(fl.LSTM(3, 4, dtype=dtype, **OPTIONS[option]), rng)
    X = rng.normal(size=(6, 9, 3)).astype(dtype)
    Y, final = layer(X)
    state = layer.zero_state(6)
    for t in range(9):
        out, state = layer.step(X[:, t], state)
        np.testing.assert_allclose(out, Y[:, t], **tol(dtype))
        np.testing.assert_array_equal(out, state.h)
    np.testing.assert_allclose(state.c, final.c, **tol(dtype))
    np.testing.assert_allclose(state.h, final.h, **tol(dtype))


def test_step_against_reference(rng):
    layer = randomize(fl.LSTM(6, 4, dtype=np.float64, peepholes=True, cell_clip=0.4), rng)
    x = rng.normal(size=(2, 6))
    s = (rng.normal(size=(2, 4)), rng.normal(size=(2, 4)))
    out, state = layer.step(x, s)
    m, c = ref.lstm_step(x, s[0], s[1], ref_params(layer), **ref_options(layer))
    np.testing.assert_allclose(out, m, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(state.c, c, rtol=1e-13, atol=1e-14)
    assert isinstance(state, fl.LSTMState)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_multilstm_against_reference(dtype, n_threads, rng):
    model = fl.MultiLSTM([
        randomize(fl.LSTM(5, 4, dtype=dtype, n_threads=n_threads, peepholes=True), rng),
        randomize(fl.Bidirectional(fl.LSTM(4, 3, dtype=dtype, n_threads=n_threads),
                                   fl.LSTM(4, 2, proj_size=1, dtype=dtype,
                                           n_threads=n_threads)), rng),
        randomize(fl.LSTM(4, 6, dtype=dtype, n_threads=n_threads, cell_clip=0.2), rng),
    ])
    X = rng.normal(size=(7, 8, 5))
    L = np.array([8, 0, 3, 1, 8, 5, 2])
    s0 = tuple(
        ((rng.normal(size=(7, 4)), rng.normal(size=(7, 4))),
         ((rng.normal(size=(7, 3)), rng.normal(size=(7, 3))),
          (rng.normal(size=(7, 2)), rng.normal(size=(7, 1)))),
         (rng.normal(size=(7, 6)), rng.normal(size=(7, 6))))
    )
    for time_major in (False, True):
        Xin = np.swapaxes(X, 0, 1) if time_major else X
        Y, states = model(Xin, initial_state=s0, lengths=L, time_major=time_major)
        if time_major:
            Y = np.swapaxes(Y, 0, 1)
        Yr, sr = ref.stack_forward(X.astype(dtype).astype(np.float64), reference_stack(model),
                                   initial_state=s0, lengths=L)
        np.testing.assert_allclose(Y, Yr, **tol(dtype))
        np.testing.assert_allclose(states[0].c, sr[0][0], **tol(dtype))
        np.testing.assert_allclose(states[1][1].h, sr[1][1][1], **tol(dtype))
        np.testing.assert_allclose(states[2].h, sr[2][1], **tol(dtype))
        assert isinstance(states[1], tuple) and isinstance(states[1][0], fl.LSTMState)


def test_multilstm_step_equals_sequence(rng):
    model = fl.MultiLSTM([randomize(fl.LSTM(6, 4), rng), randomize(fl.LSTM(4, 5), rng)])
    X = rng.normal(size=(2, 3, 6)).astype(np.float32)
    Y, final = model(X)
    state = model.zero_state(2)
    for t in range(3):
        out, state = model.step(X[:, t], state)
        np.testing.assert_allclose(out, Y[:, t], **tol(np.float32))
    for a, b in zip(state, final):
        np.testing.assert_allclose(a.c, b.c, **tol(np.float32))
        np.testing.assert_allclose(a.h, b.h, **tol(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_multilstm_step_every_state_form_same_bits(rng, dtype):
    """A stack's step (one compiled call when every layer is small and the arrays plain)
    against the NumPy reference and, bit for bit, against the layers stepped one by one;
    states as None, LSTMState, tuples, a list, other dtypes and strided arrays (the general
    path) give the same bits; the caller's arrays are not written; a layer too big for the
    small kernel takes the general path."""
    from fastlstm import _forward

    for sizes, opts in [((4, 5), {}), ((7, 3, 6), dict(peepholes=True, cell_clip=0.5)),
                        ((5, 200), {}), ((4,), dict(activation="relu",
                                                     recurrent_activation="hard_sigmoid"))]:
        layers, inp = [], 6
        for H in sizes:
            layers.append(randomize(fl.LSTM(inp, H, dtype=dtype, **opts), rng))
            inp = H
        model = fl.MultiLSTM(layers)
        assert (model._small_specs() is not None) == (200 not in sizes)
        for N in (1, 3):
            x = rng.normal(size=(N, 6)).astype(dtype)
            s0 = tuple(fl.LSTMState(rng.normal(size=(N, H)).astype(dtype),
                                    rng.normal(size=(N, H)).astype(dtype)) for H in sizes)
            keep = [a.copy() for st in s0 for a in st]
            out, states = model.step(x, s0)
            assert all(np.array_equal(a, b) for a, b in zip(keep, (a for st in s0 for a in st)))
            # layer by layer
            inp_k = x
            for layer, st, got in zip(layers, s0, states):
                inp_k, want = layer.step(inp_k, st)
                assert np.array_equal(got.c, want.c) and np.array_equal(got.h, want.h)
                assert isinstance(got, fl.LSTMState)
            assert np.array_equal(out, inp_k) and np.array_equal(out, states[-1].h)
            Yr, sr = ref.stack_forward(x[:, None].astype(np.float64), reference_stack(model),
                                       initial_state=[tuple(st) for st in s0])
            np.testing.assert_allclose(out, Yr[:, 0], **tol(dtype))
            # other forms of the same state: the same bits
            other = np.float64 if dtype == np.float32 else np.float32
            forms = [[tuple(st) for st in s0],                                  # a list
                     tuple((np.asfortranarray(st.c), st.h) for st in s0),       # strided
                     tuple((st.c.astype(other), st.h) for st in s0)
                     if dtype == np.float32 else None]
            for form in forms:
                if form is None:
                    continue
                got_out, got_states = model.step(x, form)
                assert np.array_equal(got_out, out)
                for a, b in zip(got_states, states):
                    assert np.array_equal(a.c, b.c) and np.array_equal(a.h, b.h)
            zero_out, _ = model.step(x)
            want_out, _ = model.step(x, model.zero_state(N))
            assert np.array_equal(zero_out, want_out)
            if model._small_specs() is not None:
                assert _forward.stack_step(x, s0, model._small_specs(), fl.LSTMState) \
                    is not None
                assert _forward.stack_step(x, list(s0), model._small_specs(),
                                           fl.LSTMState) is None
            if len(sizes) == 2:         # an LSTMState is one layer's state, not the stack's
                with pytest.raises(TypeError, match="one state per layer"):
                    model.step(x, fl.LSTMState(*s0))


def test_bidirectional_against_reference(rng):
    bi = fl.Bidirectional(randomize(fl.LSTM(3, 4, dtype=np.float64), rng),
                          randomize(fl.LSTM(3, 2, dtype=np.float64, peepholes=True), rng))
    X = rng.normal(size=(4, 6, 3))
    L = np.array([6, 2, 0, 4])
    Y, (fw, bw) = bi(X, lengths=L)
    Yr, (sf, sb) = ref.bidirectional_forward(X, ref_params(bi.forward_layer),
                                             ref_params(bi.backward_layer), lengths=L)
    np.testing.assert_allclose(Y, Yr, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(bw.c, sb[0], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(fw.h, sf[1], rtol=1e-12, atol=1e-13)
    assert Y.shape == (4, 6, 6)


def test_lengths_semantics_tf_dynamic_rnn(rng):
    """Padded outputs are 0, the state is carried, L = 0 returns the initial state."""
    layer = fl.LSTM(3, 4, dtype=np.float64, random_state=0)
    X = rng.normal(size=(3, 5, 3))
    s0 = (rng.normal(size=(3, 4)), rng.normal(size=(3, 4)))
    Y, s = layer(X, initial_state=s0, lengths=[5, 2, 0])
    assert np.all(Y[1, 2:] == 0) and np.all(Y[2] == 0)
    np.testing.assert_array_equal(s.c[2], s0[0][2])
    np.testing.assert_array_equal(s.h[2], s0[1][2])
    np.testing.assert_array_equal(s.h[1], Y[1, 1])
    Y2, s2 = layer(X[1:2, :2], initial_state=(s0[0][1:2], s0[1][1:2]))
    np.testing.assert_allclose(s.c[1], s2.c[0], rtol=1e-14)


@pytest.mark.parametrize("reverse", [False, True])
def test_nan_in_padding_does_not_leak(reverse, rng):
    layer = fl.LSTM(3, 4, random_state=0, peepholes=True, proj_size=2)
    X = rng.normal(size=(4, 6, 3)).astype(np.float32)
    L = np.array([6, 3, 0, 1])
    clean, s_clean = layer(X, lengths=L, reverse=reverse)
    Xd = X.copy()
    for n, length in enumerate(L):
        Xd[n, length:] = np.nan if n % 2 else np.inf
    dirty, s_dirty = layer(Xd, lengths=L, reverse=reverse)
    np.testing.assert_array_equal(clean, dirty)
    np.testing.assert_array_equal(s_clean.c, s_dirty.c)
    np.testing.assert_array_equal(s_clean.h, s_dirty.h)


def test_nan_in_one_row_stays_in_that_row(rng):
    layer = fl.LSTM(3, 8, random_state=0, n_threads=1)
    X = rng.normal(size=(5, 4, 3)).astype(np.float32)
    X[2, 1, 0] = np.nan
    Y, s = layer(X)
    assert np.isnan(Y[2, 1:]).all() and np.isfinite(Y[2, 0]).all()
    mask = np.ones(5, bool)
    mask[2] = False
    assert np.isfinite(Y[mask]).all() and np.isfinite(s.h[mask]).all()


def test_empty_time_and_batch():
    layer = fl.LSTM(3, 4, random_state=0)
    s0 = (np.ones((2, 4)), np.full((2, 4), 2.0))
    Y, s = layer(np.zeros((2, 0, 3)), initial_state=s0)
    assert Y.shape == (2, 0, 4)
    np.testing.assert_array_equal(s.c, s0[0])
    np.testing.assert_array_equal(s.h, s0[1])
    Y, s = layer(np.zeros((0, 5, 3)))
    assert Y.shape == (0, 5, 4) and s.c.shape == (0, 4)
    Y, s = layer(np.zeros((0, 5, 3)), time_major=True)
    assert Y.shape == (0, 5, 4) and s.c.shape == (5, 4)
    out, s = layer.step(np.zeros((0, 3)))
    assert out.shape == (0, 4)


@pytest.mark.parametrize("kind", ["fortran", "strided", "bigendian", "readonly", "memmap",
                                  "int", "bool", "float16", "list"])
def test_input_layouts_give_identical_results(kind, tmp_path, rng):
    layer = fl.LSTM(3, 4, random_state=0, dtype=np.float64)
    base = rng.normal(size=(4, 5, 3))
    if kind in ("int", "bool"):
        base = (base > 0) if kind == "bool" else np.round(base * 3)
    expected, es = layer(np.ascontiguousarray(base, np.float64))
    if kind == "fortran":
        X = np.asfortranarray(base)
    elif kind == "strided":
        big = np.zeros((8, 10, 6))
        big[::2, ::2, ::2] = base
        X = big[::2, ::2, ::2]
    elif kind == "bigendian":
        X = base.astype(">f8")
    elif kind == "readonly":
        X = base.copy()
        X.flags.writeable = False
    elif kind == "memmap":
        X = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float64,
                                      shape=base.shape)
        X[...] = base
        X.flush()
        X = np.load(tmp_path / "x.npy", mmap_mode="r")
    elif kind == "int":
        X = base.astype(np.int32)
    elif kind == "bool":
        X = base
    elif kind == "float16":
        X = base.astype(np.float16)
        expected, es = layer(X.astype(np.float64))
    else:
        X = base.tolist()
    before = np.array(X, copy=True)
    Y, s = layer(X)
    np.testing.assert_array_equal(Y, expected)
    np.testing.assert_array_equal(s.c, es.c)
    np.testing.assert_array_equal(np.asarray(X), before)


def test_caller_arrays_are_not_written(rng):
    layer = fl.LSTM(3, 4, random_state=0)
    X = rng.normal(size=(2, 5, 3)).astype(np.float32)
    c0 = rng.normal(size=(2, 4)).astype(np.float32)
    h0 = rng.normal(size=(2, 4)).astype(np.float32)
    L = np.array([5, 2])
    copies = [a.copy() for a in (X, c0, h0, L)]
    layer(X, initial_state=fl.LSTMState(c0, h0), lengths=L)
    layer.step(X[:, 0], (c0, h0))
    for a, b in zip((X, c0, h0, L), copies):
        np.testing.assert_array_equal(a, b)


def test_state_dtype_is_cast_to_model_dtype(rng):
    layer = fl.LSTM(3, 4, random_state=0, dtype=np.float64)
    s0 = (np.ones((2, 4), np.float32), np.ones((2, 4), np.int64))
    Y, s = layer(rng.normal(size=(2, 3, 3)), initial_state=s0)
    assert s.c.dtype == np.float64 and Y.dtype == np.float64


def test_parameters_are_live_views(rng):
    layer = fl.LSTM(3, 4, random_state=0, dtype=np.float64)
    X = rng.normal(size=(2, 3, 3))
    Y0, _ = layer(X)
    layer.W[...] = 0
    layer.U = np.zeros((4, 16))
    Y1, _ = layer(X)
    assert not np.allclose(Y0, Y1)
    expected, _ = ref.lstm_forward(X, ref_params(layer))
    np.testing.assert_allclose(Y1, expected, rtol=1e-13)
    assert np.shares_memory(layer.W, layer.flat_params)
    with pytest.raises(ValueError, match=r"U must have shape \(4, 16\)"):
        layer.U = np.zeros((16, 4))


def test_stack_parameters_share_one_buffer(rng):
    l0, l1 = fl.LSTM(6, 4, random_state=0), fl.LSTM(4, 5, random_state=1)
    W0 = l0.W.copy()
    stack = fl.MultiLSTM([l0, l1])
    np.testing.assert_array_equal(l0.W, W0)
    assert stack.flat_params.size == l0.n_params + l1.n_params
    assert np.shares_memory(l0.W, stack.flat_params) and np.shares_memory(l1.U, stack.flat_params)
    assert set(stack.params) == {"0.W", "0.U", "0.b", "1.W", "1.U", "1.b"}
    stack.flat_params[:] = 0
    assert not l1.b.any()


def test_default_initialisation():
    layer = fl.LSTM(6, 8, proj_size=5, peepholes=True, forget_bias=2.5, random_state=7)
    H = 8
    np.testing.assert_array_equal(layer.b[H:2 * H], 2.5)
    assert not layer.b[:H].any() and not layer.b[2 * H:].any() and not layer.peepholes.any()
    limit = np.sqrt(6 / (6 + 32))
    assert np.abs(layer.W).max() <= limit and np.abs(layer.W).max() > 0.5 * limit
    U = layer.U.astype(np.float64)  # (5, 32): orthonormal rows
    np.testing.assert_allclose(U @ U.T, np.eye(5), atol=1e-6)
    assert np.abs(layer.P).max() <= np.sqrt(6 / (8 + 5))
    again = fl.LSTM(6, 8, proj_size=5, peepholes=True, forget_bias=2.5, random_state=7)
    np.testing.assert_array_equal(layer.flat_params, again.flat_params)
    other = fl.LSTM(6, 8, proj_size=5, peepholes=True, forget_bias=2.5, random_state=8)
    assert not np.array_equal(layer.W, other.W)
    assert fl.LSTM(2, 3, random_state=np.random.RandomState(0)).W.shape == (2, 12)


def test_forget_bias_set_later_is_an_initialisation_choice():
    # as documented: b keeps its values (nothing is added at call time, SPEC Part A);
    # the next reset_parameters() uses the new value
    layer = fl.LSTM(3, 4, random_state=0)
    b = layer.b.copy()
    layer.forget_bias = 3.0
    np.testing.assert_array_equal(layer.b, b)
    layer.reset_parameters(random_state=0)
    np.testing.assert_array_equal(layer.b[4:8], 3.0)


def test_zero_state_and_repr():
    layer = fl.LSTM(6, 4, proj_size=3, dtype=np.float64)
    s = layer.zero_state(2)
    assert isinstance(s, fl.LSTMState) and s.c.shape == (2, 4) and s.h.shape == (2, 3)
    assert s.c.dtype == np.float64 and not s.c.any()
    assert "proj_size=3" in repr(layer)
    stack = fl.MultiLSTM([fl.LSTM(6, 4), fl.LSTM(4, 5)])
    assert [x.h.shape for x in stack.zero_state(3)] == [(3, 4), (3, 5)]


def test_tutorial_shapes():
    """The walk-through from the README, shapes as TF gives them."""
    cell = fl.LSTM(input_size=6, hidden_size=4, random_state=0)
    state = cell.zero_state(1)
    out, state = cell.step(np.array([[3, 2, 2, 2, 2, 2]], np.float32), state)
    assert out.shape == (1, 4) and state.c.shape == (1, 4) and out.dtype == np.float32
    stack = fl.MultiLSTM([fl.LSTM(6, 4), fl.LSTM(4, 5)])
    X = np.array([[[1, 2, 3, 4, 3, 2], [1, 2, 1, 1, 1, 2], [1, 2, 2, 2, 2, 2]],
                  [[1, 2, 3, 4, 3, 2], [3, 2, 2, 1, 1, 2], [0, 0, 0, 0, 3, 2]]], np.float32)
    Y, states = stack(X)
    assert Y.shape == (2, 3, 5) and len(states) == 2
    Y, states = stack(X, lengths=[3, 1])
    assert np.all(Y[1, 1:] == 0)
    np.testing.assert_array_equal(states[1].h[1], Y[1, 0])


def test_narrow_float_inputs_read_exactly_as_float32():
    """ml_dtypes' bfloat16 and float8 arrays (Keras and JAX hand them out) are real
    numbers, exact in float32: they were refused as X, state, step input and parameters."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(7)
    layer = fl.LSTM(3, 4, random_state=0)
    for narrow in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn):
        X = rng.normal(size=(2, 5, 3)).astype(narrow)
        c = rng.normal(size=(2, 4)).astype(narrow)
        wide = X.astype(np.float32)
        Y, s = layer(X, initial_state=(c, c))
        Yw, sw = layer(wide, initial_state=(c.astype(np.float32),) * 2)
        np.testing.assert_array_equal(Y, Yw)
        np.testing.assert_array_equal(s.h, sw.h)
        out, _ = layer.step(X[:, 0], (c, c))
        np.testing.assert_array_equal(out, layer.step(wide[:, 0], (c.astype(np.float32),) * 2)[0])
        W = rng.normal(size=(3, 16)).astype(narrow)
        layer.W = W
        np.testing.assert_array_equal(layer.W, W.astype(np.float32))
