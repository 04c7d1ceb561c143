"""Every forward kernel path against the NumPy reference, and thread-count invariance.

Paths (forced through ``fastlstm.layers._FORCE_PATH``, a test hook):
  "blas"          per-step BLAS gemm kernel (``_forward.forward``)
  "packed-rows"   packed-weight kernel, threads own blocks of batch rows
  "packed-units"  packed-weight kernel, threads own blocks of hidden units (barrier per step)
and the packed kernel's two instruction sets (AVX2 + FMA when the CPU has it, baseline).
Also: 1 and 2 threads give bit-identical results on every path, the training cache made
by the packed kernel gives the reference gradients, and the peak memory of a long
sequence does not grow with T beyond the output itself.
"""

import io
import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import _forward, layers
from fastlstm import reference as ref

from conftest import isa_params, path_layer, ref_options

PATHS = ["blas", "packed-rows", "packed-units"]
TOL = {np.float32: 2e-5, np.float64: 1e-11}


# shapes: the edge cases of the packed kernel (one unit, a partial last panel of units,
# row counts around its 6-row tile, 4-row tiles (computed across gates), a single step)
# and of the BLAS kernel's row blocks
SHAPES = [(1, 1, 6, 4), (2, 3, 6, 5), (7, 4, 3, 17), (13, 3, 9, 33), (6, 5, 1, 1),
          (12, 2, 16, 40), (8, 3, 7, 20), (1, 5, 9, 33)]
OPTIONS = [
    {},
    {"peepholes": True, "cell_clip": 0.4},
    {"activation": "relu", "recurrent_activation": "hard_sigmoid"},
    {"activation": "sigmoid", "recurrent_activation": "hard_sigmoid_keras2",
     "peepholes": True},
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("n_threads", [1, 2])
def test_path_matches_reference(force, path, dtype, shape, n_threads):
    N, T, I, H = shape
    force(path)
    rng = np.random.default_rng(N * 1000 + T * 100 + H)
    for k, opts in enumerate(OPTIONS):
        layer = path_layer(I, H, dtype, k, n_threads=n_threads, **opts)
        X = rng.standard_normal((N, T, I)).astype(dtype)
        c0 = rng.standard_normal((N, H)).astype(dtype) * 0.5
        h0 = rng.standard_normal((N, H)).astype(dtype) * 0.5
        L = rng.integers(0, T + 1, N)
        for lengths in (None, L):
            for reverse in (False, True):
                Yr, (cr, hr) = ref.lstm_forward(X, layer.params, initial_state=(c0, h0),
                                                lengths=lengths, reverse=reverse,
                                                **ref_options(layer))
                Y, st = layer(X, initial_state=(c0, h0), lengths=lengths, reverse=reverse)
                np.testing.assert_allclose(Y, Yr, rtol=0, atol=TOL[dtype])
                np.testing.assert_allclose(st.c, cr, rtol=0, atol=TOL[dtype])
                np.testing.assert_allclose(st.h, hr, rtol=0, atol=TOL[dtype])
                Yt, _ = layer(X.transpose(1, 0, 2), initial_state=(c0, h0), lengths=lengths,
                              reverse=reverse, time_major=True)
                np.testing.assert_allclose(Yt.transpose(1, 0, 2), Yr, rtol=0,
                                           atol=TOL[dtype])


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path", ["packed-rows", "packed-units"])
def test_packed_instruction_sets(force, isa, dtype, path):
    force(path)
    assert _forward.packed_isa(isa) == isa
    rng = np.random.default_rng(7)
    for k, (N, T, I, H) in enumerate([(3, 4, 5, 21), (14, 3, 8, 35)]):
        layer = path_layer(I, H, dtype, k, peepholes=True, cell_clip=0.6, n_threads=2)
        X = rng.standard_normal((N, T, I)).astype(dtype)
        Yr, (cr, hr) = ref.lstm_forward(X, layer.params, **ref_options(layer))
        Y, st = layer(X)
        np.testing.assert_allclose(Y, Yr, rtol=0, atol=TOL[dtype])
        np.testing.assert_allclose(st.c, cr, rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("path", ["packed-rows", "packed-units"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avx512_and_avx2_give_the_same_bits(force, path, dtype):
    """The AVX-512 tiles (fl_pk_mkz: four gates at once, 512-bit vectors) compute every
    element as the same chain of multiply-adds as the AVX2 tiles, and the cell update is
    the same code: outputs, states and the training cache's gradients are bit for bit
    those of the AVX2 kernel, for row tiles of 1 to 6 rows, a partial last panel,
    variable lengths, reverse, peepholes, clip and another activation.  (A NaN may come
    out with the other sign bit: x86 propagates one NaN operand or the other by the
    instruction form.)"""
    if _forward.packed_isa(-1) < 2:
        pytest.skip("this CPU has no AVX-512")
    force(path)
    rng = np.random.default_rng(21)
    cases = [(1, 5, 3, 16, {}), (2, 4, 7, 21, dict(peepholes=True, cell_clip=0.6)),
             (9, 6, 20, 70, {}), (13, 3, 33, 35, dict(activation="relu")),
             (32, 4, 64, 128, dict(peepholes=True))]
    try:
        for N, T, I, H, kw in cases:
            layer = path_layer(I, H, dtype, N, n_threads=2, **kw)
            X = rng.standard_normal((N, T, I)).astype(dtype)
            L = rng.integers(0, T + 1, N)
            dY = rng.standard_normal((N, T, H)).astype(dtype)
            outs = []
            for isa in (1, 2):
                assert _forward.packed_isa(isa) == isa
                Y, st = layer(X)
                Yr, str_ = layer(X, lengths=L, reverse=True)
                Yt, _, cache = layer.forward(X, lengths=L)
                dX, _ = layer.backward(dY, cache)
                outs.append([Y, st.c, st.h, Yr, str_.c, str_.h, Yt, dX,
                             *(layer.grads[k].copy() for k in ("W", "U", "b"))])
            for k, (a, b) in enumerate(zip(*outs)):
                np.testing.assert_array_equal(a, b, err_msg=f"{N, T, I, H, kw} output {k}")
    finally:
        _forward.packed_isa(-1)


# Inference over whole sequences on AVX-512 runs a tile's cell update inside the next tile
# of 1 to 6 rows (fl_pk_mkzc): row blocks of 1 to 6 rows, of unequal sizes (7 rows: 3 + 4,
# 11 rows: 5 + 6), several full panels and a partial last one, one thread or two.
FUSED_SHAPES = [(1, 6, 5, 48), (2, 4, 7, 40), (3, 3, 6, 37), (7, 5, 9, 48), (8, 4, 12, 40),
                (4, 3, 5, 16), (11, 4, 6, 48), (12, 3, 5, 40)]


@pytest.mark.parametrize("path", ["packed-rows", "packed-units"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("short_blocks", [False, True])
def test_cell_update_inside_the_next_tile(force, monkeypatch, path, dtype, n_threads,
                                          short_blocks):
    """The deferred cell updates give the reference's outputs and states with every
    option (peepholes, clip, reverse, time-major, an initial state) and, where the CPU has
    AVX-512, the AVX2 kernel's bits (which has no such deferral).  A step's last update
    goes into the next step's first tile (rows, or one thread) within a time block of
    steps, so time blocks of 2-3 steps are tried too."""
    force(path)
    rng = np.random.default_rng(5)
    for k, (N, T, I, H) in enumerate(FUSED_SHAPES):
        if short_blocks:     # 2-3 steps a block: see tb in forward_packed
            monkeypatch.setattr(layers, "_PACKED_BLOCK_ELEMENTS", 2 * N * 4 * (-(-H // 16) * 16))
        for kw in ({}, dict(peepholes=True, cell_clip=0.4)):
            layer = path_layer(I, H, dtype, k, n_threads=n_threads, **kw)
            X = rng.standard_normal((N, T, I)).astype(dtype)
            s0 = (rng.standard_normal((N, H)).astype(dtype),
                  rng.standard_normal((N, H)).astype(dtype))
            runs = []
            best = _forward.packed_isa(-1)
            for isa in sorted({min(best, 1), best}):
                _forward.packed_isa(isa)
                out = []
                for reverse in (False, True):
                    Y, st = layer(X, initial_state=s0, reverse=reverse)
                    Yr, (cr, hr) = ref.lstm_forward(X, layer.params, initial_state=s0,
                                                    reverse=reverse, **ref_options(layer))
                    np.testing.assert_allclose(Y, Yr, rtol=0, atol=TOL[dtype])
                    np.testing.assert_allclose(st.c, cr, rtol=0, atol=TOL[dtype])
                    np.testing.assert_allclose(st.h, hr, rtol=0, atol=TOL[dtype])
                    Ytm, sttm = layer(np.ascontiguousarray(X.transpose(1, 0, 2)),
                                      initial_state=s0, reverse=reverse, time_major=True)
                    np.testing.assert_array_equal(Ytm.transpose(1, 0, 2), Y)
                    out += [Y, st.c, st.h, sttm.c]
                runs.append(out)
            _forward.packed_isa(-1)
            for a, b in zip(runs[0], runs[-1]):
                np.testing.assert_array_equal(a, b, err_msg=f"{N, T, I, H, kw}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_and_two_threads_identical(force, path, dtype):
    force(path)
    rng = np.random.default_rng(3)
    N, T, I, H = 24, 6, 20, 70       # several row tiles and unit panels per thread
    X = rng.standard_normal((N, T, I)).astype(dtype)
    L = rng.integers(0, T + 1, N)
    outs = []
    for nt in (1, 2):
        layer = path_layer(I, H, dtype, 0, peepholes=True, n_threads=nt)
        outs.append([layer(X)[0], layer(X, lengths=L, reverse=True)[0],
                     *layer(X, lengths=L)[1]])
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [2, 3])
def test_rows_own_copy_of_the_packed_weights(force, monkeypatch, dtype, n_threads):
    """Threads owning rows pack a whole copy of the weights each when they are small
    (_PACKED_OWN_MAX_BYTES), and share one copy, packed in parts, otherwise: both give the
    reference's results, the same bits, with lengths, reverse, peepholes, an initial state,
    partial last panels, and the training cache (forward and backward)."""
    force("packed-rows")
    rng = np.random.default_rng(8)
    for k, (N, T, I, H) in enumerate([(8, 5, 6, 37), (13, 4, 9, 16), (24, 3, 5, 70),
                                      (3, 6, 4, 8)]):
        layer = path_layer(I, H, dtype, k, peepholes=k % 2 == 0, cell_clip=0.5 if k else None,
                       n_threads=n_threads)
        X = rng.standard_normal((N, T, I)).astype(dtype)
        L = rng.integers(0, T + 1, N)
        s0 = (rng.standard_normal((N, H)).astype(dtype),
              rng.standard_normal((N, H)).astype(dtype))
        dY = rng.standard_normal((N, T, H)).astype(dtype)
        runs = []
        for own in (0, 1 << 40):
            monkeypatch.setattr(layers, "_PACKED_OWN_MAX_BYTES", own)
            out = []
            for lengths, reverse in ((None, False), (L, True)):
                Y, st = layer(X, initial_state=s0, lengths=lengths, reverse=reverse)
                Yr, (cr, hr) = ref.lstm_forward(X, layer.params, initial_state=s0,
                                                lengths=lengths, reverse=reverse,
                                                **ref_options(layer))
                np.testing.assert_allclose(Y, Yr, rtol=0, atol=TOL[dtype])
                np.testing.assert_allclose(st.c, cr, rtol=0, atol=TOL[dtype])
                np.testing.assert_allclose(st.h, hr, rtol=0, atol=TOL[dtype])
                out += [Y, st.c, st.h]
            layer.zero_grad()
            Y, st, cache = layer.forward(X, lengths=L)
            dX, _ = layer.backward(dY, cache)
            want = ref.lstm_backward(dY, X, layer.params, lengths=L, **ref_options(layer))
            tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-9,
                                                                                  atol=1e-11)
            np.testing.assert_allclose(dX, want["X"], **tol)
            np.testing.assert_allclose(layer.grads["U"], want["U"], **tol)
            runs.append(out + [Y, dX, layer.grads["W"].copy(), layer.grads["U"].copy()])
        for a, b in zip(*runs):
            np.testing.assert_array_equal(a, b, err_msg=f"{N, T, I, H}")


@pytest.mark.parametrize("path", ["packed-rows", "packed-units"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_time_blocks(force, monkeypatch, path, dtype):
    """The packed kernel computes the input products of a block of steps ahead; blocks of
    1, 3 (not dividing T) and all steps give the reference's numbers, bit-identical to each
    other and for 1 and 2 threads."""
    force(path)
    rng = np.random.default_rng(11)
    N, T, I, H = 9, 7, 13, 37
    nu = 16 if dtype == np.float32 else 8
    step_elements = N * 4 * nu * ((H + nu - 1) // nu)
    X = rng.standard_normal((N, T, I)).astype(dtype)
    L = rng.integers(0, T + 1, N)
    L[0] = T
    c0 = rng.standard_normal((N, H)).astype(dtype) * 0.5
    outs = []
    for block in (1, 3 * step_elements, 1 << 30):
        monkeypatch.setattr(layers, "_PACKED_BLOCK_ELEMENTS", block)
        for nt in (1, 2):
            layer = path_layer(I, H, dtype, 0, peepholes=True, n_threads=nt)
            res = []
            for lengths, reverse in [(None, False), (L, False), (L, True)]:
                Y, st = layer(X, initial_state=(c0, np.zeros_like(c0)), lengths=lengths,
                              reverse=reverse)
                Yr, (cr, hr) = ref.lstm_forward(X, layer.params,
                                                initial_state=(c0, np.zeros_like(c0)),
                                                lengths=lengths, reverse=reverse)
                np.testing.assert_allclose(Y, Yr, rtol=0, atol=TOL[dtype])
                np.testing.assert_allclose(st.c, cr, rtol=0, atol=TOL[dtype])
                np.testing.assert_allclose(st.h, hr, rtol=0, atol=TOL[dtype])
                res += [Y, st.c, st.h]
            outs.append(res)
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_stack_call(force, dtype):
    """A small MultiLSTM call without state or lengths goes straight to the small kernel:
    the same numbers as the general path, and the reference's."""
    rng = np.random.default_rng(5)
    stacks = [
        [path_layer(6, 4, dtype, 0), path_layer(4, 5, dtype, 1)],                     # the tutorial
        [path_layer(3, 7, dtype, 2, peepholes=True, cell_clip=0.3),
         path_layer(7, 2, dtype, 3, activation="relu", recurrent_activation="hard_sigmoid")],
        [path_layer(3, 4, dtype, 4), path_layer(4, 6, dtype, 5, proj_size=2)],        # general path
        [path_layer(2, 3, dtype, 6), path_layer(3, 1, dtype, 7), path_layer(1, 6, dtype, 8)],
    ]
    for layers_ in stacks:
        model = fl.MultiLSTM(layers_)
        for N, T in [(1, 1), (2, 3), (5, 4)]:
            X = rng.standard_normal((N, T, model.input_size)).astype(dtype)
            X0 = X.copy()
            Y, states = model(X)
            assert np.array_equal(X, X0) and Y.flags.owndata and Y.dtype == dtype
            assert type(states) is tuple and len(states) == len(layers_)
            assert all(type(st) is fl.LSTMState for st in states)
            force("small")   # the general path (a layer with a projection: BLAS)
            Yg, states_g = model(X)
            force(None)
            assert np.array_equal(Y, Yg)
            inp = X
            for layer, st, stg in zip(model.layers, states, states_g):
                assert np.array_equal(st.c, stg.c) and np.array_equal(st.h, stg.h)
                Yr, (cr, hr) = ref.lstm_forward(inp, layer.params, **ref_options(layer))
                np.testing.assert_allclose(st.c, cr, rtol=0, atol=TOL[dtype])
                np.testing.assert_allclose(st.h, hr, rtol=0, atol=TOL[dtype])
                inp = Yr.astype(dtype)
            np.testing.assert_allclose(Y, Yr, rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("N", [13, 31, 64])
def test_packed_rows_split_by_cost(force, N):
    """Threads owning rows get contiguous row blocks of equal cost (rows x steps): with one
    long row and many short or empty ones, one thread may own a single block, another
    none; every split gives the reference's results, bit-identical for 1 and 2 threads."""
    force("packed-rows")
    rng = np.random.default_rng(N)
    T, I, H = 9, 5, 19
    X = rng.standard_normal((N, T, I)).astype(np.float32)
    cases = [np.r_[T, rng.integers(0, 3, N - 1)], np.zeros(N, dtype=np.int64),
             np.where(np.arange(N) % 2 == 0, T, rng.integers(1, T // 2, N)), None]
    outs = []
    for nt in (1, 2):
        layer = path_layer(I, H, np.float32, 1, n_threads=nt)
        res = []
        for L in cases:
            Yr, (cr, hr) = ref.lstm_forward(X, layer.params, lengths=L, **ref_options(layer))
            Y, st = layer(X, lengths=L)
            np.testing.assert_allclose(Y, Yr, rtol=0, atol=TOL[np.float32])
            np.testing.assert_allclose(st.c, cr, rtol=0, atol=TOL[np.float32])
            np.testing.assert_allclose(st.h, hr, rtol=0, atol=TOL[np.float32])
            res += [Y, st.c, st.h]
        outs.append(res)
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


def test_automatic_choice_is_valid():
    """Whatever path the thresholds pick for a shape, the result is the reference's."""
    rng = np.random.default_rng(5)
    for N, T, I, H in [(1, 3, 6, 4), (8, 3, 64, 128), (32, 2, 128, 256)]:
        for proj in (None, 3):
            layer = fl.LSTM(I, H, proj_size=proj, random_state=1)
            X = rng.standard_normal((N, T, I)).astype(np.float32)
            Yr, _ = ref.lstm_forward(X, layer.params)
            np.testing.assert_allclose(layer(X)[0], Yr, rtol=0, atol=2e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_row_one_step_runs_matrix_vector_products(dtype):
    """A step of one row (beyond the small kernel) runs BLAS's matrix-vector products
    rather than packing every weight for one use; with projection too."""
    rng = np.random.default_rng(7)
    for proj in (None, 48):
        layer = fl.LSTM(96, 160, proj_size=proj, peepholes=True, random_state=2, dtype=dtype)
        assert layer._packed_plan(1, 1) is None and (proj or layer._packed_plan(1, 2))
        x = rng.standard_normal((1, 96)).astype(dtype)
        state = (rng.standard_normal((1, 160)).astype(dtype),
                 rng.standard_normal((1, layer.output_size)).astype(dtype))
        out, new = layer.step(x, state)
        Yr, (cr, hr) = ref.lstm_forward(x[:, None], layer.params, initial_state=state)
        np.testing.assert_allclose(out, Yr[:, 0], rtol=0, atol=TOL[dtype])
        np.testing.assert_allclose(new.c, cr, rtol=0, atol=TOL[dtype])
        Y, _ = layer(x[:, None], state)
        np.testing.assert_array_equal(Y[:, 0], out)


ROW_OPTIONS = OPTIONS + [{"cell_clip": 0.3}, {"peepholes": True},
                         {"activation": "linear"}]


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opts", ROW_OPTIONS, ids=lambda o: ",".join(o) or "default")
def test_one_row_step_shared_by_threads(force, isa, dtype, opts):
    """The BLAS kernel's step of one row (fl_pk_rowstep: both products and, for tanh /
    sigmoid, the vector cell update, the threads sharing the units) against the NumPy
    reference; any thread count gives the same bits, and step() those of a call on one
    step.  H = 203: a partial last vector of units (8 floats, 4 doubles), and unit ranges
    cut at multiples of 16; 4H (I + H) above the threads' threshold."""
    _forward.packed_isa(isa)
    rng = np.random.default_rng(len(opts) * 7 + isa)
    I, H = 300, 203
    assert 4 * H * (I + H) >= layers._VECMAT_MIN_THREADED
    layer = path_layer(I, H, dtype, 3, **opts)
    p = layer.params
    x = rng.standard_normal((1, I)).astype(dtype)
    state = (rng.standard_normal((1, H)).astype(dtype),
             rng.standard_normal((1, H)).astype(dtype))
    Yr, (cr, hr) = ref.lstm_forward(x[:, None], p, initial_state=state, **ref_options(layer))
    out, new = layer.step(x, state)
    np.testing.assert_allclose(out, Yr[:, 0], rtol=0, atol=TOL[dtype])
    np.testing.assert_allclose(new.c, cr, rtol=0, atol=TOL[dtype])
    assert np.array_equal(new.h, out)
    Y, st = layer(x[:, None], state)
    assert np.array_equal(Y[:, 0], out) and np.array_equal(st.c, new.c)
    act = layers.ACTIVATIONS[layer.activation]
    rec = layers.RECURRENT_ACTIVATIONS[layer.recurrent_activation]
    for nt in (1, 2, 3, 5):
        got = _forward.step_row(x, state, p["W"], p["U"], p["b"], p.get("peepholes"), act,
                                rec, layer.cell_clip, layers.LSTMState, nt)
        assert np.array_equal(got[0], out) and np.array_equal(got[1].c, new.c)
    assert np.array_equal(state[0], state[0].copy())   # (the caller's state is not written)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_row_sequences_on_the_blas_kernel(force, monkeypatch, dtype):
    """A batch of one row through the BLAS kernel: input products in blocks of steps
    (then each step's product of h), or computed within each step (blocks of one step),
    with lengths, reverse and time-major input; and the training cache it writes gives
    the reference gradients."""
    force("blas")
    rng = np.random.default_rng(5)
    T, I, H = 6, 70, 45
    # (H = 260: 4H H multiply-adds a step, threads share every step)
    for (T, I, H), block in itertools.product([(6, 70, 45), (4, 40, 260)], (1 << 22, 1)):
        X = rng.standard_normal((1, T, I)).astype(dtype)
        monkeypatch.setattr(layers, "_WORKSPACE_ELEMENTS", block)   # many steps a block, one
        for k, opts in enumerate(ROW_OPTIONS):
            layer = path_layer(I, H, dtype, k, n_threads=2, **opts)
            serial = path_layer(I, H, dtype, k, n_threads=1, **opts)
            s0 = (rng.standard_normal((1, H)).astype(dtype),
                  rng.standard_normal((1, H)).astype(dtype))
            for lengths in (None, [T - 2], [0]):
                for reverse in (False, True):
                    Yr, (cr, hr) = ref.lstm_forward(X, layer.params, initial_state=s0,
                                                    lengths=lengths, reverse=reverse,
                                                    **ref_options(layer))
                    Y, st = layer(X, initial_state=s0, lengths=lengths, reverse=reverse)
                    np.testing.assert_allclose(Y, Yr, rtol=0, atol=TOL[dtype])
                    np.testing.assert_allclose(st.c, cr, rtol=0, atol=TOL[dtype])
                    Yt, _ = layer(X.transpose(1, 0, 2), initial_state=s0, lengths=lengths,
                                  reverse=reverse, time_major=True)
                    assert np.array_equal(Yt.transpose(1, 0, 2), Y)
                    Y1, st1 = serial(X, initial_state=s0, lengths=lengths, reverse=reverse)
                    assert np.array_equal(Y1, Y) and np.array_equal(st1.c, st.c)
        layer = path_layer(I, H, np.float64, 9, peepholes=True, cell_clip=0.5)
        dY = rng.standard_normal((1, T, H))
        Xd = X.astype(np.float64)
        for lengths in (None, [T - 2]):
            layer.zero_grad()
            Y, st, cache = layer.forward(Xd, lengths=lengths)
            dX, _ = layer.backward(dY, cache)
            want = ref.lstm_backward(dY, Xd, layer.params, lengths=lengths,
                                     **ref_options(layer))
            np.testing.assert_allclose(dX, want["X"], rtol=1e-9, atol=1e-11)
            for name in ("W", "U", "b", "peepholes"):
                np.testing.assert_allclose(layer.grads[name], want[name], rtol=1e-9,
                                           atol=1e-11)


_ROW_THREADS_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import fastlstm as fl
    from fastlstm import _threads

    def os_threads():
        with open("/proc/self/status") as f:
            return next(int(v.split()[1]) for v in f if v.startswith("Threads:"))

    I, H, proj = (int(v) for v in sys.argv[1:])
    layer = fl.LSTM(I, H, proj_size=proj or None, n_threads=2, random_state=0)
    planned = layer._row_threads(1)
    x = np.ones((1, I), np.float32)
    before = os_threads()
    layer.step(x)
    print(planned, os_threads() - before, int(_threads._state["omp_used"]))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("I, H, proj", [(3300, 20, 0), (13200, 5, 0), (3300, 260, 0),
                                        (13000, 20, 20), (13000, 5, 16)])
def test_one_row_thread_plan_is_what_the_kernel_runs(I, H, proj):
    """The threads the layer plans for a step of one row (and marks the process with, for
    fork safety) are the threads the kernel starts: none when the gate columns are too few
    to share (4H < 32, or with projection products of fewer than 32 columns), although the
    multiply-adds pass the threshold."""
    if not fl.show_config(file=io.StringIO())["openmp"] or \
            layers._threads.usable_cores() < 2:
        pytest.skip("needs OpenMP and two usable cores")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    env.pop("FASTLSTM_N_THREADS", None)
    proc = subprocess.run([sys.executable, "-c", _ROW_THREADS_CHILD, str(I), str(H),
                           str(proj)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    planned, started, marked = (int(v) for v in proc.stdout.split())
    assert planned == (1 if H < 8 else 2)
    assert started == planned - 1 and marked == (planned > 1)


@pytest.mark.parametrize("path", ["packed-rows", "packed-units"])
def test_packed_training_cache_gives_reference_gradients(force, path):
    force(path)
    rng = np.random.default_rng(11)
    N, T, I, H = 5, 4, 3, 7
    layer = path_layer(I, H, np.float64, 2, peepholes=True, cell_clip=0.8, n_threads=2)
    X = rng.standard_normal((N, T, I))
    L = np.array([4, 0, 2, 3, 1])
    dY = rng.standard_normal((N, T, H))
    Y, st, cache = layer.forward(X, lengths=L)
    dX, dstate0 = layer.backward(dY, cache)
    want = ref.lstm_backward(dY, X, layer.params, lengths=L, **ref_options(layer))
    np.testing.assert_allclose(dX, want["X"], rtol=1e-9, atol=1e-11)
    for name in ("W", "U", "b", "peepholes"):
        np.testing.assert_allclose(layer.grads[name], want[name], rtol=1e-9, atol=1e-11)


_MEMORY_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import fastlstm as fl
    from fastlstm import layers

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024

    layers._FORCE_PATH = sys.argv[1]
    N, T, I, H = 4, int(sys.argv[2]), 32, 64
    layer = fl.LSTM(I, H, random_state=0, n_threads=1)
    if sys.argv[3:] == ["bidirectional"]:
        layer = fl.Bidirectional(layer, fl.LSTM(I, H, random_state=1, n_threads=1))
    X = np.ones((N, T, I), np.float32)
    layer(X[:, :50])                       # warm up: code, BLAS buffers
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                       # reset the peak (VmHWM) to the current RSS
    before = status("VmRSS")
    Y, _ = layer(X)
    print(status("VmHWM") - before - Y.nbytes)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("path", ["blas", "packed-rows"])
def test_peak_memory_does_not_grow_with_T(path):
    """Peak RSS of inference, beyond the output, is the same at T = 10 000 and 40 000."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("cannot reset the peak RSS (/proc/self/clear_refs)")
    extra = {}
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    for T in (10_000, 40_000):
        out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, path, str(T)], env=env,
                             capture_output=True, text=True, timeout=120, check=True)
        extra[T] = int(out.stdout.split()[-1])
    # the output grows by 30 MiB between the two; the workspace must not follow it
    assert extra[40_000] - extra[10_000] < 4 << 20, extra
    # and it stays within the bounded time-block workspace (16 MiB) plus slack
    assert extra[40_000] < 24 << 20, extra


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_bidirectional_peak_memory_is_one_half_beside_the_output():
    """A Bidirectional call holds one direction's output (half of its own) beside the
    joint output, plus the bounded workspace (it held both halves, then concatenated)."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("cannot reset the peak RSS (/proc/self/clear_refs)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, "packed-rows", "40000",
                          "bidirectional"], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    output = 4 * 40_000 * 128 * 4
    assert int(out.stdout.split()[-1]) < output // 2 + (24 << 20), out.stdout


def test_unit_split_many_threads_and_oversubscribed(force):
    """Threads owning hidden units wait for each other at every step (a spinning wait):
    with as many threads as panels, and with two Python threads each running a two-thread
    call (more busy threads than cores on a small machine, where the waits find their
    partner descheduled), every call finishes with the one-thread result."""
    import threading

    force("packed-units")
    rng = np.random.default_rng(5)
    I, H, T = 7, 70, 150            # 5 panels of 16 units
    X = rng.standard_normal((2, T, I)).astype(np.float32)
    base = path_layer(I, H, np.float32, 3, n_threads=1)
    want = [base(X[:1])[0], base(X)[0]]
    for nt in (2, 3, 5, 8):
        layer = path_layer(I, H, np.float32, 3, n_threads=nt)
        assert np.array_equal(layer(X[:1])[0], want[0])
        assert np.array_equal(layer(X)[0], want[1])
    layer = path_layer(I, H, np.float32, 3, n_threads=2)
    bad = []

    def work(k):
        for _ in range(15):
            if not np.array_equal(layer(X[:1 + k])[0], want[k]):
                bad.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert bad == []


def test_unit_split_backs_off(monkeypatch):
    """Calls whose unit-owning threads kept finding a partner not running make the next
    calls run on one thread for a while (doubling while it keeps happening, up to a cap,
    halving after clean calls); forced paths ignore it."""
    now = [1000.0]
    monkeypatch.setattr(layers.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(layers, "_unit_split", {"until": 0.0, "delay": 0.0})
    monkeypatch.setattr(layers._threads, "resolve_n_threads", lambda n=None: 2)
    monkeypatch.setattr(layers._threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(layers, "_FORCE_PATH", None)
    monkeypatch.setattr(layers, "_PACKED", True)
    layer = fl.LSTM(128, 128, n_threads=2)
    T = 100
    assert 4 * 128 * 256 >= layers._PACKED_MIN_STEP_WORK_UNITS
    assert layer._packed_plan(1, T) == (2, False)
    layers._unit_split_done(T // layers._UNIT_SPLIT_SLOW_SHARE, T)   # not more than 1 in 20
    assert layer._packed_plan(1, T) == (2, False)
    layers._unit_split_done(T // layers._UNIT_SPLIT_SLOW_SHARE + 1, T)
    assert layer._packed_plan(1, T) == (1, True)
    assert layer._packed_plan(8, T) == (2, True)          # rows need no per-step wait
    monkeypatch.setattr(layers, "_FORCE_PATH", "packed-units")
    assert layer._packed_plan(1, T) == (2, False)
    monkeypatch.setattr(layers, "_FORCE_PATH", None)
    now[0] += layers._UNIT_SPLIT_BACKOFF + 0.01
    assert layer._packed_plan(1, T) == (2, False)
    delays = []
    for _ in range(12):
        layers._unit_split_done(T, T)
        delays.append(layers._unit_split["delay"])
    assert delays[:3] == [2.0, 4.0, 8.0] and max(delays) == layers._UNIT_SPLIT_BACKOFF_MAX
    now[0] += 1e4
    layers._unit_split_done(0, T)
    assert layers._unit_split["delay"] == layers._UNIT_SPLIT_BACKOFF_MAX / 2
    for _ in range(10):
        layers._unit_split_done(0, T)
    assert layers._unit_split["delay"] == 0.0


def test_one_row_split_backs_off_and_stays_exact(monkeypatch):
    """The threads sharing the columns of a one-row product (a step of a large cell) wait
    for each other at the end: more threads than cores, or two Python threads each
    running such a step, give the one-thread bits; waits for a partner that was not
    running make the next calls run on one thread for a while."""
    import threading

    rng = np.random.default_rng(8)
    base = path_layer(256, 512, np.float32, 4, n_threads=1)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    s0 = (rng.standard_normal((1, 512)).astype(np.float32),
          rng.standard_normal((1, 512)).astype(np.float32))
    want = base.step(x, s0)[0]
    for nt in (2, 3, 8):
        layer = path_layer(256, 512, np.float32, 4, n_threads=nt)
        assert np.array_equal(layer.step(x, s0)[0], want)
    layer = path_layer(256, 512, np.float32, 4, n_threads=2)
    bad = []

    def work():
        for _ in range(30):
            if not np.array_equal(layer.step(x, s0)[0], want):
                bad.append(1)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and bad == []
    # the plan: threads only for products of 256 Ki multiply-adds and more, at most the
    # usable cores, and none while backing off
    seen = []
    real, real_row = layers._forward.forward, layers._forward.step_row

    def spy(*args):
        seen.append(args[20])           # n_threads
        return real(*args)

    def spy_row(*args):
        seen.append(args[-1])           # n_threads (step() of one row)
        return real_row(*args)

    now = [1000.0]
    monkeypatch.setattr(layers._forward, "forward", spy)
    monkeypatch.setattr(layers._forward, "step_row", spy_row)
    monkeypatch.setattr(layers.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(layers, "_unit_split", {"until": 0.0, "delay": 0.0})
    monkeypatch.setattr(layers._threads, "resolve_n_threads", lambda n=None: 8)
    monkeypatch.setattr(layers._threads, "usable_cores", lambda: 2)
    small = path_layer(6, 8, np.float32, 5, proj_size=3)            # BLAS kernel, tiny
    small(np.ones((1, 1, 6), np.float32))
    layer.step(x, s0)
    assert seen == [1, 2]
    layers._unit_split_done(1, 1)                               # one slow wait
    layer.step(x, s0)
    now[0] += layers._UNIT_SPLIT_BACKOFF_MAX + 1    # (the real runs may have added some)
    layer.step(x, s0)
    assert seen[2:] == [1, 2]


def test_few_rows_a_thread_split_units(monkeypatch):
    """A batch of at most 4 rows a thread splits hidden units when the packed weights are
    large (1 MiB or more), and rows otherwise, while backing off, or with fewer usable
    cores than threads; the results are the rows split's, bit for bit."""
    now = [1000.0]
    cores = [2]
    monkeypatch.setattr(layers.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(layers, "_unit_split", {"until": 0.0, "delay": 0.0})
    monkeypatch.setattr(layers._threads, "resolve_n_threads", lambda n=None: 2)
    monkeypatch.setattr(layers._threads, "usable_cores", lambda: cores[0])
    monkeypatch.setattr(layers, "_FORCE_PATH", None)
    monkeypatch.setattr(layers, "_PACKED", True)
    big = fl.LSTM(128, 256, n_threads=2)                     # 1.5 MiB of float32 weights
    small = fl.LSTM(64, 128, n_threads=2)                    # 384 KiB
    small64 = fl.LSTM(64, 128, n_threads=2, dtype=np.float64)   # 768 KiB
    big64 = fl.LSTM(64, 192, n_threads=2, dtype=np.float64)     # 1.5 MiB
    limit = layers._PACKED_UNITS_MIN_WEIGHT_BYTES
    assert 4 * 256 * 384 * 4 >= limit > 4 * 128 * 192 * 8
    assert big._packed_plan(8, 100) == (2, False)
    assert big._packed_plan(7, 100) == (2, False)
    assert big._packed_plan(9, 100) == (2, True)
    assert big64._packed_plan(8, 100) == (2, False)
    assert small._packed_plan(8, 100) == (2, True)
    assert small64._packed_plan(8, 100) == (2, True)
    layers._unit_split["until"] = now[0] + 1.0
    assert big._packed_plan(8, 100) == (2, True)      # backing off: rows, no per-step wait
    layers._unit_split["until"] = 0.0
    cores[0] = 1
    assert big._packed_plan(8, 100) == (2, True)
    cores[0] = 2
    X = np.random.default_rng(3).standard_normal((8, 20, 128)).astype(np.float32)
    y_units, s_units = big(X)
    monkeypatch.setattr(layers, "_FORCE_PATH", "packed-rows")
    y_rows, s_rows = big(X)
    assert np.array_equal(y_units, y_rows)
    assert np.array_equal(s_units.c, s_rows.c) and np.array_equal(s_units.h, s_rows.h)


def test_unit_split_uses_at_most_the_usable_cores(monkeypatch):
    """Threads owning units wait for each other at every step: an explicit n_threads
    above the usable cores ran 20-40x slower (every wait a scheduler time slice); the
    unit split takes at most the cores (rows, with no per-step wait, take n_threads)."""
    cores = [2]
    monkeypatch.setattr(layers._threads, "resolve_n_threads", lambda n=None: 8)
    monkeypatch.setattr(layers._threads, "usable_cores", lambda: cores[0])
    monkeypatch.setattr(layers, "_unit_split", {"until": 0.0, "delay": 0.0})
    monkeypatch.setattr(layers, "_FORCE_PATH", None)
    monkeypatch.setattr(layers, "_PACKED", True)
    layer = fl.LSTM(128, 128, n_threads=8)
    assert layer._packed_plan(1, 100) == (2, False)
    assert layer._packed_plan(64, 100) == (8, True)
    cores[0] = 1
    assert layer._packed_plan(1, 100) == (1, True)


def test_unit_split_back_off_counts_the_steps_that_ran(monkeypatch):
    """The back-off compares slow waits with the steps the kernel ran (the longest row's
    length), not the padded T: a short batch padded to T = 2000 never backed off."""
    seen = []
    monkeypatch.setattr(layers._threads, "resolve_n_threads", lambda n=None: 2)
    monkeypatch.setattr(layers._threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(layers, "_unit_split", {"until": 0.0, "delay": 0.0})
    monkeypatch.setattr(layers, "_FORCE_PATH", None)
    monkeypatch.setattr(layers, "_PACKED", True)
    monkeypatch.setattr(layers._forward, "forward_packed", lambda *a: 5)   # 5 slow waits
    monkeypatch.setattr(layers, "_unit_split_done", lambda slow, T: seen.append((slow, T)))
    layer = fl.LSTM(16, 256, n_threads=2)
    X = np.zeros((2, 2000, 16), np.float32)
    layer(X, lengths=[60, 35])
    layer(X)
    assert seen == [(5, 60), (5, 2000)]


def test_forward_packed_reports_slow_waits():
    """forward_packed returns how many per-step waits found a partner not running: 0 when
    no thread waits (one thread, or threads owning rows)."""
    rng = np.random.default_rng(2)
    layer = path_layer(5, 20, np.float32, 1, n_threads=1)
    p = layer.params
    X = rng.standard_normal((3 * 9, 5)).astype(np.float32)
    for nt, by_rows in ((1, True), (1, False), (2, True)):
        c = np.zeros((3, 20), np.float32)
        h = np.zeros((3, 20), np.float32)
        Y = np.empty((27, 20), np.float32)
        slow = _forward.forward_packed(X, 3, 9, False, p["W"], p["U"], p["b"], None, c, h,
                                       Y, None, False, 0, 0, None, nt, by_rows, 1 << 18)
        assert slow == 0
    c = np.zeros((3, 20), np.float32)
    h = np.zeros((3, 20), np.float32)
    slow = _forward.forward_packed(X, 3, 9, False, p["W"], p["U"], p["b"], None, c, h, Y,
                                   None, False, 0, 0, None, 2, False, 1 << 18)
    assert isinstance(slow, int) and 0 <= slow <= 9
