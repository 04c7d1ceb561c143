"""Two builds of fastlstm side by side in one process, calls interleaved.

On a shared, noisy machine, two separate runs can differ by 2x; alternating the two
builds' calls in one process (ABAB..., then BABA...) and comparing medians is what makes
a 5-10 % change visible.  Each tree must be built in place (``python setup.py
build_ext --inplace``); typically a ``git worktree`` of the base commit and the working
tree::

    git worktree add /tmp/base HEAD && (cd /tmp/base && python setup.py build_ext --inplace)
    python bench/compare_trees.py /tmp/base . --shapes "8,100,64,128;32,100,128,256"
    python bench/compare_trees.py /tmp/base . --training small,medium
    python bench/compare_trees.py /tmp/base . --shapes "1,1,256,512" --step
    python bench/compare_trees.py /tmp/base . --shapes "8,1,64,128" --force packed-rows
    python bench/compare_trees.py . . --shapes "8,100,64,128" --force-base packed-rows \
        --force packed-units

Inference shapes are B,T,I,H (one layer); ``--training`` takes the shapes of
``bench_training.py`` (forward with cache + backward, ``input_grad=False`` where the build
has it).  Prints the
medians, their ratio (above 1: the second tree is faster) and the largest difference
between the two builds' outputs.
"""

import argparse
import importlib
import inspect
import os
import sys
import time

import numpy as np


def load(path):
    """Import the fastlstm package found in ``path`` (a fresh copy of the modules)."""
    path = os.path.abspath(path)
    for name in [k for k in sys.modules if k == "fastlstm" or k.startswith("fastlstm.")]:
        del sys.modules[name]
    sys.path.insert(0, path)
    try:
        mod = importlib.import_module("fastlstm")
    finally:
        sys.path.pop(0)
    if not os.path.abspath(mod.__file__).startswith(path + os.sep):
        raise SystemExit(f"{path}: no fastlstm package built there (got {mod.__file__})")
    return mod


def interleave(calls, rounds, clock):
    """Median seconds per call of each function, calls alternating between them."""
    times = [[] for _ in calls]
    for r in range(rounds):
        order = range(len(calls)) if r % 2 == 0 else reversed(range(len(calls)))
        for j in order:
            t0 = clock()
            calls[j]()
            times[j].append(clock() - t0)
    return [float(np.median(t)) for t in times]


def inference(mods, shape, n_threads, dtype, rounds, clock, step=False):
    B, T, I, H = shape
    models = [m.LSTM(I, H, dtype=dtype, n_threads=n_threads, random_state=0) for m in mods]
    X = np.random.default_rng(0).standard_normal((B, T, I)).astype(models[0].W.dtype)
    diff = float(np.abs(models[0](X)[0] - models[1](X)[0]).max())
    flops = 2 * B * T * 4 * H * (I + H)
    if step:                 # step() calls on X's first step (T is ignored)
        x, state = X[:, 0], models[0].zero_state(B)
        diff = float(np.abs(models[0].step(x, state)[0] - models[1].step(x, state)[0]).max())
        flops = 2 * B * 4 * H * (I + H)
    # calls per sample: about 30 ms of them (timed on the base build)
    t0 = time.perf_counter()
    models[0].step(x, state) if step else models[0](X)
    reps = max(1, int(0.03 / max(time.perf_counter() - t0, 1e-6)))

    def call(model):
        def run():
            for _ in range(reps):
                if step:
                    model.step(x, state)
                else:
                    model(X)
        return run

    a, b = interleave([call(m) for m in models], rounds, clock)
    return a / reps, b / reps, diff, flops


def training(mods, name, rounds, clock):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_training

    shape = bench_training.SHAPES[name]
    steps, grads = [], []
    for m in mods:
        layers = [m.LSTM(shape["I"] if k == 0 else shape["H"], shape["H"], random_state=k)
                  for k in range(shape["layers"])]
        model = m.MultiLSTM(layers)
        rng = np.random.default_rng(0)
        X = rng.normal(size=(shape["B"], shape["T"], shape["I"])).astype(np.float32)
        dY = rng.normal(size=(shape["B"], shape["T"], shape["H"])).astype(np.float32)

        # builds older than input_grad compute dX as well
        kw = ({"input_grad": False}
              if "input_grad" in inspect.signature(model.backward).parameters else {})

        def step(model=model, X=X, dY=dY, kw=kw):
            _, _, cache = model.forward(X)
            model.backward(dY, cache, **kw)

        step()
        grads.append(model.flat_grads.copy())
        steps.append(step)
    a, b = interleave(steps, rounds, clock)
    return a, b, float(np.abs(grads[0] - grads[1]).max())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="tree of the first build")
    ap.add_argument("new", help="tree of the second build")
    ap.add_argument("--shapes", default="", help='inference shapes "B,T,I,H;B,T,I,H"')
    ap.add_argument("--training", default="", help="training shapes: small,medium,large")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--cpu-time", action="store_true",
                    help="process CPU time instead of wall time (1 thread only)")
    ap.add_argument("--step", action="store_true",
                    help="time step() on one step of each inference shape")
    ap.add_argument("--force", default=None,
                    help="kernel path in both builds (tests' names: small, blas, "
                         "packed-rows, packed-units)")
    ap.add_argument("--force-base", default=None,
                    help="kernel path in the base build, overriding --force there (one "
                         "tree against itself on two paths: . . --force-base packed-rows "
                         "--force packed-units)")
    args = ap.parse_args(argv)
    clock = time.process_time if args.cpu_time else time.perf_counter
    mods = [load(args.base), load(args.new)]
    if args.force:
        for m in mods:
            m.layers._FORCE_PATH = args.force
    if args.force_base:
        mods[0].layers._FORCE_PATH = args.force_base
    for spec in filter(None, args.shapes.split(";")):
        shape = tuple(int(v) for v in spec.split(","))
        a, b, diff, flops = inference(mods, shape, args.threads, args.dtype, args.rounds,
                                      clock, args.step)
        what = " step()" if args.step else ""
        print(f"{spec}{what} ({args.threads} thr, {args.dtype}): base {a * 1e3:.3f} ms, "
              f"new {b * 1e3:.3f} ms, ratio {a / b:.3f} ({flops / b / 1e9:.0f} GFLOP/s), "
              f"max difference {diff:.1e}")
    for name in filter(None, args.training.split(",")):
        a, b, diff = training(mods, name, args.rounds, clock)
        print(f"training {name}: base {a * 1e3:.2f} ms, new {b * 1e3:.2f} ms, "
              f"ratio {a / b:.3f}, max gradient difference {diff:.1e}")


if __name__ == "__main__":
    main()
