"""Robustness benchmarks: the GIL is released during kernels; denormals do not slow steps.

    python -m pytest bench/bench_robustness.py --benchmark-group-by=group \\
        --benchmark-columns=median,iqr,rounds

- ``gil``: the same total work (2K serial kernel calls) done by one Python thread, and by
  two Python threads doing K calls each at the same time.  Kernels run with one OpenMP
  thread and BLAS held to one thread, so any speed-up comes from the two Python threads
  overlapping, which they can only do if the kernels release the GIL.  On 2 free cores the
  two-thread time is close to half the one-thread time (ratio in ``extra_info``).
- ``denormal``: ``step()`` time (one thread) with normal values, with subnormal inputs,
  with a subnormal state (so the recurrent product makes subnormals too), and both.

The machine's other load shows up directly in these numbers: run them on an idle machine
and repeat (ratios from one run differ by up to ~1.3x).
"""

import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastlstm as fl

GAP = 0.2  # idle seconds before a measurement: other thread pools go to sleep first
_medians = {}


def _gap():
    time.sleep(GAP)


# -- GIL ---------------------------------------------------------------------------------

GIL_SHAPE = dict(N=8, T=40, I=64, H=128)
CALLS = 16  # total calls per round, split over the threads


def _gil_model(proj):
    s = GIL_SHAPE
    # with a projection: the BLAS kernel; without: whichever kernel the library picks
    layer = fl.LSTM(s["I"], s["H"], random_state=0, n_threads=1,
                    proj_size=s["H"] if proj else None)
    X = np.random.default_rng(0).normal(size=(s["N"], s["T"], s["I"])).astype(np.float32)
    return layer, X


def _run_threads(layer, X, n_threads):
    per = CALLS // n_threads
    barrier = threading.Barrier(n_threads)

    def work():
        barrier.wait()
        for _ in range(per):
            layer(X)

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.parametrize("py_threads", [1, 2])
@pytest.mark.parametrize("proj", [False, True], ids=["plain", "projection"])
def test_gil_released(benchmark, proj, py_threads):
    layer, X = _gil_model(proj)
    benchmark.group = (f"gil: {CALLS} calls N,T,I,H={tuple(GIL_SHAPE.values())} "
                       f"{'projection ' if proj else ''}n_threads=1, BLAS 1 thread")
    with threadpool_limits(limits=1, user_api="blas"):
        expected, _ = layer(X)
        _gap()
        benchmark.pedantic(_run_threads, args=(layer, X, py_threads), rounds=15,
                           warmup_rounds=1)
        got, _ = layer(X)
    np.testing.assert_array_equal(got, expected)
    if benchmark.stats is not None:
        _medians[("gil", proj, py_threads)] = benchmark.stats.stats.median
        if ("gil", proj, 1) in _medians and py_threads == 2:
            ratio = _medians[("gil", proj, 2)] / _medians[("gil", proj, 1)]
            benchmark.extra_info["two_threads_over_one"] = round(ratio, 3)
            print(f"\ntwo Python threads / one thread, same total work: {ratio:.2f}")


# -- denormals ---------------------------------------------------------------------------

DEN_N, DEN_H = 32, 256


@pytest.mark.parametrize("values", ["normal", "subnormal_input", "subnormal_state",
                                    "subnormal_all"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_denormal_step(benchmark, dtype, values):
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(0)
    layer = fl.LSTM(DEN_H, DEN_H, dtype=dtype, random_state=0, n_threads=1)
    tiny = np.finfo(dtype).tiny
    x = rng.uniform(-1, 1, size=(DEN_N, DEN_H))
    c = rng.uniform(-1, 1, size=(DEN_N, DEN_H))
    h = rng.uniform(-1, 1, size=(DEN_N, DEN_H))
    if values in ("subnormal_input", "subnormal_all"):
        x = x * tiny / 4
    if values in ("subnormal_state", "subnormal_all"):
        c = c * tiny / 4
        h = h * tiny / 4
    x, c, h = (a.astype(dtype) for a in (x, c, h))
    sub = np.abs(x if values == "subnormal_input" else h)
    if values != "normal":
        assert ((sub < tiny) & (sub > 0)).mean() > 0.9
    state = fl.LSTMState(c, h)
    benchmark.group = f"denormal: step N={DEN_N} I=H={DEN_H} {dtype} n_threads=1"
    _gap()
    with threadpool_limits(limits=1, user_api="blas"):
        benchmark.pedantic(layer.step, args=(x, state), rounds=30, iterations=20,
                           warmup_rounds=2)
    if benchmark.stats is not None:
        key = ("den", dtype.name)
        _medians.setdefault(key, {})[values] = benchmark.stats.stats.median
        if "normal" in _medians[key] and values != "normal":
            ratio = _medians[key][values] / _medians[key]["normal"]
            benchmark.extra_info["over_normal"] = round(ratio, 3)
            print(f"\n{dtype} step with {values} / normal: {ratio:.2f}")
