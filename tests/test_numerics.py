"""Numerics: float32 against float64 on long saturating sequences; denormal inputs.

With |x| up to 1e4 every gate saturates, exp() would overflow without care, and 10 000
steps give rounding errors room to pile up in the cell state.  The float32 model must stay
within 1e-5 of the float64 model holding the same weights.

At |x| = 1e4 the float32 input projection ``x @ W`` alone is only good to about 1e-3
(float32 spacing at 1e4), whatever the implementation; the main test therefore uses
integer inputs and weights on a 1/64 grid, whose products and sums float32 holds exactly,
so that the difference measures what the kernel itself adds: activations, the recurrent
product, the state update and clipping over 10 000 steps.  A second test keeps
unrestricted weights and checks the error against that input-rounding bound.
"""

import numpy as np
import pytest
from conftest import ref, ref_options, ref_params

import fastlstm as fl

T_LONG = 10_000
N, I, H = 4, 4, 16

OPTIONS = {
    "plain": {},
    "peepholes_cell_clip": dict(peepholes=True, cell_clip=50.0),
    "projection": dict(proj_size=6, proj_clip=3.0),
    "hard_sigmoid": dict(recurrent_activation="hard_sigmoid", peepholes=True),
    "sigmoid_act": dict(activation="sigmoid"),
}


def _saturating_inputs(seed, shape):
    """Integers with log-uniform magnitudes in [1, 1e4] and random signs."""
    rng = np.random.default_rng(seed)
    magnitude = 10 ** rng.uniform(0, 4, size=shape)
    magnitude.flat[::101] = 1e4  # the extreme itself, often
    return np.round(np.sign(rng.normal(size=shape)) * magnitude)


def _pair(options, seed, grid=True):
    """A float32 layer and a float64 layer with the same weights."""
    rng = np.random.default_rng(seed)
    l32 = fl.LSTM(I, H, random_state=seed, **options)
    for value in l32.params.values():
        value[...] = rng.normal(scale=0.4, size=value.shape)
        if grid:
            value[...] = np.round(value * 64) / 64
    l64 = fl.LSTM(I, H, dtype=np.float64, random_state=seed, **options)
    l64.flat_params[...] = l32.flat_params
    np.testing.assert_array_equal(l64.flat_params, l32.flat_params)
    return l32, l64


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("reverse", [False, True])
def test_float32_tracks_float64_on_long_saturating_sequences(option, reverse):
    l32, l64 = _pair(OPTIONS[option], seed=len(option))
    X = _saturating_inputs(1, (N, T_LONG, I))
    assert np.abs(X).max() == 1e4 and np.abs(X).min() >= 1
    L = np.array([T_LONG, T_LONG - 1, T_LONG // 2, 7])
    s0 = (np.full((N, H), 0.5), np.full((N, l32.output_size), -0.25))
    Y32, s32 = l32(X.astype(np.float32), initial_state=s0, lengths=L, reverse=reverse)
    Y64, s64 = l64(X, initial_state=s0, lengths=L, reverse=reverse)
    assert np.isfinite(Y32).all() and np.isfinite(s32.c).all()
    np.testing.assert_allclose(Y32, Y64, rtol=0, atol=1e-5)
    np.testing.assert_allclose(s32.h, s64.h, rtol=0, atol=1e-5)
    # the cell state is unbounded without a clip: compare relative to its size
    np.testing.assert_allclose(s32.c, s64.c, rtol=1e-5, atol=1e-5)


def test_perfect_memory_cell_over_10000_steps():
    """Forget gate pinned open (f = 1): the cell sums 10 000 terms and grows to thousands.

    Float32 then holds c to its own spacing at that size, so c is compared relatively, and
    the outputs to within that spacing (eps32 * max |c|), which is all float32 can give.
    """
    l32, l64 = _pair({}, seed=11)
    for layer in (l32, l64):
        layer.W[:, H:2 * H] = 0
        layer.U[:, H:2 * H] = 0
        layer.b[H:2 * H] = 30.0
    X = _saturating_inputs(4, (N, T_LONG, I))
    Y32, s32 = l32(X.astype(np.float32))
    Y64, s64 = l64(X)
    assert np.abs(s64.c).max() > 100  # the state really accumulated
    np.testing.assert_allclose(s32.c, s64.c, rtol=1e-5)
    np.testing.assert_allclose(Y32, Y64, rtol=0,
                               atol=np.finfo(np.float32).eps * np.abs(s64.c).max())


def test_float64_long_saturating_sequence_matches_reference():
    """The float64 side of the comparison is itself right (NumPy reference, 10 000 steps)."""
    _, l64 = _pair(OPTIONS["peepholes_cell_clip"], seed=3)
    X = _saturating_inputs(2, (2, T_LONG, I))
    with np.errstate(over="ignore"):
        Yr, (cr, hr) = ref.lstm_forward(X, ref_params(l64), **ref_options(l64))
    Y, s = l64(X)
    np.testing.assert_allclose(Y, Yr, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s.c, cr, rtol=1e-10, atol=1e-12)


def test_float32_error_with_arbitrary_weights_is_input_rounding_only():
    """Unrestricted weights: the float32 error stays within what rounding x @ W to float32
    allows (a gate's slope is at most 1/4 ... 1, so the output error is at most about the
    rounding of the largest pre-activation, eps32 * sum |x| |W|)."""
    l32, l64 = _pair(OPTIONS["plain"], seed=5, grid=False)
    X = _saturating_inputs(3, (N, T_LONG, I)).astype(np.float32)
    Y32, _ = l32(X)
    Y64, _ = l64(X.astype(np.float64))
    assert np.isfinite(Y32).all()
    bound = np.finfo(np.float32).eps * float((np.abs(X) @ np.abs(l64.W)).max())
    assert np.abs(Y32 - Y64).max() <= bound
    assert np.mean(np.abs(Y32 - Y64) > 1e-5) < 1e-3  # and only rarely above 1e-5


def test_extreme_inputs_give_finite_saturated_outputs():
    """|x| up to the float32 maximum: no overflow to inf/NaN inside the activations."""
    for dtype in (np.float32, np.float64):
        layer = fl.LSTM(I, H, dtype=dtype, random_state=0, peepholes=True)
        big = np.finfo(np.float32).max / 16
        X = np.array([big, -big, 1e30, -1e30], dtype)[None, None, :].repeat(3, 1)
        Y, s = layer(X)
        assert np.isfinite(Y).all() and np.isfinite(s.c).all()
        assert np.abs(Y).max() <= 1.0
        with np.errstate(over="ignore", invalid="ignore"):
            Yr, _ = ref.lstm_forward(X.astype(np.float64), ref_params(layer))
        np.testing.assert_allclose(Y, Yr, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("path", ["small", "blas", "packed-rows", "packed-units", "step"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ["linear", "relu"])
def test_gates_far_below_zero_are_exactly_closed(monkeypatch, path, dtype, activation):
    """sigmoid(z) far below -88 (float32) / -709 (float64) is 0, as in the reference, torch
    and NumPy: not a floor of ~6e-39 / 1e-308, which an unbounded activation of a huge
    candidate value multiplied up to O(1) (i * g with z_i = -x, g = x = 1e38: c = 0.6)."""
    from fastlstm import _forward, layers

    huge = 1e38 if dtype == np.float32 else 1e300
    isas = list(range(_forward.packed_isa(-1) + 1))
    rng = np.random.default_rng(5)
    H, N, T = 20, 7, 3
    layer = fl.LSTM(2, H, dtype=dtype, activation=activation, random_state=0, n_threads=2)
    # z_i = -x0, z_f = 0, z_g = -x0 (linear/relu: |g| up to 1e38), z_o = x1 (o = 1 or 0)
    layer.W[...] = 0
    layer.W[0, :H] = -1
    layer.W[0, 2 * H:3 * H] = -1
    layer.W[1, 3 * H:] = 1
    layer.U[...] = rng.normal(scale=0.1, size=layer.U.shape)
    layer.b[...] = 0
    X = np.zeros((N, T, 2), dtype)
    X[:, :, 0] = rng.choice([-huge, -1e20, -100.0, -88.8, -88.5, 3.0, 1e20, huge], (N, T))
    X[:, :, 1] = 50.0
    with np.errstate(over="ignore", invalid="ignore"):
        Yr, (cr, hr) = ref.lstm_forward(X.astype(np.float64), ref_params(layer),
                                        activation=activation)
    monkeypatch.setattr(layers, "_FORCE_PATH", None if path == "step" else path)
    try:
        for isa in isas:
            _forward.packed_isa(isa)
            if path == "step":
                state, ys = layer.zero_state(N), []
                for t in range(T):
                    y, state = layer.step(X[:, t], state)
                    ys.append(y)
                Y, (c, h) = np.stack(ys, 1), state
            else:
                Y, (c, h) = layer(X)
            assert np.isfinite(Y).all() and np.isfinite(c).all()
            # states reach ~100 (relu): float32 keeps about 1e-5 of them through h @ U
            tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10,
                                                                                atol=1e-12)
            np.testing.assert_allclose(c, cr, **tol)
            np.testing.assert_allclose(Y, Yr, **tol)
    finally:
        _forward.packed_isa(-1)


@pytest.mark.parametrize("path", ["small", "blas", "packed-rows", "packed-units"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_near_exp_overflow(monkeypatch, path, dtype):
    """Across the top of exp's range (where it turns to +inf) a gate stays in [0, 1],
    finite, and within one subnormal step of the exact value: c = i = sigmoid(z)."""
    from fastlstm import _forward, layers

    zs = np.linspace(-89.5, -80, 801) if dtype == np.float32 else np.linspace(-711, -700, 801)
    layer = fl.LSTM(1, 1, dtype=dtype, random_state=0)
    layer.W[...] = [[1.0, 0.0, 0.0, 0.0]]          # z_i = x
    layer.U[...] = 0
    layer.b[...] = [0.0, -1000.0, 50.0, 50.0]      # f = 0, g = o = 1
    X = zs.astype(dtype)[:, None, None]
    with np.errstate(over="ignore"):
        exact = 1 / (1 + np.exp(-X[:, 0, 0].astype(np.float64)))
    monkeypatch.setattr(layers, "_FORCE_PATH", path)
    try:
        for isa in range(_forward.packed_isa(-1) + 1):
            _forward.packed_isa(isa)
            _, (c, _) = layer(X)
            assert np.isfinite(c).all() and (c >= 0).all() and (c <= 1).all()
            np.testing.assert_allclose(c[:, 0], exact, rtol=1e-6 if dtype == np.float32
                                       else 1e-14, atol=5e-39 if dtype == np.float32
                                       else 1e-308)
            assert (c[zs < (-88.4 if dtype == np.float32 else -709.5), 0] == 0).all()
    finally:
        _forward.packed_isa(-1)


@pytest.mark.parametrize("path", ["small", "blas", "packed-rows", "packed-units", "step",
                                  "training"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_is_relatively_accurate_near_zero(monkeypatch, path, dtype):
    """tanh(x) ~ x near 0 to a few ulp, as NumPy and TF give it: written as
    (1 - e^-2|x|) / (1 + e^-2|x|) it lost all relative precision there (float32 tanh(1e-7)
    was 11 % off and 0 below 1e-8), so small cell states and outputs came out as 0.
    Gates i = o = 1, f = 0 and z_g = x make c = tanh(x) and h = tanh(tanh(x))."""
    from fastlstm import _forward, layers

    rng = np.random.default_rng(8)
    tiny = 1e-30 if dtype == np.float32 else 1e-300
    mags = np.geomspace(tiny, 20.0, 1200)
    x = (mags * rng.choice([-1.0, 1.0], mags.size)).astype(dtype)
    layer = fl.LSTM(1, 1, dtype=dtype, random_state=0)
    layer.W[...] = [[0.0, 0.0, 1.0, 0.0]]          # z_g = x
    layer.U[...] = 0
    layer.b[...] = [50.0, -1000.0, 0.0, 50.0]      # i = o = 1, f = 0
    X = np.repeat(x[:, None, None], 2, axis=1)     # two steps: c_prev = tanh(x), then f = 0
    x64 = x.astype(np.float64)
    want_c, want_h = np.tanh(x64), np.tanh(np.tanh(x64))
    rtol = 4 * np.finfo(dtype).eps
    monkeypatch.setattr(layers, "_FORCE_PATH", path if path in ("small", "blas", "packed-rows",
                                                                "packed-units") else None)
    try:
        for isa in range(_forward.packed_isa(-1) + 1):
            _forward.packed_isa(isa)
            if path == "step":
                state = layer.zero_state(x.size)
                for t in range(2):
                    h, state = layer.step(X[:, t], state)
                c = state.c
            elif path == "training":
                Y, (c, h), cache = layer.forward(X)
                # the backward reads tanh(c) too: d h / d x = (1 - tanh^2(tanh x)) (1 - tanh^2 x)
                dX = layer.backward(np.stack([np.zeros_like(x), np.ones_like(x)], 1)[:, :, None],
                                    cache)[0]
                # (1 - y^2 from y, as torch does it: absolute accuracy where y ~ 1)
                want_dx = (1 - want_h ** 2) * (1 - want_c ** 2)
                np.testing.assert_allclose(dX[:, 1, 0], want_dx, rtol=rtol, atol=rtol)
            else:
                Y, (c, h) = layer(X)
            np.testing.assert_allclose(c[:, 0], want_c, rtol=rtol, atol=0)
            np.testing.assert_allclose(h[:, 0], want_h, rtol=rtol, atol=0)
    finally:
        _forward.packed_isa(-1)


@pytest.mark.parametrize("path", ["small", "blas", "packed-rows", "packed-units", "step"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_state_and_input_give_positive_zero(monkeypatch, path, dtype):
    """tanh(+0) is +0 (NumPy, torch): the quotient in the tanh and in sigmoid * tanh is -0
    there, and h came out as -0.0 for a zero cell state."""
    from fastlstm import _forward, layers

    layer = fl.LSTM(3, 20, dtype=dtype, random_state=0)
    layer.b[...] = 0
    X = np.zeros((7, 3, 3), dtype)
    monkeypatch.setattr(layers, "_FORCE_PATH", None if path == "step" else path)
    try:
        for isa in range(_forward.packed_isa(-1) + 1):
            _forward.packed_isa(isa)
            if path == "step":
                y, (c, h) = layer.step(X[:, 0], layer.zero_state(7))
            else:
                y, (c, h) = layer(X)
            for a in (y, c, h):
                assert not a.any() and not np.signbit(a).any()
    finally:
        _forward.packed_isa(-1)


@pytest.mark.parametrize("path", ["small", "blas", "packed-rows", "packed-units", "step"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rec", ["hard_sigmoid", "hard_sigmoid_keras2"])
def test_hard_sigmoid_is_relatively_accurate_above_its_lower_knee(monkeypatch, path, dtype,
                                                                   rec):
    """x / 6 + 0.5 (0.2 x + 0.5) cancels just above x = -3 (-2.5): float32 one ulp above
    the knee was 25 % (37 %) off.  c = i = rec(x) with g = o = 1, f = 0."""
    from fastlstm import _forward, layers

    knee, width = (-3.0, 6.0) if rec == "hard_sigmoid" else (-2.5, 5.0)
    x = np.nextafter(np.full(64, knee, dtype), dtype(0))
    for k in range(1, 64):                       # k ulp above the knee, then wider
        x[k] = np.nextafter(x[k - 1], dtype(0)) if k < 32 else dtype(knee) + dtype(2.0 ** -k)
    layer = fl.LSTM(1, 1, dtype=dtype, recurrent_activation=rec, random_state=0)
    layer.W[...] = [[1.0, 0.0, 0.0, 0.0]]          # z_i = x
    layer.U[...] = 0
    layer.b[...] = [0.0, -1000.0, 50.0, 50.0]      # f = 0, g = o = 1
    X = x[:, None, None]
    want = (x.astype(np.float64) - knee) / width
    monkeypatch.setattr(layers, "_FORCE_PATH", None if path == "step" else path)
    try:
        for isa in range(_forward.packed_isa(-1) + 1):
            _forward.packed_isa(isa)
            if path == "step":
                _, (c, _) = layer.step(X[:, 0], layer.zero_state(x.size))
            else:
                _, (c, _) = layer(X)
            np.testing.assert_allclose(c[:, 0], want, rtol=2 * np.finfo(dtype).eps, atol=0)
    finally:
        _forward.packed_isa(-1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_derivative_keeps_relative_accuracy_where_tanh_nears_one(dtype):
    """The backward's tanh'(x) = 1 - y^2 from y = tanh(x): written so, it cancels as |y|
    nears 1 (float64 2e-10 relative at x = 8.3, growing towards 1e-2); (1 - y)(1 + y)
    does not.  Peepholes (all zero) send the backward through its general code; without
    them, same maths, through the vector code.  One step with i = o = 1, f = 0:
    c = tanh(x), h = tanh(c), dh/dx = (1 - h^2)(1 - c^2), from the kernel's own c and h."""
    x = np.linspace(3.0, 9.0 if dtype == np.float64 else 4.5, 200).astype(dtype)
    for peep in (True, False):
        layer = fl.LSTM(1, 1, dtype=dtype, peepholes=peep, random_state=0)
        layer.W[...] = [[0.0, 0.0, 1.0, 0.0]]      # z_g = x
        layer.U[...] = 0
        layer.b[...] = [50.0, -1000.0, 0.0, 50.0]
        Y, (c, h), cache = layer.forward(x[:, None, None])
        got = layer.backward(np.ones_like(Y), cache)[0][:, 0, 0]
        c64, h64 = c[:, 0].astype(np.float64), h[:, 0].astype(np.float64)
        want = (1 - h64) * (1 + h64) * (1 - c64) * (1 + c64)
        np.testing.assert_allclose(got, want, rtol=8 * np.finfo(dtype).eps, atol=0,
                                   err_msg=f"peepholes={peep}")


# -- denormals ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_denormal_inputs_and_state_are_correct(dtype, n_threads):
    tiny = np.finfo(dtype).tiny  # smallest normal; the values below are subnormal
    rng = np.random.default_rng(0)
    layer = fl.LSTM(I, 32, dtype=dtype, random_state=0, peepholes=True, n_threads=n_threads)
    for value in layer.params.values():
        value[...] = rng.normal(scale=0.5, size=value.shape)
    Nd = 40
    X = rng.uniform(-1, 1, size=(Nd, 6, I)) * tiny * 2.0 ** -rng.integers(1, 20, size=(Nd, 6, I))
    X = X.astype(dtype)
    assert (np.abs(X[X != 0]) < tiny).all() and np.count_nonzero(X) > X.size // 2
    c0 = (rng.uniform(-1, 1, size=(Nd, 32)) * tiny / 8).astype(dtype)
    h0 = (rng.uniform(-1, 1, size=(Nd, 32)) * tiny / 8).astype(dtype)
    Y, s = layer(X, initial_state=(c0, h0))
    Yr, (cr, hr) = ref.lstm_forward(X.astype(np.float64), ref_params(layer),
                                    initial_state=(c0.astype(np.float64), h0.astype(np.float64)),
                                    **ref_options(layer))
    tol = dict(rtol=1e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(Y, Yr, **tol)
    np.testing.assert_allclose(s.c, cr, **tol)
    # steps with denormal state and input
    out, st = layer.step(X[:, 0], (c0, h0))
    np.testing.assert_allclose(out, Yr[:, 0], **tol)


def test_denormal_results_are_kept_outside_the_kernels():
    """Flush-to-zero, if a kernel sets it, must not leak into the caller's thread."""
    dtype = np.float32
    tiny = np.finfo(dtype).tiny
    layer = fl.LSTM(I, 32, random_state=0)
    layer(np.full((64, 4, I), tiny / 4, dtype))
    layer.step(np.full((2, I), tiny / 4, dtype))
    a = np.full(64, tiny, dtype)
    assert (a * dtype(0.25) > 0).all()               # a subnormal result is not flushed
    assert (np.full(64, tiny / 4, dtype) * dtype(2) > 0).all()  # nor a subnormal operand
