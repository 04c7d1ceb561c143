"""A model against its frozen copy (``fastlstm.freeze``), interleaved in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/frozen_vs_plain.py
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/frozen_vs_plain.py \
        --shapes "8,100,64,128;1,100,32,64" --rounds 31

Whole-sequence calls of each shape (B,T,I,H), then ``step()`` loops of B rows: samples of
at least 0.05 s each, the two models alternating (which one goes first alternates too);
prints the medians and their ratio (above 1: the frozen copy is faster).  Both give the
same bits (checked first).
"""

import argparse
import statistics
import time

import numpy as np

import fastlstm as fl


def _sample(fn, min_time=0.05):
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return elapsed / n


def compare(fns, rounds):
    """{name: median seconds per call}, the callables alternating in order and reverse."""
    samples = {name: [] for name in fns}
    names = list(fns)
    for name in names:
        for _ in range(20):
            fns[name]()
    for r in range(rounds):
        for name in (names if r % 2 else names[::-1]):
            samples[name].append(_sample(fns[name]))
    return {name: statistics.median(v) for name, v in samples.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="8,100,64,128;1,100,32,64;32,100,128,256;"
                        "8,2000,64,128")
    parser.add_argument("--step-shapes", default="8,64,128;32,128,256")
    parser.add_argument("--rounds", type=int, default=31)
    ns = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    for spec in filter(None, ns.shapes.split(";")):
        B, T, I, H = map(int, spec.split(","))
        model = fl.LSTM(I, H, random_state=0, n_threads=2)
        frozen = fl.freeze(model)
        X = rng.standard_normal((B, T, I)).astype(np.float32)
        assert np.array_equal(model(X)[0], frozen(X)[0])
        med = compare({"plain": lambda: model(X), "frozen": lambda: frozen(X)}, ns.rounds)
        print(f"call {spec:16s} plain {med['plain'] * 1e6:9.1f} µs  frozen "
              f"{med['frozen'] * 1e6:9.1f} µs  ratio {med['plain'] / med['frozen']:.3f}")
    for spec in filter(None, ns.step_shapes.split(";")):
        B, I, H = map(int, spec.split(","))
        model = fl.LSTM(I, H, random_state=0, n_threads=2)
        frozen = fl.freeze(model)
        x = rng.standard_normal((B, I)).astype(np.float32)
        state = model.zero_state(B)
        assert np.array_equal(model.step(x, state)[0], frozen.step(x, state)[0])
        med = compare({"plain": lambda: model.step(x, state),
                       "frozen": lambda: frozen.step(x, state)}, ns.rounds)
        print(f"step {spec:16s} plain {med['plain'] * 1e6:9.1f} µs  frozen "
              f"{med['frozen'] * 1e6:9.1f} µs  ratio {med['plain'] / med['frozen']:.3f}")


if __name__ == "__main__":
    main()
