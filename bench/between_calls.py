"""One build's inference calls in a process of its own, with allocations between them.

``compare_trees.py`` interleaves two builds in one process, so the two share one heap:
what one build's calls allocate decides where the other's buffers land.  Where a kernel's
speed depends on where its buffers land (memory last written by another core), run each
build in its own process instead, alternately, several times::

    for i in 1 2 3 4; do for t in /tmp/base .; do
        python bench/between_calls.py $t 8,100,64,128; done; done

``--churn`` allocates (and frees) between calls as a caller might: ``none``, ``300k`` (a
300 kB array), ``1500k``, ``mixed`` (three arrays of 8 kB to 560 kB), ``output`` (a
computed array of the small batch's output size).  ``--own-max-bytes`` sets the size up to
which threads owning rows pack a copy of the weights each.  Prints the median time of a call,
without the churn's own time, in microseconds.
"""

import argparse
import os
import sys
import time

import numpy as np

CHURN = {
    "none": lambda: None,
    "300k": lambda: np.ones(300_000 // 4, np.float32),
    "1500k": lambda: np.ones(1_500_000 // 4, np.float32),
    "mixed": lambda: [np.ones(k) for k in (1000, 20000, 70000)],
    "output": lambda: np.ones((8, 100, 128), np.float32) * 2,
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tree", help="tree of an in-place build")
    ap.add_argument("shape", help="B,T,I,H")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--churn", default="none", choices=sorted(CHURN))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--own-max-bytes", type=int, default=None,
                    help="set fastlstm.layers._PACKED_OWN_MAX_BYTES (own packed copies)")
    ns = ap.parse_args(argv)
    path = os.path.abspath(ns.tree)
    sys.path.insert(0, path)
    import fastlstm

    if not os.path.abspath(fastlstm.__file__).startswith(path + os.sep):
        raise SystemExit(f"{path}: no fastlstm package built there")
    if ns.own_max_bytes is not None:
        fastlstm.layers._PACKED_OWN_MAX_BYTES = ns.own_max_bytes
    B, T, I, H = (int(v) for v in ns.shape.split(","))
    dtype = np.dtype(ns.dtype)
    model = fastlstm.LSTM(I, H, random_state=0, dtype=dtype)
    X = np.random.default_rng(0).standard_normal((B, T, I)).astype(dtype)
    churn = CHURN[ns.churn]
    reps = max(3, int(0.04 / (B * T * I * H * 16e-12 + 2e-5)))
    for _ in range(2 * reps):
        model(X)
        churn()
    times = []
    for _ in range(ns.rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            model(X)
            churn()
        t1 = time.perf_counter()
        for _ in range(reps):
            churn()
        times.append(((t1 - t0) - (time.perf_counter() - t1)) / reps)
    print(f"{np.median(times) * 1e6:.1f}")


if __name__ == "__main__":
    main()
