"""No leaks: 10 000 calls of every public entry point leave memory flat.

Resident memory (RSS, which also sees leaks in C code: kernel workspaces, BLAS) and
Python allocations (tracemalloc) are measured after a warm-up; reference counts of the
arguments and of the model's arrays must not move.  Shapes are tiny but chosen so that a
leaked kernel workspace or output per call would add megabytes over 10 000 calls.
"""

import gc
import sys
import tracemalloc
import weakref

import numpy as np
import pytest

import fastlstm as fl

CALLS = 10_000
WARMUP = 300
# A leak of one output array (N*T*Hout floats = 2 KiB) or one kernel workspace per call
# would add about 20 MiB here; allocator noise stays far below this bound.
RSS_BOUND = 4 << 20
PY_BOUND = 256 << 10

N, T, I, H = 4, 8, 4, 16

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads RSS from /proc/self/statm")


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * __import__("os").sysconf("SC_PAGE_SIZE")


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, T, I)).astype(np.float32)
    L = np.array([T, 3, 0, 5])
    state = fl.LSTMState(rng.normal(size=(N, H)).astype(np.float32),
                         rng.normal(size=(N, H)).astype(np.float32))
    return X, L, state


def _has_training():
    return hasattr(fl.LSTM, "forward") and hasattr(fl.LSTM, "backward")


def _estimators():
    try:
        from fastlstm import estimators
    except ImportError:
        return None
    return estimators


def _entry_points():
    """name -> (callable making one call, objects whose refcounts must not move)."""
    X, L, state = _data()
    layer = fl.LSTM(I, H, peepholes=True, random_state=0)
    proj = fl.LSTM(I, H, proj_size=6, cell_clip=1.0, proj_clip=0.5, random_state=1)
    bi = fl.Bidirectional(fl.LSTM(I, H, random_state=2), fl.LSTM(I, 5, random_state=3))
    stack = fl.MultiLSTM([fl.LSTM(I, H, random_state=4), fl.LSTM(H, 6, random_state=5)])
    x = X[:, 0]
    points = {
        "LSTM.__call__": (lambda: layer(X, initial_state=state, lengths=L), (X, L, layer.W)),
        "LSTM.__call__ reverse projection": (
            lambda: proj(X, lengths=L, reverse=True), (X, L, proj.P)),
        "LSTM.step": (lambda: layer.step(x, state), (x, state.c, state.h, layer.U)),
        "Bidirectional.__call__": (lambda: bi(X, lengths=L), (X, L)),
        "MultiLSTM.__call__": (lambda: stack(X, lengths=L), (X, L, stack.flat_params)),
        "MultiLSTM.step": (lambda: stack.step(x), (x,)),
        "rejected input": (lambda: _rejected(layer, X), (X,)),
    }
    if _has_training():
        dY = np.ones((N, T, H), np.float32)

        def train_step():
            Y, s, cache = layer.forward(X, initial_state=state, lengths=L)
            return layer.backward(dY, cache)

        dY_stack = np.ones((N, T, 6), np.float32)

        def train_stack():
            Y, s, cache = stack.forward(X, lengths=L)
            return stack.backward(dY_stack, cache)

        points["LSTM.forward+backward"] = (train_step, (X, L, dY, state.c, layer.flat_grads))
        points["MultiLSTM.forward+backward"] = (train_stack, (X, dY_stack))
    return points


def _rejected(layer, X):
    try:
        layer(X, lengths=[T + 1] * N)
    except ValueError:
        return None
    raise AssertionError("bad lengths were accepted")


ENTRY_NAMES = ["LSTM.__call__", "LSTM.__call__ reverse projection", "LSTM.step",
               "Bidirectional.__call__", "MultiLSTM.__call__", "MultiLSTM.step",
               "rejected input", "LSTM.forward+backward", "MultiLSTM.forward+backward"]


def _check_flat(fn, keep, calls=CALLS):
    for _ in range(WARMUP):
        fn()
    gc.collect()
    refs = [sys.getrefcount(obj) for obj in keep]
    rss0 = _rss()
    for _ in range(calls):
        fn()
    gc.collect()
    grown = _rss() - rss0
    assert grown < RSS_BOUND * calls // CALLS, f"RSS grew by {grown / 2**20:.1f} MiB over {calls} calls"
    refs_after = [sys.getrefcount(obj) for obj in keep]
    assert refs_after == refs, "reference leak on an argument"

    tracemalloc.start()
    try:
        for _ in range(WARMUP):
            fn()
        gc.collect()
        before = tracemalloc.take_snapshot()
        for _ in range(calls // 10):
            fn()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    stats = after.compare_to(before, "lineno")
    growth = sum(s.size_diff for s in stats)
    assert growth < PY_BOUND, f"Python allocations grew by {growth} bytes: {stats[:3]}"


@pytest.mark.parametrize("name", ENTRY_NAMES)
def test_ten_thousand_calls_leave_memory_flat(name):
    points = _entry_points()
    if name not in points:
        pytest.skip("the training API (LSTM.forward / LSTM.backward) is not in this build")
    fn, keep = points[name]
    _check_flat(fn, keep)


# predict runs scikit-learn's validation (about 0.5 ms a call here): the full 10 000 calls
# for the regressor, fewer for the other two, whose kernels are the same
ESTIMATOR_METHODS = [("LSTMRegressor", "predict", CALLS),
                     ("LSTMClassifier", "predict_proba", CALLS // 5),
                     ("LSTMEncoder", "transform", CALLS // 5)]


# (a filterwarnings mark naming sklearn's ConvergenceWarning would make pytest import
# sklearn to resolve it, an internal error where sklearn is not installed)
@pytest.mark.filterwarnings("ignore:.*has not converged:UserWarning")
@pytest.mark.parametrize("name,method,calls", ESTIMATOR_METHODS)
def test_estimator_predict_leaves_memory_flat(name, method, calls):
    pytest.importorskip("sklearn")
    estimators = _estimators()
    if estimators is None:
        pytest.skip("fastlstm.estimators is not in this build")
    cls = getattr(estimators, name, None)
    if cls is None:
        pytest.skip(f"fastlstm.estimators has no {name}")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, T, I)).astype(np.float32)
    y = rng.integers(0, 2, size=16) if name == "LSTMClassifier" else rng.normal(size=16)
    est = cls().set_params(**{k: v for k, v in dict(hidden_sizes=(4,), max_iter=2,
                                                    random_state=0).items()
                              if k in cls().get_params()})
    est.fit(X) if name == "LSTMEncoder" else est.fit(X, y)
    Xp = X[:N]
    fn = getattr(est, method)
    _check_flat(lambda: fn(Xp), (Xp, est), calls=calls)


def test_outputs_hold_no_hidden_references():
    """Returned arrays are owned by the caller alone: nothing keeps them alive afterwards."""
    X, L, state = _data()
    layer = fl.LSTM(I, H, random_state=0)
    Y, s = layer(X, initial_state=state, lengths=L)
    out, s2 = layer.step(X[:, 0], state)
    refs = [weakref.ref(a) for a in (Y, s.c, s.h, out, s2.c, s2.h)]
    del Y, s, out, s2
    assert all(r() is None for r in refs)
    n_params = sys.getrefcount(layer.flat_params)
    n_x = sys.getrefcount(X)
    for _ in range(100):
        layer(X)
        layer.step(X[:, 0])
    # (counted outside the assert: pytest's assertion rewriting holds temporaries)
    after = sys.getrefcount(layer.flat_params), sys.getrefcount(X)
    assert after == (n_params, n_x)
