"""Training step (forward with cache + backward) time: fastlstm beside torch.nn.LSTM.

A training step here is: forward over the whole sequence, then backpropagation through
time of a given output gradient dY into every parameter (torch: ``Y.backward(dY)``; the
input needs no gradient in either: ``backward(..., input_grad=False)`` in fastlstm, an
input without ``requires_grad`` in torch).  Same shapes as the performance issue, float32:

    small   B=8,  T=100, I=64,  H=128, 1 layer
    medium  B=32, T=100, I=128, H=256, 2 layers
    large   B=64, T=200, I=256, H=512, 1 layer (opt-in: slow)

Side by side, as ``python -m fastlstm bench`` times inference: interleaved samples, each
after a 0.2 s idle gap (an idle thread pool stops spinning before the other library runs)
and made of back-to-back steps lasting at least ``--min-time`` seconds (0.05; a training
loop runs its steps back to back), time per step, min and median of the samples.
``--min-time 0`` times single steps after the gap instead: each then also pays the
wake-up of idle threads and cold caches (on the project's machine 0.5-1 ms a step for
both libraries at the small shape; see bench/RESULTS.md)::

    python bench/bench_training.py                       # small, medium
    python bench/bench_training.py --shapes small,medium,large --repeat 20

pytest-benchmark (small only unless FASTLSTM_BENCH_SHAPES lists more)::

    python -m pytest bench/bench_training.py --benchmark-only
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

SHAPES = {
    "small": dict(B=8, T=100, I=64, H=128, layers=1),
    "medium": dict(B=32, T=100, I=128, H=256, layers=2),
    "large": dict(B=64, T=200, I=256, H=512, layers=1),
}


def make_fastlstm(shape, seed=0, n_threads=None):
    import fastlstm as fl

    layers, inp = [], shape["I"]
    for k in range(shape["layers"]):
        layers.append(fl.LSTM(inp, shape["H"], random_state=seed + k, n_threads=n_threads))
        inp = shape["H"]
    model = fl.MultiLSTM(layers)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(shape["B"], shape["T"], shape["I"])).astype(np.float32)
    dY = rng.normal(size=(shape["B"], shape["T"], shape["H"])).astype(np.float32)

    def step():
        _, _, cache = model.forward(X)
        model.backward(dY, cache, input_grad=False)

    return step, model, X, dY


def make_torch(shape, model=None, X=None, dY=None):
    import torch

    net = torch.nn.LSTM(shape["I"], shape["H"], num_layers=shape["layers"], batch_first=True)
    if model is not None:                    # same weights, so the work is identical
        with torch.no_grad():
            for k, layer in enumerate(model.layers):
                getattr(net, f"weight_ih_l{k}").copy_(torch.from_numpy(layer.W.T.copy()))
                getattr(net, f"weight_hh_l{k}").copy_(torch.from_numpy(layer.U.T.copy()))
                getattr(net, f"bias_ih_l{k}").copy_(torch.from_numpy(layer.b.copy()))
                getattr(net, f"bias_hh_l{k}").zero_()
    Xt = torch.from_numpy(X)
    dYt = torch.from_numpy(dY)

    def step():
        for p in net.parameters():
            p.grad = None
        Y, _ = net(Xt)
        Y.backward(dYt)

    return step, net


def _time(fn, n=1):
    """Seconds per call over n back-to-back calls."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def side_by_side(names, repeat, gap=0.2, check=True, min_time=0.05):
    try:
        import torch
    except ImportError:
        torch = None
    import fastlstm as fl
    from fastlstm._bench import calibrate

    fl.show_config()
    if torch is not None:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print()
    print(f"samples: {repeat}, {gap:g} s idle gap before each, back-to-back steps for at "
          f"least {min_time:g} s in each (time per step)")
    print(f"{'shape':8s} {'impl':10s} {'steps':>6s} {'min ms':>9s} {'median ms':>10s}")
    rows = []
    for name in names:
        shape = SHAPES[name]
        fstep, model, X, dY = make_fastlstm(shape)
        impls = [("fastlstm", fstep)]
        if torch is not None:
            tstep, net = make_torch(shape, model, X, dY)
            impls.append(("torch", tstep))
            if check:   # the two compute the same gradients
                fstep()
                tstep()
                g = net.weight_hh_l0.grad.numpy().T
                err = np.abs(model.layers[0].grads["U"] - g).max() / np.abs(g).max()
                print(f"{name}: relative difference of dU (layer 0) vs torch: {err:.1e}")
        counts = {}
        for label, fn in impls:     # warm up, and the steps per sample
            fn()
            time.sleep(gap)
            counts[label] = calibrate(fn, min_time) if min_time > 0 else 1
        times = {label: [] for label, _ in impls}
        for _ in range(repeat):
            for label, fn in impls:
                time.sleep(gap)
                times[label].append(_time(fn, counts[label]))
        for label, _ in impls:
            t = times[label]
            rows.append((name, label, min(t) * 1e3, statistics.median(t) * 1e3))
            print(f"{name:8s} {label:10s} {counts[label]:6d} {min(t) * 1e3:9.2f} "
                  f"{statistics.median(t) * 1e3:10.2f}")
    return rows


# ---------------------------------------------------------------------------------------------
# pytest-benchmark

def _bench_shapes():
    return os.environ.get("FASTLSTM_BENCH_SHAPES", "small").split(",")


try:
    import pytest
except ImportError:  # pragma: no cover - script use without pytest
    pytest = None

if pytest is not None:
    @pytest.mark.parametrize("name", _bench_shapes())
    def test_train_step_fastlstm(benchmark, name):
        benchmark.group = f"train step {name}"
        step, *_ = make_fastlstm(SHAPES[name])
        benchmark(step)

    @pytest.mark.parametrize("name", _bench_shapes())
    def test_train_step_torch(benchmark, name):
        pytest.importorskip("torch")
        benchmark.group = f"train step {name}"
        _, model, X, dY = make_fastlstm(SHAPES[name])
        step, _ = make_torch(SHAPES[name], model, X, dY)
        benchmark(step)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="small,medium",
                        help="comma-separated from: " + ", ".join(SHAPES))
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--min-time", type=float, default=0.05,
                        help="seconds of back-to-back steps per sample (0: one step)")
    args = parser.parse_args(argv)
    if not args.min_time >= 0:
        parser.error(f"--min-time must be >= 0, got {args.min_time}")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"note: {var} is set; unset it for representative numbers", file=sys.stderr)
    side_by_side(args.shapes.split(","), args.repeat, min_time=args.min_time)


if __name__ == "__main__":
    main()
