"""Thread policy: how many OpenMP threads a kernel call uses, and keeping BLAS out of the way.

- ``n_threads=None`` means the cores this process may use (CPU affinity), capped by the
  OpenMP limit in force (``OMP_NUM_THREADS``, ``threadpoolctl.threadpool_limits``).
  Negative values count back from that (-1 = all, -2 = all but one); 0 is an error.
- The threaded kernel path (each thread owns a block of batch rows) holds BLAS to one
  thread while it runs, through one cached ``threadpoolctl.ThreadpoolController``, so that
  OpenMP threads and BLAS threads never compete for the same cores.
- GNU OpenMP's thread pool does not survive ``fork()``: a child process forked after the
  parent ran a threaded kernel runs every kernel serially (results are identical).
"""

import ctypes
import numbers
import os
import threading

try:
    from . import _forward
except ImportError as exc:    # a source tree whose extensions are not built
    import glob as _glob
    _here = os.path.dirname(os.path.abspath(__file__))
    if not _glob.glob(os.path.join(_here, "_forward*.*")):
        raise ImportError(
            f"fastlstm is imported from {_here}, a source tree whose compiled kernels are not "
            "built (python -m puts the current directory first on sys.path): build them "
            "there (pip install -e .), or run from another directory to use an installed "
            "fastlstm") from exc
    raise
from ._scalars import unwrap

__all__ = ["get_n_threads", "set_n_threads", "resolve_n_threads", "show_config"]

_state = {"default": None, "forked_after_omp": False, "omp_used": False}
_controller = None
_controller_lock = threading.Lock()


def usable_cores():
    """CPUs this process may use: its affinity, or with OMP_PROC_BIND the OpenMP places
    (GNU OpenMP binds the initial thread to the first place when it loads, which narrows
    this thread's affinity to that place although the team may use them all)."""
    n = _forward.affinity_count()      # (~0.1 us, where os.sched_getaffinity takes ~1 us)
    if n <= 0:
        try:
            n = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - non-Linux
            n = os.cpu_count() or 1
    return max(1, n, _forward.omp_bound_places())


def _max_threads():
    """Threads the kernels may use at most, right now."""
    if not _forward.openmp_enabled() or _state["forked_after_omp"]:
        return 1
    return max(1, min(usable_cores(), _forward.omp_max_threads()))


_MAX_THREADS = 4096   # an OpenMP team larger than this fails to start (or aborts)


def check_n_threads(n_threads, name="n_threads"):
    """Validate a thread-count argument without resolving it."""
    if n_threads is None:
        return None
    if type(n_threads) is int and 0 < n_threads <= _MAX_THREADS:
        return n_threads             # the common case, checked first (called per kernel call)
    n_threads = unwrap(n_threads)    # a 0-d array (a stored scalar)
    if isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral):
        raise TypeError(f"{name} must be None or an int, got {type(n_threads).__name__}")
    if n_threads == 0:
        raise ValueError(f"{name}=0 is not allowed: use None for all usable cores, "
                         "a positive count, or a negative count back from all cores")
    if abs(n_threads) > _MAX_THREADS:
        raise ValueError(f"{name}={n_threads} is out of range: at most {_MAX_THREADS} "
                         "threads (or back from all cores)")
    return int(n_threads)


def _resolve(n_threads):
    n_threads = check_n_threads(n_threads)
    if n_threads is None:
        n_threads = _state["default"]
    top = _max_threads()
    if n_threads is None:
        return top
    if n_threads < 0:
        return max(1, top + 1 + n_threads)
    return 1 if top == 1 else n_threads


def resolve_n_threads(n_threads=None):
    """The number of threads a kernel call will use for ``n_threads`` (>= 1).

    Kernels call this right before they run: a result above 1 marks the process as having
    used OpenMP, so that a child forked later runs its kernels serially (whichever kernel
    path opened the parallel region).
    """
    nt = _resolve(n_threads)
    if nt > 1:
        _state["omp_used"] = True
    return nt


def set_n_threads(n_threads):
    """Set the process-wide default used by models whose ``n_threads`` is None."""
    _state["default"] = check_n_threads(n_threads)


def get_n_threads():
    """The number of threads a model with ``n_threads=None`` uses now."""
    return _resolve(None)


def controller():
    """The cached threadpoolctl controller (built on first use)."""
    global _controller
    if _controller is None:
        with _controller_lock:
            if _controller is None:
                from threadpoolctl import ThreadpoolController
                _controller = ThreadpoolController()
    return _controller


def _release_blas_control():
    """Let whichever thread comes next change a pthreads OpenBLAS's limit.

    threadpoolctl (>= 3.8) lets one Python thread at a time change such a limit and keeps
    that control until it is cleared: other threads' limits are silently ignored.  The
    kernels may enter and leave the BLAS limit from different threads, so they clear it.
    """
    try:
        from threadpoolctl import OpenBLASController
    except ImportError:  # pragma: no cover - older threadpoolctl
        return
    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


_openblas_entry = {}

# OpenBLAS runs a gemm of m * n * k <= 65536 * GEMM_MULTITHREAD_THRESHOLD (4 by default)
# multiply-adds on the calling thread; a quarter of that, to leave a margin
OPENBLAS_SERIAL_GEMM = 65536


def blas_is_openblas():
    """Whether every loaded BLAS library is OpenBLAS (so its own rules apply)."""
    return _openblas_calls() is not None


def _openblas_calls():
    """[(get, set)] thread-count entry points of the loaded BLAS libraries when they are
    all OpenBLAS (about a microsecond per call), else None (threadpoolctl's limiter)."""
    if "calls" not in _openblas_entry:
        calls = []
        for lib in controller().lib_controllers:
            if lib.user_api != "blas":
                continue
            get_sym = getattr(lib, "_get_symbol", None)
            get = get_sym("openblas_get_num_threads") if get_sym else None
            put = get_sym("openblas_set_num_threads") if get_sym else None
            # an OpenMP-threaded OpenBLAS sets the caller's OpenMP limit instead: leave
            # that to threadpoolctl
            if lib.internal_api != "openblas" or get is None or put is None or \
                    getattr(lib, "threading_layer", None) not in ("pthreads", "disabled"):
                calls = None
                break
            get.restype = ctypes.c_int
            put.argtypes = [ctypes.c_int]
            calls.append((get, put))
        _openblas_entry["calls"] = calls
    return _openblas_entry["calls"]


class _BlasSingleThread:
    """Context manager: BLAS limited to one thread while a kernel runs (its OpenMP
    threads, or its gemms, whose summation order may depend on BLAS's thread count)."""

    _depth = 0
    _active = None          # what __enter__ changed (set while _depth > 0)
    _lock = threading.Lock()

    def __init__(self, openmp=True):
        self.openmp = openmp

    def __enter__(self):
        if self.openmp:
            _state["omp_used"] = True
        with self._lock:
            type(self)._depth += 1
            if type(self)._depth == 1:
                calls = _openblas_calls()
                if calls is not None:
                    saved = [get() for get, _ in calls]
                    type(self)._active = (calls, saved)   # before: a fork may come between
                    for (_, put), n in zip(calls, saved):
                        if n != 1:
                            put(1)
                else:
                    _release_blas_control()
                    type(self)._active = controller().limit(limits=1, user_api="blas")
        return self

    def __exit__(self, *exc):
        with self._lock:
            type(self)._depth -= 1
            if type(self)._depth == 0:
                active = type(self)._active
                if isinstance(active, tuple):
                    for (_, put), n in zip(*active):
                        if n != 1:
                            put(n)
                else:
                    _release_blas_control()  # this thread may not be the one that set it
                    active.restore_original_limits()
                    _release_blas_control()
        return False


blas_single_thread = _BlasSingleThread


def _after_fork_in_child():
    global _controller, _controller_lock
    _controller = None
    _openblas_entry.clear()
    # a lock held by another thread at fork time would stay held for ever in the child
    _controller_lock = threading.Lock()
    _BlasSingleThread._lock = threading.Lock()
    try:
        if _BlasSingleThread._depth:
            # forked while another thread ran a kernel: that thread is not in the child,
            # so nothing there would give BLAS its thread counts back (None: forked before
            # that thread had changed them)
            active = _BlasSingleThread._active
            if isinstance(active, tuple):
                for (_, put), n in zip(*active):
                    if n != 1:
                        put(n)
            elif active is not None:
                active.restore_original_limits()
    except Exception:  # noqa: BLE001 - best effort; the child's results do not depend on it
        pass
    finally:
        _BlasSingleThread._depth = 0
        _BlasSingleThread._active = None
        # GNU OpenMP's pool is one per process and may have been started by another
        # library (torch ships the same libgomp), which this module's flag cannot see: a
        # child is threaded only if its parent had no thread but the forking one
        if _state["omp_used"] or _fork_parent_threads["n"] != 1:
            _state["forked_after_omp"] = True


# OS threads of the process when it last forked (None: not known on this system)
_fork_parent_threads = {"n": None}


def _os_thread_count():
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _before_fork():
    _fork_parent_threads["n"] = _os_thread_count()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def show_config(file=None):
    """Print (and return as a dict) how fastlstm was built and what it will use."""
    import numpy as np
    import scipy

    from ._version import __version__

    blas = []
    for info in controller().info():
        if info.get("user_api") == "blas":
            arch = info.get("architecture")
            blas.append(
                f"{info.get('internal_api')} {info.get('version')} "
                f"({info.get('threading_layer', '?')} threading, {info.get('num_threads')} threads, "
                + (f"{arch} kernels, " if arch else "")
                + f"{os.path.basename(info.get('filepath', ''))})"
            )
    isa = _forward.packed_isa()
    config = {
        "version": __version__,
        "openmp": _forward.openmp_enabled(),
        # the packed kernel's instruction set, chosen at run time for this CPU
        "instruction_set": ("baseline", "AVX2 + FMA", "AVX-512")[isa] if 0 <= isa <= 2 else "?",
        "n_threads": get_n_threads(),
        "usable_cores": usable_cores(),
        "blas": blas,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }
    lines = [
        f"fastlstm {config['version']}",
        f"  OpenMP:        {'on' if config['openmp'] else 'off (serial build)'}",
        f"  threads:       {config['n_threads']} (usable cores {config['usable_cores']})",
        f"  kernels:       {config['instruction_set']}",
        "  BLAS:          " + ("; ".join(blas) if blas else "not found by threadpoolctl"),
        f"  numpy {config['numpy']}, scipy {config['scipy']}",
    ]
    print("\n".join(lines), file=file)
    return config
