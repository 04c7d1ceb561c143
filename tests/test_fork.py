"""Child processes: os.fork and multiprocessing "fork", "spawn", "forkserver".

GNU OpenMP's thread pool does not survive fork(), so a child forked after the parent ran
threaded kernels must still compute the right numbers and must not hang.  Every child is
bounded by a timeout and killed if it overruns.
"""

import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import ref, ref_options, ref_params

import fastlstm as fl
from fastlstm import _threads

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

TIMEOUT = 60
N, T, I, H = 48, 7, 16, 32


def _model():
    return fl.LSTM(I, H, peepholes=True, random_state=0, n_threads=2)


def _proj_model():
    # with a projection: the BLAS kernel, batch split into row blocks on OpenMP threads
    return fl.LSTM(I, H, proj_size=8, random_state=1, n_threads=2)


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, T, I)), rng.integers(0, T + 1, size=N)


@pytest.fixture(scope="module")
def threaded_parent():
    """The parent process has run threaded (OpenMP) kernels before any child is made."""
    model, proj = _model(), _proj_model()
    X, L = _data()
    assert proj._chunks_for(N) > 1, "the batch must be split into row blocks"
    Y, s = model(X, lengths=L)
    Yp, _ = proj(X, lengths=L)
    # (under a limit of one thread, OMP_NUM_THREADS=1, n_threads=2 runs serially)
    if _threads._forward.openmp_enabled() and _threads.resolve_n_threads(2) > 1:
        assert _threads._state["omp_used"], "the parent did not run an OpenMP region"
    return model, X, L, Y, s, proj, Yp


def _wait(pid, timeout=TIMEOUT):
    """Exit code of child ``pid``; kill it and fail if it runs longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail(f"child {pid} still running after {timeout} s: it hangs")
        time.sleep(0.01)


def _fork(child, timeout=TIMEOUT):
    """Run ``child()`` (returns True on success) in an os.fork child; returns its exit code."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 3
        try:
            os.close(r)
            code = 0 if child() else 1
        except BaseException as exc:  # noqa: BLE001
            os.write(w, repr(exc).encode()[:4000])
            code = 2
        finally:
            os._exit(code)
    os.close(w)
    code = _wait(pid, timeout)
    with os.fdopen(r, "rb") as f:
        message = f.read().decode()
    assert code == 0, f"child failed (exit {code}): {message}"


def test_os_fork_child_after_threaded_kernels(threaded_parent):
    model, X, L, Y, s, proj, Yp = threaded_parent

    def child():
        Y2, s2 = model(X, lengths=L)
        if not np.array_equal(proj(X, lengths=L)[0], Yp):
            return False
        # a new model and a second call in the same child, with the default n_threads
        other = fl.LSTM(I, H, peepholes=True, random_state=0)
        Y3, _ = other(X, lengths=L)
        return (np.array_equal(Y2, Y) and np.array_equal(s2.c, s.c)
                and np.array_equal(Y3, Y) and fl.get_n_threads() >= 1)

    _fork(child)


def test_os_fork_child_results_match_reference(threaded_parent):
    model, X, L, _, _, proj, _ = threaded_parent

    def child():
        for layer in (model, proj):
            Y, s = layer(X, lengths=L, reverse=True)
            Yr, (cr, hr) = ref.lstm_forward(X.astype(np.float32).astype(np.float64),
                                            ref_params(layer), lengths=L, reverse=True,
                                            **ref_options(layer))
            np.testing.assert_allclose(Y, Yr, rtol=1e-5, atol=2e-6)
            np.testing.assert_allclose(s.h, hr, rtol=1e-5, atol=2e-6)
        return True

    _fork(child)


def test_grandchild(threaded_parent):
    model, X, L, Y, _, proj, Yp = threaded_parent

    def child():
        model(X, lengths=L)
        _fork(lambda: np.array_equal(model(X, lengths=L)[0], Y)
              and np.array_equal(proj(X, lengths=L)[0], Yp))
        return True

    _fork(child, timeout=2 * TIMEOUT)


def test_fork_while_another_thread_is_inside_a_threaded_call(threaded_parent):
    """A fork taken while another thread holds the BLAS-limit lock must not deadlock."""
    _, X, L, _, _, model, Y = threaded_parent  # the row-block path takes that lock
    held, release = threading.Event(), threading.Event()

    def holder():
        with _threads._BlasSingleThread._lock:
            held.set()
            release.wait(TIMEOUT)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(TIMEOUT)
    try:
        _fork(lambda: np.array_equal(model(X, lengths=L)[0], Y), timeout=20)
    finally:
        release.set()
        t.join()


def test_fork_while_another_thread_holds_blas_at_one_thread():
    """BLAS is held to one thread while a kernel runs; a child forked meanwhile has BLAS's
    own thread counts back (it kept 1 for good: its NumPy ran single-threaded)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def counts():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    inside, release = threading.Event(), threading.Event()

    def kernel_call():          # what a kernel call does around its work
        with _threads.blas_single_thread(openmp=False):
            inside.set()
            release.wait(TIMEOUT)

    with threadpool_limits(limits=2, user_api="blas"):
        before = counts()
        assert before and all(n == 2 for n in before)
        t = threading.Thread(target=kernel_call)
        t.start()
        assert inside.wait(TIMEOUT)
        try:
            if _threads.blas_is_openblas():
                assert all(n == 1 for n in counts())   # held while the call runs
            _fork(lambda: counts() == before, timeout=20)
        finally:
            release.set()
            t.join()
        assert counts() == before


def test_fork_before_the_first_limit_is_recorded(monkeypatch):
    """A fork in the moment a thread has entered the BLAS limit but not yet recorded what
    it changed (the first entry scans the loaded libraries): the child resets the limit's
    bookkeeping (its handler failed, and the child's kernels no longer held BLAS to one
    thread)."""
    monkeypatch.setattr(_threads._BlasSingleThread, "_depth", 1)
    monkeypatch.setattr(_threads._BlasSingleThread, "_active", None)

    def child():
        if _threads._BlasSingleThread._depth != 0:
            return False
        calls = _threads._openblas_calls()
        with _threads.blas_single_thread(openmp=False):
            inside = [get() for get, _ in calls] if calls else [1]
        return inside == [1] * len(inside)

    _fork(child, timeout=20)


def test_fork_while_threads_run_kernels(threaded_parent):
    model, X, L, Y, _, proj, _ = threaded_parent
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            model(X, lengths=L)
            proj(X, lengths=L)

    threads = [threading.Thread(target=busy) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(5):
            _fork(lambda: np.array_equal(model(X, lengths=L)[0], Y), timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join()


# -- multiprocessing ---------------------------------------------------------------------


def _worker(args):
    """Runs in a pool worker: the model arrives pickled."""
    model, X, L = args
    Y, s = model(X, lengths=L)
    live = (np.shares_memory(model.W, model.flat_params)
            and np.shares_memory(model.U, model.flat_params))
    return Y, s.c, live, fl.get_n_threads(), os.getpid()


def _stack_worker(blob):
    stack, X = pickle.loads(blob)
    # the layers' arrays must still be views into the stack's flat buffer
    stack.flat_params[...] = stack.flat_params * 0.5
    Y, _ = stack(X)
    return Y, [np.shares_memory(layer.flat_params, stack.flat_params) for layer in stack.layers]


def _fresh_interpreter_threads():
    out = subprocess.run([sys.executable, "-c", "import fastlstm; print(fastlstm.get_n_threads())"],
                         capture_output=True, text=True, timeout=TIMEOUT, check=True)
    return int(out.stdout)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_pool(method, threaded_parent):
    if method not in mp.get_all_start_methods():
        pytest.skip(f"start method {method!r} not available")
    model, X, L, Y, s, proj, Yp = threaded_parent
    ctx = mp.get_context(method)
    with ctx.Pool(2) as pool:
        results = pool.map_async(_worker, [(model, X, L), (proj, X, L)] * 2).get(TIMEOUT)
    for k, (Y2, c2, live, n_threads, pid) in enumerate(results):
        assert pid != os.getpid()
        np.testing.assert_array_equal(Y2, (Y, Yp)[k % 2])
        if k % 2 == 0:
            np.testing.assert_array_equal(c2, s.c)
        assert live, "unpickled parameters are not views into flat_params"
        if method == "fork":
            assert n_threads == 1  # forked after OpenMP ran: the serial path
        else:
            # a fresh interpreter with this environment (other libraries, e.g. Dask's
            # nanny, may have set OMP_NUM_THREADS in os.environ)
            assert n_threads == _fresh_interpreter_threads()


def test_spawned_stack_keeps_live_views():
    stack = fl.MultiLSTM([fl.LSTM(3, 4, random_state=0),
                          fl.Bidirectional(fl.LSTM(4, 2, random_state=1),
                                           fl.LSTM(4, 3, random_state=2))])
    X = np.random.default_rng(1).normal(size=(3, 5, 3))
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        Y2, shared = pool.apply_async(_stack_worker, (pickle.dumps((stack, X)),)).get(TIMEOUT)
    assert all(shared)
    stack.flat_params[...] *= 0.5
    np.testing.assert_array_equal(Y2, stack(X)[0])


def test_pickle_round_trip_keeps_views_live():
    stack = fl.MultiLSTM([fl.LSTM(3, 4, random_state=0, proj_size=2, peepholes=True),
                          fl.Bidirectional(fl.LSTM(2, 2), fl.LSTM(2, 3))])
    for copy in (pickle.loads(pickle.dumps(stack)), __import__("copy").deepcopy(stack)):
        np.testing.assert_array_equal(copy.flat_params, stack.flat_params)
        for name, value in copy.params.items():
            assert np.shares_memory(value, copy.flat_params), name
        copy.layers[0].W[...] = 7
        assert not np.any(stack.layers[0].W == 7)
        assert np.count_nonzero(copy.flat_params == 7) == copy.layers[0].W.size
        X = np.ones((2, 3, 3))
        ref_Y = ref.stack_forward(X, [("lstm", ref_params(copy.layers[0]),
                                       ref_options(copy.layers[0])),
                                      ("bidirectional",
                                       (ref_params(copy.layers[1].forward_layer), None),
                                       (ref_params(copy.layers[1].backward_layer), None))])[0]
        np.testing.assert_allclose(copy(X)[0], ref_Y, rtol=1e-5, atol=2e-6)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_fork_after_another_library_started_the_openmp_pool(threaded_parent, monkeypatch):
    """GNU OpenMP's pool is one per process: another library (torch ships the same
    libgomp) may have started it without fastlstm knowing.  The child must still run
    serially and not hang.  Simulated: a pool started by fastlstm, its flag cleared."""
    model, X, L, Y, s, proj, Yp = threaded_parent
    monkeypatch.setitem(_threads._state, "omp_used", False)

    def child():
        Y2, _ = model(X, lengths=L)
        return (np.array_equal(Y2, Y) and np.array_equal(proj(X, lengths=L)[0], Yp)
                and _threads.resolve_n_threads(2) == 1)

    _fork(child)


_FORK_SCRIPT = r"""
import os, sys, time
import numpy as np
{setup}
import fastlstm as fl
from fastlstm import _threads
m = fl.LSTM(16, 64, random_state=0, n_threads=2)
X = np.random.default_rng(0).normal(size=(8, 30, 16)).astype(np.float32)
pid = os.fork()
if pid == 0:
    try:
        ok = np.isfinite(m(X)[0]).all()
        os._exit(0 if ok and _threads.resolve_n_threads(2) == {child_threads} else 1)
    except BaseException:
        os._exit(2)
deadline = time.monotonic() + 60
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(os.waitstatus_to_exitcode(status))
    if time.monotonic() > deadline:
        os.kill(pid, 9)
        sys.exit(3)
    time.sleep(0.01)
"""


def _run_fork_script(setup, child_threads, env=None):
    code = _FORK_SCRIPT.format(setup=setup, child_threads=child_threads)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT + 60, env=env)
    assert proc.returncode == 0, (f"exit {proc.returncode} (3: the child hung)\n"
                                  f"{proc.stdout}\n{proc.stderr}")


def test_fork_after_torch_ran_openmp_threads():
    pytest.importorskip("torch")
    if not _threads._forward.openmp_enabled():
        pytest.skip("serial build")
    _run_fork_script("import torch\ntorch.set_num_threads(2)\n"
                     "torch.sin(torch.ones(10_000_000))", 1)


def test_child_of_a_single_threaded_parent_keeps_its_threads():
    """A parent with no thread but the forking one has no OpenMP pool to lose."""
    if not (_threads._forward.openmp_enabled() and os.path.isdir("/proc/self/task")):
        pytest.skip("needs an OpenMP build and /proc/self/task")
    if _fresh_interpreter_threads() < 2:
        pytest.skip("one usable core")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="2")
    probe = subprocess.run(
        [sys.executable, "-c", "import os, numpy, scipy.linalg, fastlstm; "
         "print(len(os.listdir('/proc/self/task')))"],
        capture_output=True, text=True, timeout=TIMEOUT, env=env)
    if probe.stdout.strip() != "1":
        pytest.skip(f"the interpreter has other threads here ({probe.stdout.strip()})")
    _run_fork_script("", 2, env=env)
