"""Train a two-layer LSTM to predict the next value of a noisy sine wave.

Run:  python examples/train_sine.py      (a few seconds on 2 cores)
"""
import time

import numpy as np

import fastlstm as fl
from fastlstm import optim, readout

rng = np.random.default_rng(0)
N, T = 32, 50                                   # sequences per batch, steps per sequence


def batch():
    """Noisy sine waves with random phase and frequency; target = next clean value."""
    phase = rng.uniform(0, 2 * np.pi, (N, 1))
    freq = rng.uniform(0.1, 0.3, (N, 1))
    wave = np.sin(phase + freq * np.arange(T + 1))
    X = wave[:, :-1, None] + 0.1 * rng.normal(size=(N, T, 1))
    return X.astype(np.float32), wave[:, 1:, None].astype(np.float32)


rnn = fl.MultiLSTM([fl.LSTM(1, 32, random_state=1), fl.LSTM(32, 32, random_state=2)])
head = fl.Dense(32, 1, random_state=3)
opt = optim.Adam([rnn, head], lr=0.01)

start = time.perf_counter()
for step in range(121):
    X, target = batch()
    Y, _, cache = rnn.forward(X)                # (N, T, 32) and what backward needs
    pred, head_cache = head.forward(Y)          # (N, T, 1)
    loss, dpred = readout.mse_loss(pred, target)
    dY = head.backward(dpred, head_cache)       # fills head.grads, returns dL/dY
    rnn.backward(dY, cache)                     # fills rnn.grads (BPTT)
    optim.clip_grad_norm([rnn, head], 1.0)
    opt.step()
    if step % 20 == 0:
        print(f"step {step:3d}  mse {loss:.4f}")
print(f"{time.perf_counter() - start:.1f} s (predicting the mean: mse {np.var(target):.3f})")
