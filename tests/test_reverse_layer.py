"""Layers built with ``reverse=True`` (ONNX ``direction="reverse"``): the direction of calls
that do not choose one, and of the layer inside a stack.  Oracle: the NumPy reference with
``reverse=True`` (SPEC.md Part A: each row's valid prefix walked backwards, outputs in time
order, the final state after step 0); ONNX nodes against onnxruntime are in
test_interop_onnx.py."""

import pickle

import numpy as np
import pytest
from conftest import (assert_grads_close, randomize, ref, ref_options, ref_params,
                      reference_stack, tol)

import fastlstm as fl


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("shape", [(3, 5, 2, 3), (9, 40, 7, 20), (1, 30, 4, 64)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("options", [{}, dict(peepholes=True, cell_clip=0.4),
                                     dict(proj_size=2, proj_clip=0.3)],
                         ids=["plain", "peep_clip", "proj"])
def test_reverse_layer_against_reference(dtype, n_threads, shape, options, rng):
    N, T, I, H = shape
    layer = randomize(fl.LSTM(I, H, dtype=dtype, n_threads=n_threads, reverse=True,
                              **options), rng)
    X = rng.normal(size=(N, T, I))
    L = rng.integers(0, T + 1, size=N)
    L[0] = T
    s0 = (rng.normal(size=(N, H)), rng.normal(size=(N, layer.output_size)))
    Xr = X.astype(dtype).astype(np.float64)
    for lengths in (None, L):
        for time_major in (False, True):
            Xin = np.swapaxes(X, 0, 1) if time_major else X
            Y, state = layer(Xin, initial_state=s0, lengths=lengths, time_major=time_major)
            if time_major:
                Y = np.swapaxes(Y, 0, 1)
            Yr, (cr, hr) = ref.lstm_forward(Xr, ref_params(layer), initial_state=s0,
                                            lengths=lengths, reverse=True,
                                            **ref_options(layer))
            np.testing.assert_allclose(Y, Yr, **tol(dtype))
            np.testing.assert_allclose(state.c, cr, **tol(dtype))
            np.testing.assert_allclose(state.h, hr, **tol(dtype))
    # a call that chooses its direction overrides the layer's
    Y, _ = layer(X, initial_state=s0, lengths=L, reverse=False)
    Yf, _ = ref.lstm_forward(Xr, ref_params(layer), initial_state=s0, lengths=L,
                             **ref_options(layer))
    np.testing.assert_allclose(Y, Yf, **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reverse_layer_training_against_reference(dtype, rng):
    N, T, I, H = 6, 7, 4, 5
    layer = randomize(fl.LSTM(I, H, dtype=dtype, peepholes=True, reverse=True), rng)
    X = rng.normal(size=(N, T, I))
    L = np.array([7, 0, 3, 1, 7, 5])
    s0 = (rng.normal(size=(N, H)), rng.normal(size=(N, H)))
    dY = rng.normal(size=(N, T, H))
    ds = (rng.normal(size=(N, H)), rng.normal(size=(N, H)))
    Y, _, cache = layer.forward(X, s0, lengths=L)
    dX, d0 = layer.backward(dY, cache, ds)
    g = ref.lstm_backward(dY, X.astype(dtype).astype(np.float64), ref_params(layer),
                          dstate=ds, initial_state=s0, lengths=L, reverse=True,
                          **ref_options(layer))
    assert_grads_close(dict(layer.grads, X=dX, c0=d0.c, h0=d0.h), g, dtype)


def _stack(rng, dtype=np.float32, n_threads=None):
    return fl.MultiLSTM([
        randomize(fl.LSTM(3, 4, dtype=dtype, n_threads=n_threads), rng),
        randomize(fl.LSTM(4, 5, dtype=dtype, n_threads=n_threads, reverse=True,
                          peepholes=True), rng),
        randomize(fl.Bidirectional(fl.LSTM(5, 2, dtype=dtype), fl.LSTM(5, 3, dtype=dtype)),
                  rng),
        randomize(fl.LSTM(5, 2, dtype=dtype, n_threads=n_threads, reverse=True), rng),
    ])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stack_with_reverse_layers_against_reference(dtype, rng):
    model = _stack(rng, dtype)
    N, T = 5, 6
    X = rng.normal(size=(N, T, 3))
    L = np.array([6, 2, 0, 5, 1])
    Xr = X.astype(dtype).astype(np.float64)
    for lengths in (None, L):
        Y, states = model(X, lengths=lengths)
        Yr, sr = ref.stack_forward(Xr, reference_stack(model), lengths=lengths)
        np.testing.assert_allclose(Y, Yr, **tol(dtype))
        np.testing.assert_allclose(states[1].c, sr[1][0], **tol(dtype))
        np.testing.assert_allclose(states[3].h, sr[3][1], **tol(dtype))
    # training: forward + backward against the reference stack backward
    dY = rng.normal(size=Y.shape)
    _, _, cache = model.forward(X, lengths=L)
    dX, d0 = model.backward(dY, cache)
    g = ref.stack_backward(dY, Xr, reference_stack(model), lengths=L)
    assert_grads_close(dict(model.grads, X=dX), g, dtype)


def test_small_stateless_stack_call_honours_reverse(rng):
    # small calls without state or lengths take a one-call path: it must not run a
    # reverse layer forward
    model = fl.MultiLSTM([randomize(fl.LSTM(6, 4), rng),
                          randomize(fl.LSTM(4, 5, reverse=True), rng)])
    X = rng.normal(size=(2, 3, 6)).astype(np.float32)
    Y, states = model(X)
    Yr, sr = ref.stack_forward(X.astype(np.float64), reference_stack(model))
    np.testing.assert_allclose(Y, Yr, **tol(np.float32))
    np.testing.assert_allclose(states[1].c, sr[1][0], **tol(np.float32))


def test_reverse_option_checks_and_keeps(tmp_path):
    with pytest.raises(TypeError, match="reverse must be a bool"):
        fl.LSTM(3, 4, reverse="yes")
    layer = fl.LSTM(3, 4, reverse=np.True_)
    assert layer.reverse is True and repr(layer) == "LSTM(3, 4, reverse=True)"
    with pytest.raises(TypeError, match="reverse must be a bool"):
        layer.reverse = 1
    assert layer.reverse is True
    assert pickle.loads(pickle.dumps(layer)).reverse is True
    # a layer pickled before the option existed runs forward
    old = fl.LSTM(3, 4)
    state = old.__getstate__()
    del state["_reverse"]
    again = fl.LSTM.__new__(fl.LSTM)
    again.__setstate__(state)
    assert again.reverse is False
    fl.save(layer, tmp_path / "r.npz")
    assert fl.load(tmp_path / "r.npz").reverse is True


def test_reverse_layers_where_no_direction_fits(rng, tmp_path):
    stack = fl.MultiLSTM([fl.LSTM(3, 4), fl.LSTM(4, 4, reverse=True)])
    with pytest.raises(TypeError, match=r"layers\[1\] has reverse=True"):
        stack.step(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="reverse=True and cannot run one step at a time"):
        stack.layers[1].step(np.zeros((2, 4), np.float32))
    for bad in ("False", 1, np.array([True])):
        with pytest.raises(TypeError, match="reverse must be a bool"):
            stack.layers[0](np.zeros((2, 5, 3), np.float32), reverse=bad)
        with pytest.raises(TypeError, match="reverse must be a bool"):
            stack.layers[0].forward(np.zeros((2, 5, 3), np.float32), reverse=bad)
    with pytest.raises(ValueError, match="forward_layer has reverse=True"):
        fl.Bidirectional(fl.LSTM(3, 4, reverse=True), fl.LSTM(3, 4))
    # a backward half built with reverse=True is what it would be anyway
    bi = randomize(fl.Bidirectional(fl.LSTM(3, 4), fl.LSTM(3, 4, reverse=True)), rng)
    X = rng.normal(size=(2, 5, 3))
    Y, _ = bi(X)
    Yr, _ = ref.bidirectional_forward(X.astype(np.float32).astype(np.float64),
                                      ref_params(bi.forward_layer),
                                      ref_params(bi.backward_layer))
    np.testing.assert_allclose(Y, Yr, **tol(np.float32))
    # torch, Keras and TF1 checkpoints have no stand-alone reverse layer: refused
    from fastlstm.interop import (keras_config, to_keras_weights, to_tf1_checkpoint,
                                  to_torch_state_dict)
    for export, match in ((to_torch_state_dict, "torch"), (to_keras_weights, "Keras"),
                          (to_tf1_checkpoint, "a TF1 checkpoint")):
        with pytest.raises(ValueError, match=f"layer 1 cannot be represented exactly in {match}"):
            export(stack)
        with pytest.raises(ValueError, match="reverse=True"):
            export(stack.layers[1])
    with pytest.raises(ValueError, match="reverse=True"):
        keras_config(stack.layers[1])
    # ... but the backward half of a bidirectional layer is fine
    config, sd = to_torch_state_dict(bi)
    assert config["bidirectional"] and "weight_ih_l0_reverse" in sd
    # the forward half keeps reverse=False, also when set later (as when built)
    with pytest.raises(ValueError, match="Bidirectional's forward_layer"):
        bi.forward_layer.reverse = True
    assert bi.forward_layer.reverse is False
    bi.forward_layer.reverse = False
    # the backward half's own flag plays no part (even when set after building): files
    # leave it out
    bi.backward_layer.reverse = False
    np.testing.assert_allclose(bi(X)[0], Yr, **tol(np.float32))
    fl.save(bi, tmp_path / "bi.npz")
    again = fl.load(tmp_path / "bi.npz")
    np.testing.assert_array_equal(again(X)[0], bi(X)[0])
    np.testing.assert_allclose(bi(X)[0], Yr, **tol(np.float32))
