"""pytest-benchmark configuration for the side-by-side suite.

- ``bench_*.py`` files in this folder are collected (``pytest bench/``).
- ``--bench-quick``: only the small shapes (what CI runs, with ``--benchmark-disable``).
- Before every benchmark the process sleeps ``--bench-gap`` seconds (0.2 by default), so
  that the previous implementation's idle thread pool (OpenBLAS, ONNX Runtime, OpenMP
  workers spin for about 0.13 s) has gone to sleep and does not slow the next one down.
- Run with ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` unset (see bench/RESULTS.md).
"""

import time

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("fastlstm bench")
    group.addoption("--bench-quick", action="store_true",
                    help="only the small shapes (fast enough for CI)")
    group.addoption("--bench-gap", type=float, default=0.2,
                    help="idle seconds before each benchmark")


def pytest_collect_file(parent, file_path):
    # bench_*.py are not test_*.py: collect them here unless named on the command line
    # (pytest collects files given explicitly by itself)
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture
def quiet_gap(request):
    """Sleep before the measurement so other thread pools go idle first."""
    gap = request.config.getoption("--bench-gap")

    def wait():
        time.sleep(gap)

    return wait
