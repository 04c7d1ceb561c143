"""Dense readout, output picking and losses (fastlstm.readout): central finite differences
in float64, torch when installed, and an end-to-end training run that must learn."""

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import optim, readout

from test_backward import check_fd


def test_dense_finite_differences(rng):
    head = readout.Dense(4, 3, dtype=np.float64, random_state=0)
    head.b = rng.normal(size=3)
    H = rng.normal(size=(2, 5, 4))
    dout = rng.normal(size=(2, 5, 3))

    def loss():
        return float(np.sum(head(H) * dout))

    out, cache = head.forward(H)
    np.testing.assert_array_equal(out, head(H))
    dH = head.backward(dout, cache)
    check_fd(dict(head.params, H=H), loss, dict(head.grads, H=dH))


def test_dense_matches_torch(rng):
    torch = pytest.importorskip("torch")
    lin = torch.nn.Linear(6, 2, dtype=torch.float64)
    head = readout.Dense(6, 2, dtype=np.float64)
    head.W = lin.weight.detach().numpy().T
    head.b = lin.bias.detach().numpy()
    H = rng.normal(size=(7, 6))
    Ht = torch.tensor(H, requires_grad=True)
    out_t = lin(Ht)
    dout = rng.normal(size=(7, 2))
    out_t.backward(torch.tensor(dout))
    out, cache = head.forward(H)
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-11, atol=1e-12)
    dH = head.backward(dout, cache)
    np.testing.assert_allclose(dH, Ht.grad.numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(head.grads["W"], lin.weight.grad.numpy().T, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(head.grads["b"], lin.bias.grad.numpy(), rtol=1e-11, atol=1e-12)


def test_dense_api(rng):
    head = readout.Dense(3, 2, random_state=1)
    assert head.flat_params.dtype == np.float32 and head.flat_params.shape == (8,)
    assert np.shares_memory(head.W, head.flat_params)
    assert np.shares_memory(head.grads["W"], head.flat_grads)
    np.testing.assert_array_equal(head.W, readout.Dense(3, 2, random_state=1).W)
    assert repr(head) == "Dense(3, 2)"
    with pytest.raises(ValueError, match="3 features on its last axis"):
        head(np.zeros((4, 2)))
    _, cache = head.forward(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"dout must have shape \(4, 2\)"):
        head.backward(np.zeros((4, 3)), cache)
    with pytest.raises(ValueError, match="W must have shape"):
        head.W = np.zeros((2, 3))


@pytest.mark.parametrize("time_major", [False, True])
def test_last_output(time_major, rng):
    Y = rng.normal(size=(4, 5, 3))
    lengths = np.array([5, 0, 2, 1])
    Yl = Y.transpose(1, 0, 2).copy() if time_major else Y
    last = readout.last_output(Yl, lengths, time_major=time_major)
    want = np.stack([Y[0, 4], np.zeros(3), Y[2, 1], Y[3, 0]])
    np.testing.assert_array_equal(last, want)
    np.testing.assert_array_equal(readout.last_output(Yl, None, time_major), Yl[-1] if
                                  time_major else Y[:, -1])
    d = rng.normal(size=(4, 3))
    dY = readout.last_output_backward(d, Yl.shape, lengths, time_major)
    # the adjoint: <dY, Y> == <d, last(Y)>
    assert np.sum(dY * Yl) == pytest.approx(np.sum(d * last), rel=1e-12)
    assert dY.shape == Yl.shape


def test_last_output_is_final_h(rng):
    layer = fl.LSTM(3, 4, dtype=np.float64, random_state=0)
    X = rng.normal(size=(3, 6, 3))
    lengths = np.array([6, 3, 1])
    Y, state = layer(X, lengths=lengths)
    np.testing.assert_array_equal(readout.last_output(Y, lengths), state.h)


def test_sequence_mask():
    np.testing.assert_array_equal(readout.sequence_mask([2, 0, 3], 3),
                                  [[1, 1, 0], [0, 0, 0], [1, 1, 1]])
    assert readout.sequence_mask([1, 2], 3, time_major=True).shape == (3, 2)
    with pytest.raises(ValueError, match="lengths"):
        readout.sequence_mask([4], 3)


@pytest.mark.parametrize("masked", [False, True])
def test_mse_finite_differences(masked, rng):
    pred = rng.normal(size=(3, 4, 2))
    target = rng.normal(size=(3, 4, 2))
    mask = readout.sequence_mask([4, 1, 2], 4) if masked else None
    loss, d = readout.mse_loss(pred, target, mask)
    sel = mask[..., None] if masked else np.ones_like(pred, bool)
    assert loss == pytest.approx(float(np.mean((pred - target)[np.broadcast_to(sel, pred.shape)]
                                               ** 2)), rel=1e-12)
    check_fd({"pred": pred}, lambda: readout.mse_loss(pred, target, mask)[0], {"pred": d})


@pytest.mark.parametrize("masked", [False, True])
def test_cross_entropy_finite_differences(masked, rng):
    logits = rng.normal(size=(3, 4, 5)) * 3
    labels = rng.integers(0, 5, size=(3, 4))
    mask = readout.sequence_mask([4, 0, 2], 4) if masked else None
    if masked:
        labels[~mask] = 99                          # padded labels are never read
    loss, d = readout.softmax_cross_entropy(logits, labels, mask)
    check_fd({"logits": logits},
             lambda: readout.softmax_cross_entropy(logits, labels, mask)[0], {"logits": d})
    p = readout.softmax(logits)
    valid = mask if masked else np.ones(labels.shape, bool)
    want = -np.mean(np.log(np.take_along_axis(p, np.where(valid, labels, 0)[..., None],
                                              -1)[..., 0][valid]))
    assert loss == pytest.approx(want, rel=1e-12)


def test_losses_match_torch(rng):
    torch = pytest.importorskip("torch")
    logits = rng.normal(size=(6, 4))
    labels = rng.integers(0, 4, size=6)
    lt = torch.tensor(logits, requires_grad=True)
    torch.nn.functional.cross_entropy(lt, torch.tensor(labels)).backward()
    loss, d = readout.softmax_cross_entropy(logits, labels)
    assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(
        torch.tensor(logits), torch.tensor(labels))), rel=1e-12)
    np.testing.assert_allclose(d, lt.grad.numpy(), rtol=1e-12)
    pred, target = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    pt = torch.tensor(pred, requires_grad=True)
    torch.nn.functional.mse_loss(pt, torch.tensor(target)).backward()
    loss, d = readout.mse_loss(pred, target)
    np.testing.assert_allclose(d, pt.grad.numpy(), rtol=1e-12)


def test_loss_errors():
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        readout.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(TypeError, match="integers"):
        readout.softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="one shape"):
        readout.mse_loss(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"mask must have shape \(2,\)"):
        readout.mse_loss(np.zeros((2, 3)), np.zeros((2, 3)), mask=np.ones(3, bool))


def test_end_to_end_training_learns():
    """LSTM + Dense + Adam on a learnable sequence task: the loss must fall well below the
    loss of predicting the mean (fixed seeds, so this is deterministic)."""
    rng = np.random.default_rng(0)
    N, T = 32, 20
    t0 = rng.uniform(0, 2 * np.pi, size=(N, 1))
    wave = np.sin(t0 + 0.3 * np.arange(T + 1))[..., None]
    X = (wave[:, :-1] + 0.05 * rng.normal(size=(N, T, 1))).astype(np.float32)
    target = wave[:, 1:].astype(np.float32)
    rnn = fl.MultiLSTM([fl.LSTM(1, 16, random_state=1), fl.LSTM(16, 16, random_state=2)])
    head = readout.Dense(16, 1, random_state=3)
    opt = optim.Adam([rnn, head], lr=0.01)
    losses = []
    for _ in range(60):
        Y, _, cache = rnn.forward(X)
        pred, hcache = head.forward(Y)
        loss, dpred = readout.mse_loss(pred, target)
        rnn.backward(head.backward(dpred, hcache), cache)
        optim.clip_grad_norm([rnn, head], 1.0)
        opt.step()
        losses.append(loss)
    baseline = float(np.var(target))
    assert losses[-1] < 0.1 * baseline, (losses[0], losses[-1], baseline)
    assert losses[-1] < 0.1 * losses[0]


def test_integer_logits_and_predictions_get_float_gradients():
    """Integer logits gave an all-zero integer gradient (the float gradient was cast back
    to the logits' dtype); they are read as floats."""
    logits = np.array([[1, 2, 3], [3, 2, 1]])
    labels = np.array([2, 0])
    loss, d = readout.softmax_cross_entropy(logits, labels)
    want_loss, want = readout.softmax_cross_entropy(logits.astype(np.float64), labels)
    assert loss == want_loss and d.dtype == np.float64
    np.testing.assert_array_equal(d, want)
    loss, d = readout.mse_loss(np.array([[1], [2]]), np.array([[0.5], [2.0]]))
    assert d.dtype == np.float64 and loss == pytest.approx(0.125)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: readout.mse_loss(np.ones(2, complex), np.zeros(2)), TypeError,
     "pred must hold real numbers"),
    (lambda: readout.softmax_cross_entropy(np.ones((2, 3), complex), [0, 1]), TypeError,
     "logits must hold real numbers"),
    (lambda: readout.mse_loss(np.float64(1.0), np.float64(0.0)), ValueError,
     "pred must be an array"),
    (lambda: readout.softmax_cross_entropy(np.float64(1.0), 0), ValueError,
     "logits must be an array"),
    (lambda: readout.mse_loss(np.ones((2, 1), np.float32), np.full((2, 1), 1e40)),
     ValueError, "beyond the range of pred's dtype float32"),
    (lambda: readout.sequence_mask([1, 2], 2.5), ValueError, "T must be a non-negative int"),
    (lambda: readout.last_output_backward(np.ones(2), (3, 4, 2)), ValueError,
     r"dlast must have shape \(3, 2\)"),
    (lambda: readout.last_output_backward(np.ones((5, 2)), (3, 4, 2), lengths=[1, 2, 3]),
     ValueError, r"dlast must have shape \(3, 2\)"),
    (lambda: readout.last_output_backward(np.ones((3, 2)), (3, 4)), ValueError,
     "Y_shape must be a 3-D shape"),
    (lambda: fl.Dense(4, 2).backward(np.ones((3, 2)), None), TypeError,
     "cache must be the cache returned by this Dense's forward"),
    (lambda: fl.Dense(4, 2).backward(np.ones((3, 2)), np.ones((3, 5), np.float32)),
     TypeError, "cache must be the cache returned"),
])
def test_readout_argument_errors(call, exc, match):
    """Errors that were NumPy's broadcasting, IndexError, AttributeError, a silently
    broadcast gradient or a complex loss."""
    with pytest.raises(exc, match=match):
        call()


def test_last_output_backward_of_integer_dlast_is_float():
    dY = readout.last_output_backward(np.ones((2, 3), int), (2, 4, 3), lengths=[4, 1])
    assert dY.dtype == np.float64 and dY[0, 3].sum() == 3 and dY[1, 0].sum() == 3


def test_dense_sizes_are_fixed():
    d = fl.Dense(4, 2)
    with pytest.raises(AttributeError, match="in_features cannot be changed"):
        d.in_features = 3
    assert d.W.shape == (4, 2) and d.n_params == 10


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_of_confident_predictions_keeps_relative_accuracy(dtype):
    """log(1 + s) cancels for a small s: a confident prediction's loss came out as 0, and
    the gradient at its label (p - 1) as 0 while the others were not (rows not summing to
    0).  Against the exact values: loss = log1p(e^-d), gradient -+ e^-d / (1 + e^-d)."""
    from fastlstm.readout import softmax_cross_entropy

    for gap in (20.0, 40.0, 80.0):
        loss, d = softmax_cross_entropy(np.array([[0.0, -gap]], dtype), np.array([0]))
        s = np.exp(-gap)
        np.testing.assert_allclose(loss, np.log1p(s), rtol=1e-15)
        np.testing.assert_allclose(d[0], [-s / (1 + s), s / (1 + s)],
                                   rtol=4 * np.finfo(dtype).eps)
    # float32 logits far apart: the loss fits in the float64 it is returned as
    big = np.finfo(np.float32).max
    loss, d = softmax_cross_entropy(np.array([[big, -big]], np.float32), np.array([1]))
    assert loss == 2.0 * float(big) and np.isfinite(d).all()


def test_mse_of_float32_predictions_sums_in_float64():
    """Squares of float32 differences overflowed from |diff| ~ 1.8e19 (the mean, 1e38,
    fits) and went subnormal below ~1e-19."""
    from fastlstm.readout import mse_loss

    for value in (1e19, 2e19, 1e-20):
        pred = np.full((4, 1), value, np.float32)
        loss, _ = mse_loss(pred, np.zeros_like(pred))
        np.testing.assert_allclose(loss, float(np.float32(value)) ** 2, rtol=1e-15)


def test_masks_must_be_boolean_and_outputs_numeric():
    """A float mask (say, sample weights) was read as "nonzero"; last_output took complex
    and text arrays."""
    from fastlstm.readout import last_output, mse_loss, softmax_cross_entropy

    pred = np.ones((2, 3, 1))
    for bad in (np.array([[0.1, 0.0, 1.0], [1.0, 1.0, 1.0]]), np.array([[2, 0, 1], [1, 1, 1]])):
        with pytest.raises(TypeError, match="mask must be boolean"):
            mse_loss(pred, pred, mask=bad)
        with pytest.raises(TypeError, match="mask must be boolean"):
            softmax_cross_entropy(np.ones((2, 3, 2)), np.zeros((2, 3), int), mask=bad)
    ones = np.ones((2, 3), int)
    assert mse_loss(pred, 2 * pred, mask=ones)[0] == mse_loss(pred, 2 * pred)[0]
    for bad in (np.ones((2, 3, 1), complex), np.full((2, 3, 1), "a")):
        with pytest.raises(TypeError, match="Y must hold real numbers"):
            last_output(bad)


def test_empty_batch_masks_given_as_empty_lists():
    # an empty list is an empty float array: accepted for an empty batch, as lengths=[]
    from fastlstm.readout import mse_loss, softmax_cross_entropy

    assert mse_loss(np.zeros((0, 1)), np.zeros((0, 1)), mask=[])[0] == 0.0
    assert softmax_cross_entropy(np.zeros((0, 3)), np.zeros(0, int), mask=[])[0] == 0.0


def test_readout_helpers_take_empty_batches_and_empty_time():
    # lengths=[] / labels=[] (empty float lists) for an empty batch, as the models take
    from fastlstm.readout import (last_output, last_output_backward, sequence_mask,
                                  softmax_cross_entropy)

    Y = np.zeros((0, 5, 4), np.float32)
    assert last_output(Y, []).shape == (0, 4)
    assert sequence_mask([], 5).shape == (0, 5)
    assert last_output_backward(np.zeros((0, 4)), Y.shape, []).shape == Y.shape
    assert softmax_cross_entropy(np.zeros((0, 3)), [])[0] == 0.0
    # T = 0: every row has length 0, so zeros, with lengths as without them
    model = fl.LSTM(3, 4, random_state=0)
    Y0, state = model(np.zeros((2, 0, 3), np.float32), lengths=[0, 0])
    for L in (None, [0, 0]):
        for tm in (False, True):
            got = last_output(Y0.swapaxes(0, 1) if tm else Y0, L, time_major=tm)
            assert got.shape == (2, 4) and not got.any()
    # non-empty float lengths are still refused
    with pytest.raises(ValueError, match="integers"):
        last_output(np.zeros((2, 3, 4)), [1.0, 2.0])
