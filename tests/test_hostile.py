"""Hostile input, beyond tests/test_errors.py: every model kind, non-finite values, empty and
huge sizes, absurd allocations and thread arguments.

Each bad input gives a ValueError / TypeError (MemoryError for sizes that cannot fit)
naming the argument, before any kernel runs; never a crash, a hang or a silent wrong answer.
"""

import os
import re

import numpy as np
import pytest
from conftest import randomize, ref, ref_options, ref_params, reference_stack

import fastlstm as fl
from fastlstm import _threads
from fastlstm import layers as layers_mod

I, H = 3, 4


def _lstm():
    return fl.LSTM(I, H, random_state=0)


def _bi():
    return fl.Bidirectional(fl.LSTM(I, H, random_state=0), fl.LSTM(I, 2, random_state=1))


def _stack():
    return fl.MultiLSTM([fl.LSTM(I, H, random_state=0),
                         fl.Bidirectional(fl.LSTM(H, 2, random_state=1),
                                          fl.LSTM(H, 3, random_state=2))])


MODELS = {"LSTM": _lstm, "Bidirectional": _bi, "MultiLSTM": _stack}


@pytest.fixture
def no_kernel(monkeypatch):
    """Fails the test if a kernel runs: errors must come before any work."""
    calls = []

    def forbidden(*args, **kwargs):
        calls.append(1)
        raise AssertionError("a kernel ran before the bad argument was refused")

    kernels = [name for name in dir(layers_mod._forward)
               if name.startswith("forward") and callable(getattr(layers_mod._forward, name))]
    assert "forward" in kernels
    for name in kernels:
        monkeypatch.setattr(layers_mod._forward, name, forbidden)
    return calls


def _good_state(model, N, dtype=np.float32):
    return model.zero_state(N)


def _bad_state(model, N, part, value):
    """The model's zero state with one (c or h) array of the first layer replaced."""
    def patch(state):
        c, h = state
        return (value, h) if part == "c" else (c, value)

    if isinstance(model, fl.LSTM):
        return patch(model.zero_state(N))
    if isinstance(model, fl.Bidirectional):
        fw, bw = model.zero_state(N)
        return fw, patch(bw)  # the second half: refused before the first half runs
    states = list(model.zero_state(N))
    fw, bw = states[-1]
    states[-1] = (fw, patch(bw))  # the top layer: refused before the bottom one runs
    return tuple(states)


N0, T0 = 2, 5
X0 = np.zeros((N0, T0, I), np.float32)

CALL_CASES = [
    ("lengths float", dict(lengths=np.array([1.0, 2.0])), ValueError, "lengths must be integers"),
    ("lengths python floats", dict(lengths=[1.5, 2.0]), ValueError, "lengths must be integers"),
    ("lengths bool", dict(lengths=[True, False]), ValueError, "lengths must be integers"),
    ("lengths nan", dict(lengths=[np.nan, 1]), ValueError, "lengths must be integers"),
    ("lengths complex", dict(lengths=[1j, 1]), ValueError, "lengths must be integers"),
    ("lengths negative", dict(lengths=[-1, 2]), ValueError, r"lengths must be in \[0, T=5\]"),
    ("lengths > T", dict(lengths=[6, 2]), ValueError, r"lengths must be in \[0, T=5\]"),
    ("lengths huge", dict(lengths=np.array([2**40, 1])), ValueError, "lengths must be in"),
    ("lengths uint64 huge", dict(lengths=np.array([2**63, 1], np.uint64)), ValueError,
     "lengths must be in"),
    ("lengths shape", dict(lengths=[1, 2, 3]), ValueError, r"lengths must have shape \(2,\)"),
    ("lengths scalar", dict(lengths=3), ValueError, r"lengths must have shape \(2,\)"),
    ("X None", dict(X=None), TypeError, "X must hold real numbers"),
    ("X str", dict(X="abc"), TypeError, "X must hold real numbers"),
    ("X dict", dict(X={"a": 1}), TypeError, "X must hold real numbers"),
    ("X scalar", dict(X=1.0), ValueError, "X must be 3-D"),
    ("X complex", dict(X=np.zeros((2, 5, 3), np.complex64)), TypeError, "X must hold real"),
    ("X datetime", dict(X=np.zeros((2, 5, 3), "datetime64[s]")), TypeError, "X must hold real"),
    ("X features", dict(X=np.zeros((2, 5, 4))), ValueError, "X must have 3 features"),
    ("X 2-D", dict(X=np.zeros((5, 3))), ValueError, "X must be 3-D"),
    ("time_major int", dict(time_major=1), TypeError, "time_major must be a bool"),
    ("state complex c", dict(state=("c", np.zeros((2, 99), complex))), TypeError,
     "must hold real numbers"),
    ("state complex h", dict(state=("h", np.zeros((2, 99), np.complex128))), TypeError,
     "must hold real numbers"),
    ("state object", dict(state=("h", np.array([[None] * 99] * 2))), TypeError,
     "must hold real numbers"),
    ("state strings", dict(state=("c", np.full((2, 99), "x"))), TypeError,
     "must hold real numbers"),
    ("state wrong rows", dict(state=("c", np.zeros((3, 99)))), ValueError, "must have shape"),
    ("state 1-D", dict(state=("h", np.zeros(99))), ValueError, "must have shape"),
]


def _state_value(model, part, value):
    """Give a bad state the width of the layer it replaces (99 stands for that width)."""
    if value.ndim != 2 or value.shape[1] != 99:
        return value
    layer = (model if isinstance(model, fl.LSTM) else model.backward_layer
             if isinstance(model, fl.Bidirectional) else model.layers[-1].backward_layer)
    width = layer.hidden_size if part == "c" else layer.output_size
    return np.resize(value, (value.shape[0], width))


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("case", CALL_CASES, ids=[c[0] for c in CALL_CASES])
def test_call_errors_every_model(model_name, case, no_kernel):
    _, kwargs, exc, match = case
    model = MODELS[model_name]()
    kwargs = dict(kwargs)
    X = kwargs.pop("X", X0)
    if "state" in kwargs:
        part, value = kwargs.pop("state")
        kwargs["initial_state"] = _bad_state(model, N0, part, _state_value(model, part, value))
    with pytest.raises(exc, match=match):
        model(X, **kwargs)
    assert not no_kernel


@pytest.mark.parametrize("model_name", ["LSTM", "MultiLSTM"])
@pytest.mark.parametrize("bad", ["complex", "shape", "object"])
def test_step_state_errors(model_name, bad, no_kernel):
    model = _lstm() if model_name == "LSTM" else fl.MultiLSTM(
        [fl.LSTM(I, H, random_state=0), fl.LSTM(H, 2, random_state=1)])
    last = model if model_name == "LSTM" else model.layers[-1]
    value = {"complex": np.zeros((2, last.output_size), complex),
             "shape": np.zeros((2, last.output_size + 1)),
             "object": np.array([[object()] * last.output_size] * 2)}[bad]
    state = (np.zeros((2, last.hidden_size)), value)
    if model_name == "MultiLSTM":
        state = (model.layers[0].zero_state(2), state)
    with pytest.raises((TypeError, ValueError), match=r"state.*h"):
        model.step(np.zeros((2, I)), state)
    assert not no_kernel


# -- non-finite values ------------------------------------------------------------------


def _poison(X, kind, row, t):
    X = X.copy()
    X[row, t, 0] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[kind]
    if kind == "inf":
        X[row, t, 1] = -np.inf  # +inf and -inf in one row: inf - inf = nan in the gemm
    return X


def _assert_rows(Y, clean, reference, bad_rows, axis=0):
    """Rows other than ``bad_rows`` equal the clean run bit for bit; the bad rows equal the
    reference, NaN where it has NaN."""
    good = np.ones(Y.shape[axis], bool)
    good[list(bad_rows)] = False
    np.testing.assert_array_equal(np.compress(good, Y, axis), np.compress(good, clean, axis))
    np.testing.assert_allclose(Y, reference, rtol=1e-5, atol=2e-6, equal_nan=True)


# kernel paths: the layers' test hook when this build has one (see tests/test_paths.py)
PATHS = ["auto"] + (["blas", "small", "packed-rows", "packed-units"]
                    if hasattr(layers_mod, "_FORCE_PATH") else [])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference meets NaN
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("kind", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("N", [5, 64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("path", ["projection"] + PATHS)
def test_non_finite_input_stays_in_its_row(n_threads, kind, N, reverse, path, monkeypatch):
    rng = np.random.default_rng(N)
    proj = 6 if path == "projection" else None
    layer = randomize(fl.LSTM(8, 32, peepholes=True, proj_size=proj, n_threads=n_threads,
                              dtype=np.float64, random_state=0), rng)
    if path not in ("projection", "auto"):
        monkeypatch.setattr(layers_mod, "_FORCE_PATH", path)
    if N == 64 and path == "projection":
        assert layer._chunks_for(N) > 1, "the big batch must take the row-block path"
    X = rng.normal(size=(N, 6, 8))
    L = rng.integers(2, 7, size=N)
    bad = [N // 2, N - 1]  # in the middle of a row block and at the very end
    Xp = X
    for row in bad:
        Xp = _poison(Xp, kind, row, 1)
    clean, cs = layer(X, lengths=L, reverse=reverse)
    Y, s = layer(Xp, lengths=L, reverse=reverse)
    Yr, (cr, hr) = ref.lstm_forward(Xp, ref_params(layer), lengths=L, reverse=reverse,
                                    **ref_options(layer))
    _assert_rows(Y, clean, Yr, bad)
    _assert_rows(s.c, cs.c, cr, bad)
    _assert_rows(s.h, cs.h, hr, bad)
    if kind == "nan":
        assert all(np.isnan(s.h[row]).all() for row in bad)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference meets NaN
@pytest.mark.parametrize("n_threads", [1, 2])
def test_non_finite_initial_state_stays_in_its_row(n_threads):
    rng = np.random.default_rng(1)
    layer = randomize(fl.LSTM(8, 16, n_threads=n_threads, random_state=0), rng)
    N = 48
    X = rng.normal(size=(N, 4, 8))
    c0 = rng.normal(size=(N, 16))
    h0 = rng.normal(size=(N, 16))
    clean, _ = layer(X, initial_state=(c0, h0))
    c0[7, 3] = np.nan
    h0[30, 0] = np.inf
    Y, _ = layer(X, initial_state=(c0, h0))
    Yr, _ = ref.lstm_forward(X.astype(np.float32).astype(np.float64), ref_params(layer),
                             initial_state=(c0.astype(np.float32), h0.astype(np.float32)))
    _assert_rows(Y, clean, Yr, [7, 30])
    assert np.isnan(Y[7, 0, 3]) and np.isnan(Y[7, 1:]).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference meets NaN
@pytest.mark.parametrize("n_threads", [1, 2])
def test_non_finite_rows_in_stacks_time_major_and_step(n_threads):
    rng = np.random.default_rng(2)
    stack = fl.MultiLSTM([randomize(fl.LSTM(8, 16, n_threads=n_threads, random_state=0), rng),
                          fl.Bidirectional(
                              randomize(fl.LSTM(16, 8, n_threads=n_threads, random_state=1), rng),
                              randomize(fl.LSTM(16, 8, n_threads=n_threads, random_state=2), rng))])
    N = 40
    X = rng.normal(size=(N, 5, 8))
    L = rng.integers(1, 6, size=N)
    Xp = _poison(X, "nan", 11, 0)
    clean, _ = stack(np.swapaxes(X, 0, 1), lengths=L, time_major=True)
    Y, _ = stack(np.swapaxes(Xp, 0, 1), lengths=L, time_major=True)
    Yr, _ = ref.stack_forward(Xp.astype(np.float32).astype(np.float64), reference_stack(stack),
                              lengths=L)
    _assert_rows(Y, clean, np.swapaxes(Yr, 0, 1), [11], axis=1)
    assert np.isnan(Y[: L[11], 11]).all()  # the backward half carries it to every step

    plain = fl.MultiLSTM([randomize(fl.LSTM(8, 16, n_threads=n_threads, random_state=3), rng),
                          randomize(fl.LSTM(16, 4, n_threads=n_threads, random_state=4), rng)])
    x = rng.normal(size=(N, 8))
    clean, _ = plain.step(x)
    x[5, 2] = np.nan
    out, states = plain.step(x)
    assert np.isnan(out[5]).all()
    np.testing.assert_array_equal(np.delete(out, 5, 0), np.delete(clean, 5, 0))


def test_nan_input_is_not_written_back():
    X = np.full((2, 3, I), np.nan)
    before = X.copy()
    _lstm()(X)
    np.testing.assert_array_equal(X, before)


# -- empty batch, T = 0 ------------------------------------------------------------------


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("time_major", [False, True])
def test_empty_batch_and_no_time(model_name, time_major):
    model = MODELS[model_name]()
    Hout = model.output_size
    # empty batch, with and without lengths
    X = np.zeros((5, 0, I)) if time_major else np.zeros((0, 5, I))
    for lengths in (None, np.zeros(0, np.int64)):
        Y, states = model(X, lengths=lengths, time_major=time_major)
        assert Y.shape == ((5, 0, Hout) if time_major else (0, 5, Hout))
        assert Y.dtype == model.dtype
    # T = 0: the output is empty and the state is the initial state
    X = np.zeros((0, 3, I)) if time_major else np.zeros((3, 0, I))
    s0 = model.zero_state(3)
    rng = np.random.default_rng(0)
    s0 = _map_state(s0, lambda a: rng.normal(size=a.shape).astype(a.dtype))
    for lengths in (None, [0, 0, 0]):
        Y, states = model(X, initial_state=s0, lengths=lengths, time_major=time_major)
        assert Y.shape == ((0, 3, Hout) if time_major else (3, 0, Hout))
        for got, want in zip(_leaves(states), _leaves(s0)):
            np.testing.assert_array_equal(got, want)
            assert got is not want  # a copy, never the caller's array


def _leaves(state):
    if isinstance(state, np.ndarray):
        return [state]
    return [a for part in state for a in _leaves(part)]


def _map_state(state, fn):
    if isinstance(state, np.ndarray):
        return fn(state)
    out = [_map_state(part, fn) for part in state]
    return fl.LSTMState(*out) if isinstance(state, fl.LSTMState) else tuple(out)


def test_all_lengths_zero_returns_initial_state():
    stack = _stack()
    s0 = _map_state(stack.zero_state(3), lambda a: np.full(a.shape, 0.25, a.dtype))
    Y, states = stack(np.ones((3, 4, I)), initial_state=s0, lengths=[0, 0, 0])
    assert not Y.any()
    for got, want in zip(_leaves(states), _leaves(s0)):
        np.testing.assert_array_equal(got, want)


def test_empty_step():
    stack = fl.MultiLSTM([fl.LSTM(I, H, random_state=0), fl.LSTM(H, 2, random_state=1)])
    out, states = stack.step(np.zeros((0, I)))
    assert out.shape == (0, 2) and states[0].c.shape == (0, H)


# -- sizes beyond 32-bit BLAS integers (broadcast views: no memory behind them) ----------


def _huge(shape, dtype=np.float32):
    return np.broadcast_to(np.zeros((1,) * len(shape), dtype), shape)


BLAS_CASES = [
    ("batch*time", (2**16, 2**15 + 1, I), False),
    ("batch*time time-major", (2**15 + 1, 2**16, I), True),
    ("batch*features", (2**30, 1, I), False),
    ("batch*features time-major", (1, 2**30, I), True),
]


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("case", BLAS_CASES, ids=[c[0] for c in BLAS_CASES])
def test_sizes_beyond_32_bit_blas_are_refused(model_name, case, no_kernel):
    what, shape, time_major = case
    model = MODELS[model_name]()
    product = re.escape(what.split()[0])    # the product named is the one too large
    with pytest.raises(ValueError, match=rf"X of shape .* is too large: {product} = .*2\*\*31"):
        model(_huge(shape), time_major=time_major)


def test_step_batch_beyond_32_bit_is_refused(no_kernel):
    with pytest.raises(ValueError, match=r"x of shape \(2147483648, 3\) is too large"):
        _lstm().step(_huge((2**31, I)))


@pytest.mark.parametrize("kwargs", [dict(hidden_size=2**29), dict(hidden_size=4, proj_size=2**29),
                                    dict(input_size=2**29, hidden_size=4)])
def test_layer_sizes_beyond_32_bit_are_refused(kwargs):
    kwargs = dict(dict(input_size=I), **kwargs)
    with pytest.raises(ValueError, match="too large for 32-bit BLAS"):
        fl.LSTM(**kwargs)


# -- absurd sizes: MemoryError with the estimate, before touching memory -----------------


def _rss():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        return 0


# Tens of TiB for outputs: more than any machine has.  Wide outputs come from a projection,
# so that the layers themselves stay small and quick to build.
ABSURD = [
    ("LSTM", lambda: fl.LSTM(I, 4, proj_size=8192), (2**15, 2**15, I), False),
    ("LSTM time-major", lambda: fl.LSTM(I, 4, proj_size=8192), (2**15, 2**15, I), True),
    ("Bidirectional", lambda: fl.Bidirectional(fl.LSTM(I, 4, proj_size=4096),
                                               fl.LSTM(I, 4, proj_size=4096)),
     (2**15, 2**15, I), False),
    ("MultiLSTM", lambda: fl.MultiLSTM([fl.LSTM(I, 4), fl.LSTM(4, 4, proj_size=8192)]),
     (2**15, 2**15, I), False),
]


@pytest.mark.parametrize("case", ABSURD, ids=[c[0] for c in ABSURD])
def test_absurd_sizes_raise_memory_error_before_allocating(case, no_kernel):
    _, make, shape, time_major = case
    model = make()
    rss = _rss()
    with pytest.raises(MemoryError, match=r"X of shape \(32768, 32768, 3\) needs about "
                                          r"[0-9.]+ GiB \(\d+ bytes\)"):
        model(_huge(shape), time_major=time_major)
    assert _rss() - rss < 64 << 20, "memory was touched before the MemoryError"


def test_absurd_step_raises_memory_error_before_allocating(no_kernel):
    rss = _rss()
    # (batch*features below 2**31: a wider x is a ValueError first, as in a call)
    with pytest.raises(MemoryError, match=r"x of shape \(1073741824, 1\) needs about"):
        fl.LSTM(1, 4, proj_size=8192).step(_huge((2**30, 1)))
    with pytest.raises(ValueError, match=r"batch\*features = 3221225472"):
        fl.LSTM(I, 4, proj_size=8192).step(_huge((2**30, I)))
    assert _rss() - rss < 64 << 20


def test_memory_estimate(monkeypatch, no_kernel):
    """The estimate counts the input copy (only when one is needed) and the outputs."""
    layer = _lstm()
    N, T = 4, 8
    itemsize = 4
    contiguous = np.zeros((N, T, I), np.float32)
    need_copy = np.zeros((N, T, I), np.float64)
    out_bytes = N * T * layer.output_size * itemsize
    copy_bytes = N * T * I * itemsize
    monkeypatch.setattr(layers_mod, "_PHYS_MEMORY", out_bytes + copy_bytes - 1)
    with pytest.raises(MemoryError, match=rf"\({out_bytes + copy_bytes} bytes\)"):
        layer(need_copy)
    with pytest.raises(AssertionError, match="a kernel ran"):  # fits: reaches the kernel
        layer(contiguous)


def test_absurd_layer_sizes_raise_memory_error():
    with pytest.raises(MemoryError):
        fl.LSTM(I, 2**28)  # 4H fits 32-bit BLAS, the parameters (1 EiB) do not fit anywhere


# -- thread arguments --------------------------------------------------------------------


@pytest.mark.parametrize("value,exc", [(0, ValueError), (1.0, TypeError), ("2", TypeError),
                                       (True, TypeError), ([2], TypeError), (2j, TypeError)])
def test_bad_n_threads_everywhere(value, exc):
    with pytest.raises(exc, match="n_threads"):
        fl.LSTM(I, H, n_threads=value)
    with pytest.raises(exc, match="n_threads"):
        fl.set_n_threads(value)
    layer = _lstm()
    with pytest.raises(exc, match="n_threads"):
        layer.n_threads = value  # refused when set, not at the next call
    assert layer.n_threads is None
    with pytest.raises(exc, match="n_threads"):
        _threads.resolve_n_threads(value)


def test_accepted_n_threads():
    X = np.random.default_rng(0).normal(size=(64, 3, I))
    expected, _ = fl.LSTM(I, 32, random_state=0)(X)
    for value in (1, 2, -1, -1000, 1000, np.int64(2), np.int32(-1)):
        layer = fl.LSTM(I, 32, random_state=0, n_threads=value)
        assert 1 <= _threads.resolve_n_threads(value)
        Y, _ = layer(X)
        np.testing.assert_array_equal(Y, expected)
    old = _threads._state["default"]
    try:
        fl.set_n_threads(-1)
        assert fl.get_n_threads() >= 1
    finally:
        fl.set_n_threads(old)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_reads_big_endian_input_and_state(dtype):
    """One step on big-endian x and (c, h) of the layer's dtype: the small-step path read
    the swapped bytes as native ones (0.83 off) and returned a big-endian state."""
    layer = fl.LSTM(I, H, random_state=0, dtype=dtype, peepholes=True)
    layer.peepholes[...] = np.random.default_rng(2).normal(size=(3, H))
    rng = np.random.default_rng(3)
    x, c, h = rng.normal(size=(2, I)), rng.normal(size=(2, H)), rng.normal(size=(2, H))
    big = np.dtype(dtype).newbyteorder(">")
    out, state = layer.step(x.astype(big), (c.astype(big), h.astype(big)))
    want, c_want = fl.reference.lstm_step(x, c, h, {k: v.astype(np.float64)
                                                    for k, v in layer.params.items()})
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(out, want, **tol)
    np.testing.assert_allclose(state.c, c_want, **tol)
    for a in (out, state.c, state.h):
        assert a.dtype == np.dtype(dtype) and a.dtype.isnative
    stack = fl.MultiLSTM([fl.LSTM(I, H, random_state=0, dtype=dtype),
                          fl.LSTM(H, 2, random_state=1, dtype=dtype)])
    native = stack.step(x.astype(dtype))
    swapped = stack.step(x.astype(big))
    np.testing.assert_array_equal(swapped[0], native[0])
