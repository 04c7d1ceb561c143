"""Thread safety: concurrent Python threads, n_threads values, OpenMP limits.

Calls from several Python threads at once must give exactly the serial results, whatever
the models' ``n_threads`` and whether the batch is split into row blocks (OpenMP) or not.
"""

import io
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from conftest import randomize, ref, ref_options, ref_params

import fastlstm as fl
from fastlstm import _threads
from fastlstm import layers as layers_mod

N_PY_THREADS = 8


def _models():
    """Models of several kinds; batch 24 is split into row blocks for the big ones."""
    rng = np.random.default_rng(7)
    return [
        randomize(fl.LSTM(16, 32, n_threads=2, random_state=0), rng),
        randomize(fl.LSTM(16, 32, peepholes=True, proj_size=8, cell_clip=0.5, n_threads=None,
                          dtype=np.float64, random_state=1), rng),
        randomize(fl.LSTM(16, 4, n_threads=1, random_state=2), rng),   # one row block
        fl.Bidirectional(randomize(fl.LSTM(16, 24, n_threads=-1, random_state=3), rng),
                         randomize(fl.LSTM(16, 20, n_threads=2, random_state=4), rng)),
        fl.MultiLSTM([randomize(fl.LSTM(16, 32, n_threads=2, random_state=5), rng),
                      randomize(fl.LSTM(32, 16, proj_size=12, n_threads=2, random_state=6), rng)]),
    ]


def _inputs(k):
    rng = np.random.default_rng(100 + k)
    N = (24, 3, 24, 1, 24)[k % 5]
    X = rng.normal(size=(N, 9, 16))
    L = rng.integers(0, 10, size=N)
    return X, L


def _run(model, X, L, reverse):
    if isinstance(model, fl.LSTM):
        Y, s = model(X, lengths=L, reverse=reverse)
        return [Y, s.c, s.h]
    Y, states = model(X, lengths=L)
    flat = [Y]
    for s in states:
        flat += [s[0][0], s[0][1], s[1][0], s[1][1]] if isinstance(s[0], fl.LSTMState) \
            else [s.c, s.h]
    return flat


def _steps(model, X):
    """A few ``step`` calls (single-layer models and plain stacks)."""
    out, state = None, None
    outs = []
    for t in range(3):
        out, state = model.step(X[:, t], state)
        outs.append(out)
    return outs


def _tasks():
    """(model index, input index, reverse, kind) tuples, cheap to iterate over."""
    tasks = []
    for m in range(5):
        for k in range(5):
            for reverse in (False, True):
                tasks.append((m, k, reverse, "call"))
            if m in (0, 1, 2, 4):
                tasks.append((m, k, False, "step"))
    return tasks


def _do(models, inputs, task):
    m, k, reverse, kind = task
    X, L = inputs[k]
    if kind == "step":
        return _steps(models[m], X)
    return _run(models[m], X, L, reverse)


def _hammer(work, n_threads=N_PY_THREADS):
    """Run ``work(thread_index)`` on n_threads threads that start together; re-raise errors."""
    barrier = threading.Barrier(n_threads)
    errors = []

    def target(i):
        try:
            barrier.wait(timeout=60)
            work(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a worker thread did not finish (hang)"
    if errors:
        raise errors[0]


def test_serial_results_match_reference():
    """The serial results the concurrency tests compare with are right in the first place."""
    models = _models()
    X, L = _inputs(0)
    for m in (0, 1):
        layer = models[m]
        Y, c, h = _run(layer, X, L, True)
        Yr, (cr, hr) = ref.lstm_forward(X.astype(layer.dtype).astype(np.float64),
                                        ref_params(layer), lengths=L, reverse=True,
                                        **ref_options(layer))
        tol = dict(rtol=1e-5, atol=2e-6) if layer.dtype == np.float32 else dict(rtol=1e-12)
        np.testing.assert_allclose(Y, Yr, **tol)
        np.testing.assert_allclose(c, cr, **tol)
    assert models[0]._chunks_for(24) > 1, "the big models must take the row-block path"
    assert models[2]._chunks_for(3) == 1


def test_same_models_from_eight_threads_equal_serial():
    """8 threads share the same model objects; each of a few hundred calls is bit-exact."""
    models = _models()
    inputs = [_inputs(k) for k in range(5)]
    tasks = _tasks()
    serial = [_do(models, inputs, task) for task in tasks]
    calls_per_thread = 40

    def work(i):
        order = np.random.default_rng(i).permutation(len(tasks))
        for j in order[:calls_per_thread]:
            got = _do(models, inputs, tasks[j])
            for a, b in zip(got, serial[j]):
                np.testing.assert_array_equal(a, b, err_msg=f"task {tasks[j]} thread {i}")

    _hammer(work)


def test_different_models_per_thread_equal_serial():
    """Each thread owns its models (built from the same seeds); results equal serial calls."""
    inputs = [_inputs(k) for k in range(5)]
    tasks = _tasks()
    serial = [_do(_models(), inputs, task) for task in tasks]
    owned = [_models() for _ in range(N_PY_THREADS)]

    def work(i):
        for rep in range(2):
            for j in np.random.default_rng(50 + i + rep).permutation(len(tasks))[:20]:
                got = _do(owned[i], inputs, tasks[j])
                for a, b in zip(got, serial[j]):
                    np.testing.assert_array_equal(a, b)

    _hammer(work)


def test_inputs_shared_between_threads_are_not_written():
    models = _models()
    X, L = _inputs(0)
    X.flags.writeable = False
    c0 = np.ones((24, 32), np.float32)
    before = c0.copy()

    def work(i):
        for _ in range(10):
            models[0](X, initial_state=(c0, c0), lengths=L)

    _hammer(work)
    np.testing.assert_array_equal(c0, before)


def _blas_threads():
    return sorted(i["num_threads"] for i in _threads.controller().info()
                  if i["user_api"] == "blas")


def test_blas_limits_restored_after_concurrent_threaded_calls():
    """The threaded path holds BLAS to one thread; overlapping calls restore it exactly once."""
    from threadpoolctl import threadpool_limits

    models = _models()
    X, L = _inputs(0)
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        _hammer(lambda i: [models[0](X, lengths=L) for _ in range(15)])
        assert _blas_threads() == before
    assert _threads._BlasSingleThread._depth == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [1, 7, 24, 200])
def test_n_threads_values_give_identical_results(dtype, N):
    rng = np.random.default_rng(N)
    X = rng.normal(size=(N, 11, 16))
    L = rng.integers(0, 12, size=N)
    results = []
    for n_threads in (1, 2, None, -1, 3):
        layer = fl.LSTM(16, 32, peepholes=True, proj_size=8, dtype=dtype, random_state=0,
                        n_threads=n_threads)
        Y, s = layer(X, lengths=L, reverse=True)
        results.append((n_threads, Y, s.c, s.h))
    # the process-wide default applies to n_threads=None
    old = _threads._state["default"]
    try:
        for default in (1, 2):
            fl.set_n_threads(default)
            layer = fl.LSTM(16, 32, peepholes=True, proj_size=8, dtype=dtype, random_state=0)
            Y, s = layer(X, lengths=L, reverse=True)
            results.append((f"default={default}", Y, s.c, s.h))
    finally:
        fl.set_n_threads(old)
    first = results[0]
    for other in results[1:]:
        for a, b in zip(first[1:], other[1:]):
            np.testing.assert_array_equal(a, b, err_msg=f"n_threads={other[0]}")


def test_threadpoolctl_openmp_limit_is_honoured():
    from threadpoolctl import threadpool_limits

    if not fl.show_config(file=io.StringIO())["openmp"]:
        pytest.skip("serial build: OpenMP limits do not apply")
    layer = fl.LSTM(16, 32, random_state=0, n_threads=None)
    X = np.random.default_rng(0).normal(size=(64, 5, 16))
    free_Y, _ = layer(X)
    with threadpool_limits(limits=1, user_api="openmp"):
        assert fl.get_n_threads() == 1
        assert _threads.resolve_n_threads(None) == 1
        assert _threads.resolve_n_threads(-1) == 1
        limited_Y, _ = layer(X)
    np.testing.assert_array_equal(free_Y, limited_Y)
    assert fl.get_n_threads() == min(_threads.usable_cores(), _threads._forward.omp_max_threads())


CHILD = textwrap.dedent(
    """
    import io, json, os, sys
    import numpy as np
    import fastlstm as fl
    from fastlstm import _threads
    out = {"get_n_threads": fl.get_n_threads(),
           "resolve_2": _threads.resolve_n_threads(2),
           "resolve_-1": _threads.resolve_n_threads(-1),
           "config": fl.show_config(file=io.StringIO())["n_threads"]}
    layer = fl.LSTM(16, 32, random_state=0, n_threads=None)
    X = np.random.default_rng(0).normal(size=(64, 5, 16))
    Y, s = layer(X)
    np.save(sys.argv[1], Y)
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("variable", ["OMP_NUM_THREADS", "OMP_THREAD_LIMIT"])
@pytest.mark.parametrize("omp_num_threads", ["1", "2"])
def test_omp_num_threads_env_is_honoured(omp_num_threads, variable, tmp_path):
    if not fl.show_config(file=io.StringIO())["openmp"]:
        pytest.skip(f"serial build: {variable} does not apply")
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    env[variable] = omp_num_threads
    env.pop("FASTLSTM_N_THREADS", None)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "y.npy")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = min(int(omp_num_threads), _threads.usable_cores())
    assert out["get_n_threads"] == expected
    assert out["config"] == expected
    assert out["resolve_-1"] == expected
    # an explicit request is kept unless OpenMP is limited to one thread
    assert out["resolve_2"] == (1 if expected == 1 else 2)
    # and the numbers do not depend on it
    layer = fl.LSTM(16, 32, random_state=0)
    Y, _ = layer(np.random.default_rng(0).normal(size=(64, 5, 16)))
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), Y)


BLAS_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import fastlstm as fl
    from threadpoolctl import threadpool_limits
    out = []
    for N, proj, H in ((3, 9, 256), (1, 5, 64), (2, 7, 40), (7, 12, 96)):
        m = fl.LSTM(128, H, proj_size=proj, random_state=0)
        X = np.random.default_rng(N).normal(size=(N, 25, 128)).astype(np.float32)
        Y, s = m(X)
        with threadpool_limits(limits=1):
            Y1, s1 = m(X)
        assert np.array_equal(Y, Y1) and np.array_equal(s.c, s1.c), (N, proj, H)
        out.append(Y)
    np.savez(sys.argv[1], *out)
    """
)


def test_blas_path_results_do_not_depend_on_blas_threads(tmp_path):
    """Calls on the BLAS kernel (projection layers) that are not split into row blocks
    give the same bits under OMP_NUM_THREADS=1 or 2 and under threadpool_limits(1): their
    gemms run on one BLAS thread (they ran on BLAS's own thread count, whose summation
    order differs)."""
    got = []
    for omp in ("1", "2"):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "OPENBLAS_"))}
        env.update(OMP_NUM_THREADS=omp)
        path = tmp_path / f"y{omp}.npz"
        proc = subprocess.run([sys.executable, "-c", BLAS_CHILD, str(path)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        got.append(np.load(path))
    for key in got[0].files:
        np.testing.assert_array_equal(got[0][key], got[1][key])


BIND_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import fastlstm as fl
    layer = fl.LSTM(16, 32, random_state=0)
    Y, _ = layer(np.random.default_rng(0).normal(size=(64, 5, 16)))
    np.save(sys.argv[1], Y)
    print(fl.get_n_threads())
    """
)


def test_omp_proc_bind_keeps_every_core(tmp_path):
    """With OMP_PROC_BIND (GNU OpenMP binds the initial thread to one place when it
    loads, narrowing that thread's affinity), the kernels still use every core and give
    the same bits (they ran on one thread, with another row-block split)."""
    if not fl.show_config(file=io.StringIO())["openmp"]:
        pytest.skip("serial build")
    runs = []
    for extra in ({}, dict(OMP_PROC_BIND="close", OMP_PLACES="cores")):
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
        env.update(OMP_NUM_THREADS="2", **extra)
        env.pop("FASTLSTM_N_THREADS", None)
        path = tmp_path / f"y{len(runs)}.npy"
        proc = subprocess.run([sys.executable, "-c", BIND_CHILD, str(path)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        runs.append((int(proc.stdout.split()[-1]), np.load(path)))
    assert runs[1][0] == runs[0][0] == min(2, _threads.usable_cores())
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_usable_cores_follow_the_affinity_mask():
    """usable_cores counts the CPUs of the calling thread's affinity mask, as
    os.sched_getaffinity does, also after the mask changes (read at each call)."""
    from fastlstm import _forward

    assert _threads.usable_cores() == max(len(os.sched_getaffinity(0)),
                                          _forward.omp_bound_places())
    cpus = sorted(os.sched_getaffinity(0))
    code = textwrap.dedent(f"""
        import os
        from fastlstm import _forward, _threads
        before = _threads.usable_cores()
        os.sched_setaffinity(0, {{{cpus[0]}}})
        print(before, _forward.affinity_count(), _threads.usable_cores(),
              _threads.get_n_threads())
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    env.pop("FASTLSTM_N_THREADS", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [int(v) for v in proc.stdout.split()] == [len(cpus), 1, 1, 1]


def _openblas_pthreads():
    return any(i["internal_api"] == "openblas" and i.get("threading_layer") == "pthreads"
               for i in _threads.controller().info())


def test_blas_held_to_one_thread_whichever_thread_calls(monkeypatch):
    """BLAS is held to one thread during threaded kernels called from any Python thread.

    threadpoolctl (>= 3.8) lets only one Python thread at a time change a pthreads
    OpenBLAS's limit; a thread that took that control and kept it would make the limit
    silently ignored in every other thread (server, Dask and joblib worker threads).
    """
    from threadpoolctl import threadpool_limits

    from fastlstm import layers

    if _threads.usable_cores() < 2:
        pytest.skip("needs 2 usable cores")
    seen = []
    real = layers._forward.forward

    def spy(*args, **kwargs):
        seen.append(_blas_threads())
        return real(*args, **kwargs)

    model = fl.LSTM(16, 32, proj_size=8, random_state=0, n_threads=2)  # BLAS kernel
    X = np.random.default_rng(0).normal(size=(64, 3, 16))
    assert model._chunks_for(64) > 1
    expected, _ = model(X)
    with threadpool_limits(limits=2, user_api="blas"):
        original = _blas_threads()
        assert max(original) == 2
        monkeypatch.setattr(layers._forward, "forward", spy)
        model(X)                                     # the main thread first
        _hammer(lambda i: [np.testing.assert_array_equal(model(X)[0], expected)
                           for _ in range(5)], n_threads=4)
        model(X)
        monkeypatch.setattr(layers._forward, "forward", real)
        assert len(seen) == 22
        assert all(max(b) == 1 for b in seen), seen
        assert _blas_threads() == original           # and restored afterwards


def test_blas_limit_restored_when_the_last_call_ends_on_another_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):
        original = _blas_threads()
        entered, release = threading.Event(), threading.Event()
        inside = []

        def first():                  # enters first, leaves first
            with _threads.blas_single_thread(openmp=False):
                entered.set()
                release.wait(30)

        t = threading.Thread(target=first)
        t.start()
        assert entered.wait(30)
        with _threads.blas_single_thread(openmp=False):   # enters second, leaves last
            release.set()
            t.join()
            inside.append(_blas_threads())
        assert max(inside[0]) == 1
        assert _blas_threads() == original


def _progress_while(fn):
    """Iterations of a Python loop the calling thread runs while another thread runs
    ``fn()``, relative to the same loop run alone (about 0 if ``fn`` holds the GIL)."""
    stop = threading.Event()
    timer = threading.Timer(0.1, stop.set)
    timer.start()
    n = 0
    while not stop.is_set():
        n += 1
    alone = n / 0.1
    done = threading.Event()
    worker = threading.Thread(target=lambda: (fn(), done.set()))
    n = 0
    start = time.perf_counter()
    worker.start()
    while not done.is_set():
        n += 1
    elapsed = time.perf_counter() - start
    worker.join()
    return n / elapsed / alone


GIL_PATHS = ["auto"] + (["blas", "small", "packed-rows", "packed-units"]
                        if hasattr(layers_mod, "_FORCE_PATH") else [])


@pytest.mark.parametrize("path", GIL_PATHS + ["projection", "backward"])
def test_kernels_release_the_gil(path, monkeypatch):
    """Another Python thread keeps running while a kernel computes.

    (A call that held the GIL for its whole duration, e.g. a backtracking regular
    expression, lets the other thread make about 1 % of its normal progress.)
    """
    if path not in ("auto", "projection", "backward"):
        monkeypatch.setattr(layers_mod, "_FORCE_PATH", path)
    layer = fl.LSTM(32, 64, proj_size=16 if path == "projection" else None, random_state=0,
                    n_threads=1)
    X = np.random.default_rng(0).normal(size=(16, 1500, 32)).astype(np.float32)
    if path == "backward":
        if not hasattr(layer, "backward"):
            pytest.skip("no training API in this build")
        Y, _, cache = layer.forward(X)
        dY = np.ones_like(Y)
        ratio = _progress_while(lambda: layer.backward(dY, cache))
    else:
        ratio = _progress_while(lambda: layer(X))
    assert ratio > 0.1, f"the other thread ran at {ratio:.1%} of its speed: GIL held?"


def test_seeded_initialisation_is_the_same_under_any_blas_thread_count():
    """The orthogonal recurrent kernel comes from a QR factorisation, whose bits depended
    on BLAS's thread count: the same random_state gave different weights (1.8e-16) under
    OMP_NUM_THREADS=1 / OPENBLAS_NUM_THREADS=1 than with BLAS's default threads."""
    code = textwrap.dedent("""
        import hashlib, numpy as np, fastlstm as fl
        h = hashlib.sha256()
        for seed in range(12):
            h.update(fl.LSTM(50, 130, random_state=seed, dtype=np.float64)
                     .flat_params.tobytes())
        print(h.hexdigest())
    """)
    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    digests = set()
    for extra in ({}, {"OMP_NUM_THREADS": "1"}, {"OPENBLAS_NUM_THREADS": "1"},
                  {"OPENBLAS_NUM_THREADS": "2"}):
        out = subprocess.run([sys.executable, "-c", code], env={**base, **extra},
                             capture_output=True, text=True, timeout=120, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_one_row_products_share_columns_exactly_without_blas(monkeypatch):
    """A batch of one row runs its products in the kernel's own vector-matrix loop, where
    every output is one chain of multiply-adds whatever the threads: n_threads 1 and 2
    and any BLAS thread count give the same bits, and a single step (nothing for BLAS to
    do) sets no BLAS limit."""
    from threadpoolctl import threadpool_limits

    entered = []
    real = _threads.blas_single_thread

    def spy(*args, **kwargs):
        entered.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(_threads, "blas_single_thread", spy)
    rng = np.random.default_rng(5)
    # products of 256 x 2048 and more multiply-adds: large enough to share their columns
    plain = randomize(fl.LSTM(256, 512, random_state=0), rng, scale=0.05)
    proj = randomize(fl.LSTM(256, 512, proj_size=130, peepholes=True, cell_clip=2.0,
                             proj_clip=0.5, random_state=1), rng, scale=0.05)  # BLAS kernel
    x = rng.normal(size=(1, 256)).astype(np.float32)
    X = rng.normal(size=(1, 3, 256)).astype(np.float32)
    for model in (plain, proj):
        s0 = (rng.normal(size=(1, 512)), rng.normal(size=(1, model.output_size)))
        runs = {"step": lambda: model.step(x, s0),
                "sequence": lambda: model(X, initial_state=s0)}
        for what, run in runs.items():
            for isa in (-1, 0):     # the instruction set chosen, and the baseline's
                layers_mod._forward.packed_isa(isa)
                outs = []
                try:
                    for nt in (1, 2):
                        model.n_threads = nt
                        for blas in (1, 2):
                            with threadpool_limits(blas):
                                y, st = run()
                            outs.append(np.concatenate([np.ravel(y), st.c.ravel(),
                                                        st.h.ravel()]))
                finally:
                    layers_mod._forward.packed_isa(-1)
                for other in outs[1:]:
                    np.testing.assert_array_equal(other, outs[0], err_msg=f"{what} {isa}")
        entered.clear()
        y, st = model.step(x, s0)
        assert not entered
        want, c = ref.lstm_step(x.astype(np.float64), *[np.asarray(v, np.float64) for v in s0],
                                ref_params(model), **ref_options(model))
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(st.c, c, rtol=1e-4, atol=1e-5)


def test_n_threads_of_a_stack_or_bidirectional_sets_every_layer():
    """Setting n_threads on a MultiLSTM or Bidirectional made an attribute nothing read:
    calls kept the process default."""
    fl = pytest.importorskip("fastlstm")
    bi = fl.Bidirectional(fl.LSTM(4, 5, random_state=1), fl.LSTM(4, 5, random_state=2))
    stack = fl.MultiLSTM([fl.LSTM(6, 4, random_state=0), bi])
    leaves = [stack.layers[0], bi.forward_layer, bi.backward_layer]
    assert stack.n_threads is None and bi.n_threads is None
    stack.n_threads = 1
    assert [layer.n_threads for layer in leaves] == [1, 1, 1]
    assert stack.n_threads == bi.n_threads == 1
    bi.n_threads = 2
    assert [layer.n_threads for layer in leaves] == [1, 2, 2]
    with pytest.raises(ValueError, match="different n_threads"):
        stack.n_threads
    with pytest.raises(TypeError, match="n_threads must be None or an int"):
        stack.n_threads = "2"
    assert [layer.n_threads for layer in leaves] == [1, 2, 2]     # nothing changed
    X = np.random.default_rng(0).normal(size=(3, 5, 6)).astype(np.float32)
    Y1 = stack(X)[0]
    stack.n_threads = None
    np.testing.assert_array_equal(stack(X)[0], Y1)
