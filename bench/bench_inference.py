"""Side-by-side inference benchmarks: fastlstm, ONNX Runtime, PyTorch and the NumPy reference.

One benchmark per (case, implementation), grouped by case, so pytest-benchmark prints the
implementations of each shape together.  The cases, weights, inputs and peer models are the
ones of ``python -m fastlstm bench`` (``fastlstm/_bench.py``); each peer's output is checked
against fastlstm's before it is timed.

    python -m pytest bench/bench_inference.py --benchmark-group-by=group --benchmark-columns=median,iqr,rounds
    python -m pytest bench/ --bench-quick --benchmark-disable -q      # CI: runs each once
"""

import pytest

from fastlstm import _bench

IMPLS = list(_bench.IMPLEMENTATIONS)


def _cases(quick):
    return _bench.QUICK if quick else _bench.CASES


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        quick = metafunc.config.getoption("--bench-quick", default=False)
        cases = _cases(quick)
        metafunc.parametrize("case", cases, ids=[c.name for c in cases], scope="module")


_built = {}


def _runs(case):
    """Build every implementation of a case once (shared weights, agreement checked)."""
    if case.name not in _built:
        _built.clear()  # keep one case's models alive at a time
        _built[case.name] = _bench.build_all(case, IMPLS)
    return _built[case.name]


@pytest.mark.parametrize("impl", IMPLS)
def test_inference(benchmark, quiet_gap, case, impl):
    runs, notes = _runs(case)
    if impl not in runs:
        pytest.skip(notes.get(impl, f"{impl} unavailable"))
    fn = runs[impl]
    benchmark.group = f"{case.name}: {case.title} B,T,I,H={case.shape} {case.dtype} {case.n_threads}t"
    benchmark.extra_info.update(case=case.name, impl=impl, flops=case.flops,
                                threads=case.n_threads, dtype=case.dtype)
    quiet_gap()
    if benchmark.disabled:
        benchmark(fn)
        return
    n = _bench.calibrate(fn, 0.02)
    rounds = 5 if case.flops > 5e9 else 15
    benchmark.pedantic(fn, rounds=rounds, iterations=n, warmup_rounds=1)
