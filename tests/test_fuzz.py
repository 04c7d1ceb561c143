"""Fuzzing: random shapes, options, dtypes, memory layouts and lengths; kernel == reference.

Hypothesis draws the model (LSTM, Bidirectional, MultiLSTM), its options, the input's
dtype and memory layout (C, Fortran, strided, time-major, big-endian, integer) and the
lengths; every output and final state must match ``fastlstm.reference`` in float64.
Batches are sometimes large enough for the threaded kernel paths.
"""

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import ref, ref_options, ref_params, reference_stack  # noqa: E402

import fastlstm as fl  # noqa: E402
from fastlstm import layers as layers_mod  # noqa: E402

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow],
                print_blob=True)

# Kernel paths, forced through the layers' test hook when this build has one: None lets
# the layer choose; the others apply where the layer allows them (see tests/test_paths.py).
PATHS = [None]
if hasattr(layers_mod, "_FORCE_PATH"):
    PATHS += ["blas", "small", "packed-rows", "packed-units"]
ISAS = [None]
if hasattr(layers_mod._forward, "packed_isa"):
    ISAS += list(range(layers_mod._forward.packed_isa(-1) + 1))   # up to the best


@contextlib.contextmanager
def kernel_path(path, isa):
    """Force a kernel path and the packed kernel's instruction set, then restore them."""
    old = getattr(layers_mod, "_FORCE_PATH", None)
    try:
        if path is not None:
            layers_mod._FORCE_PATH = path
        if isa is not None:
            layers_mod._forward.packed_isa(isa)
        yield
    finally:
        if hasattr(layers_mod, "_FORCE_PATH"):
            layers_mod._FORCE_PATH = old
        if isa is not None:
            layers_mod._forward.packed_isa(-1)


def _tol(dtype, scale):
    if np.dtype(dtype) == np.float32:
        return dict(rtol=3e-5, atol=3e-6 * scale)
    return dict(rtol=1e-10, atol=1e-12 * scale)


@st.composite
def layer_options(draw, input_size):
    hidden = draw(st.sampled_from([1, 2, 3, 5, 8, 32]))
    opts = dict(
        proj_size=draw(st.none() | st.integers(1, 6)),
        peepholes=draw(st.booleans()),
        cell_clip=draw(st.none() | st.sampled_from([0.0, 0.3, 2.0])),
        proj_clip=draw(st.none() | st.sampled_from([0.0, 0.1, 1.0])),
        activation=draw(st.sampled_from(["tanh", "tanh", "relu", "sigmoid", "linear"])),
        recurrent_activation=draw(st.sampled_from(["sigmoid", "sigmoid", "hard_sigmoid",
                                                   "hard_sigmoid_keras2"])),
        n_threads=draw(st.sampled_from([1, 2, None, -1])),
    )
    if opts["activation"] in ("relu", "linear") and opts["cell_clip"] is None:
        opts["cell_clip"] = 3.0  # unbounded activations: keep the numbers in range
    return input_size, hidden, opts


def _make_layer(spec, dtype, rng):
    input_size, hidden, opts = spec
    layer = fl.LSTM(input_size, hidden, dtype=dtype, random_state=int(rng.integers(1 << 30)),
                    **opts)
    for name, value in layer.params.items():
        # matrices scaled by their fan-in: the recurrence stays near the edge of stability
        # instead of amplifying float32 rounding exponentially (as random weights at H=32
        # with a linear activation would)
        scale = 1.2 / np.sqrt(value.shape[0]) if name in ("W", "U", "P") else 0.6
        value[...] = rng.normal(scale=scale, size=value.shape)
    return layer


@st.composite
def inputs(draw, input_size, dtype):
    """(X as drawn, X as float64 batch-major for the reference, N, T, time_major, lengths)."""
    big = draw(st.integers(0, 4)) == 0
    N = draw(st.integers(24, 72)) if big else draw(st.integers(0, 9))
    T = draw(st.integers(0, 9)) if not big else draw(st.integers(1, 5))
    time_major = draw(st.booleans())
    layout = draw(st.sampled_from(["C", "F", "strided", "negative", "bigendian", "int",
                                   "other_float", "list"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    base = rng.normal(scale=1.5, size=(N, T, input_size))
    if layout == "int":
        base = np.round(base * 2)
    lengths = None
    if draw(st.booleans()) and N:
        lengths = rng.integers(0, T + 1, size=N)
        if draw(st.booleans()):
            lengths = lengths.astype(draw(st.sampled_from([np.int32, np.uint8, np.int64])))
    data = np.swapaxes(base, 0, 1) if time_major else base
    other = np.float64 if np.dtype(dtype) == np.float32 else np.float32
    if layout == "C":
        X = np.ascontiguousarray(data, dtype=dtype)
    elif layout == "F":
        X = np.asfortranarray(data.astype(dtype))
    elif layout == "strided":
        big_arr = np.zeros(tuple(2 * s + 1 for s in data.shape), dtype)
        big_arr[1::2, 1::2, 1::2] = data
        X = big_arr[1::2, 1::2, 1::2]
    elif layout == "negative":
        X = np.ascontiguousarray(data[::-1, :, ::-1], dtype=dtype)[::-1, :, ::-1]
    elif layout == "bigendian":
        X = data.astype(np.dtype(dtype).newbyteorder(">"))
    elif layout == "int":
        X = data.astype(np.int16)
    elif layout == "other_float":
        X = data.astype(other)
    elif data.size:
        X = data.tolist()
    else:  # a nested list cannot hold an empty shape
        X = data
    if layout == "other_float":
        base = base.astype(other)
    # what the model computes on: the input cast to its dtype
    Xref = base.astype(dtype).astype(np.float64)
    return X, Xref, N, T, time_major, lengths


def _state_for(layer, N, rng, dtype):
    return (rng.normal(size=(N, layer.hidden_size)).astype(dtype),
            rng.normal(size=(N, layer.output_size)).astype(dtype))


def _check(got, want, dtype):
    got = np.asarray(got)
    assert got.dtype == dtype
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, **_tol(dtype, scale))


def _cast_state(state, dtype):
    return None if state is None else tuple(np.asarray(a, dtype).astype(np.float64)
                                            for a in state)


@settings(max_examples=160, **SETTINGS)
@given(data=st.data())
def test_lstm_matches_reference(data):
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    input_size = data.draw(st.integers(1, 6))
    spec = data.draw(layer_options(input_size))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    layer = _make_layer(spec, dtype, rng)
    X, Xref, N, T, time_major, lengths = data.draw(inputs(input_size, dtype))
    reverse = data.draw(st.booleans())
    state = _state_for(layer, N, rng, data.draw(st.sampled_from([np.float32, np.float64])))
    if data.draw(st.booleans()):
        state = None
    Xin_before = np.array(X, copy=True)
    path, isa = data.draw(st.sampled_from(PATHS)), data.draw(st.sampled_from(ISAS))
    with kernel_path(path, isa):
        Y, s = layer(X, initial_state=state, lengths=lengths, time_major=time_major,
                     reverse=reverse)
    Yr, (cr, hr) = ref.lstm_forward(Xref, ref_params(layer), initial_state=_cast_state(state, dtype),
                                    lengths=lengths, reverse=reverse, **ref_options(layer))
    if time_major:
        Yr = np.swapaxes(Yr, 0, 1)
    _check(Y, Yr, dtype)
    _check(s.c, cr, dtype)
    _check(s.h, hr, dtype)
    np.testing.assert_array_equal(np.asarray(X), Xin_before)  # the input is never written
    if N and not time_major and lengths is None and not reverse and T:
        # stepping one step at a time gives the same sequence
        x0 = np.asarray(X, dtype)[:, 0]
        with kernel_path(path, isa):
            out, _ = layer.step(x0, state)
        _check(out, Yr[:, 0], dtype)


@settings(max_examples=90, **SETTINGS)
@given(data=st.data())
def test_stacks_match_reference(data):
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    input_size = data.draw(st.integers(1, 5))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n_layers = data.draw(st.integers(1, 3))
    layers = []
    width = input_size
    for _ in range(n_layers):
        if data.draw(st.booleans()):
            fw = _make_layer(data.draw(layer_options(width)), dtype, rng)
            bw = _make_layer(data.draw(layer_options(width)), dtype, rng)
            layers.append(fl.Bidirectional(fw, bw))
        else:
            layers.append(_make_layer(data.draw(layer_options(width)), dtype, rng))
        width = layers[-1].output_size
    single = len(layers) == 1 and isinstance(layers[0], fl.Bidirectional) \
        and data.draw(st.booleans())
    model = layers[0] if single else fl.MultiLSTM(layers)
    X, Xref, N, T, time_major, lengths = data.draw(inputs(input_size, dtype))
    with kernel_path(data.draw(st.sampled_from(PATHS)), data.draw(st.sampled_from(ISAS))):
        Y, states = model(X, lengths=lengths, time_major=time_major)
    items = reference_stack(SimpleNamespace(layers=layers))
    Yr, sr = ref.stack_forward(Xref, items, lengths=lengths)
    if single:
        sr = sr[0]
    if time_major:
        Yr = np.swapaxes(Yr, 0, 1)
    _check(Y, Yr, dtype)
    flat_got = _leaves(states)
    flat_want = _leaves(sr)
    assert len(flat_got) == len(flat_want)
    for got, want in zip(flat_got, flat_want):
        _check(got, want, dtype)


def _leaves(state):
    if isinstance(state, np.ndarray):
        return [state]
    return [a for part in state for a in _leaves(part)]
