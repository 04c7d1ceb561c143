"""Side-by-side speed table: ``python -m fastlstm bench [--quick] [--plot out.png]``.

Every case runs fastlstm and each installed peer (onnxruntime, torch, the NumPy reference
``fastlstm.reference``) on the same weights and the same input.  Before timing, each
peer's output is checked against fastlstm's, so every figure compares the same maths.

Timing follows what this shared two-core machine taught (see ``bench/RESULTS.md``):
implementations are interleaved, each sample is preceded by a short idle gap so that the
previous implementation's spinning thread pool (OpenBLAS, ORT, OpenMP) has gone to sleep,
and the median of several samples is reported (more samples for the cheap cases, whose
samples are short).  A float64 case also times fastlstm in float32 on the same shape in
the same interleaved samples, for the float64 / float32 ratio.  Run it with
``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` unset (the runner re-executes itself
without them).

The cases and the per-implementation builders are shared with the pytest-benchmark suite
in ``bench/bench_inference.py``.
"""

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["Case", "CASES", "QUICK", "IMPLEMENTATIONS", "build", "main"]

_ENV_DROP = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


@dataclass(frozen=True)
class Case:
    """One benchmark shape: batch B, time T, input I, hidden sizes per layer."""

    name: str
    title: str
    B: int
    T: int
    I: int
    H: tuple
    step: bool = False           # a single ``step()`` call rather than a sequence
    dtype: str = "float32"
    lengths: str | None = None   # None: full rows; "mixed": a mix of short and long rows
    n_threads: int = 2
    tags: tuple = field(default=())

    @property
    def shape(self):
        hs = ",".join(str(h) for h in self.H)
        return f"{self.B},{self.T},{self.I},{hs}"

    @property
    def flops(self):
        """Multiply-adds x 2 of the gemms (input and recurrent), per call."""
        total, inp = 0, self.I
        for h in self.H:
            total += 2 * self.B * self.T * 4 * h * (inp + h)
            inp = h
        return total


CASES = [
    Case("step", "one cell step", 1, 1, 6, (4,), step=True, tags=("quick", "issue")),
    Case("step-large", "one step, large cell", 1, 1, 256, (512,), step=True),
    Case("tutorial", "tutorial stack", 2, 3, 6, (4, 5), tags=("quick", "issue")),
    Case("online", "online", 1, 100, 32, (64,), tags=("quick", "issue")),
    Case("small", "small batch", 8, 100, 64, (128,), tags=("quick", "issue")),
    Case("medium", "medium x2", 32, 100, 128, (256, 256), tags=("issue",)),
    Case("large", "large", 64, 200, 256, (512,), tags=("issue",)),
    Case("wide", "wide batch", 256, 50, 128, (256,), tags=("issue",)),
    Case("long", "long T=2000", 8, 2000, 64, (128,)),
    Case("varlen", "variable lengths", 32, 100, 128, (256,), lengths="mixed"),
    Case("small-f64", "small batch float64", 8, 100, 64, (128,), dtype="float64"),
    Case("medium-f64", "medium x2 float64", 32, 100, 128, (256, 256), dtype="float64"),
    Case("small-1t", "small batch, 1 thread", 8, 100, 64, (128,), n_threads=1),
    Case("medium-1t", "medium x2, 1 thread", 32, 100, 128, (256, 256), n_threads=1),
]
QUICK = [c for c in CASES if "quick" in c.tags]


# ---------------------------------------------------------------------------------------
# inputs and weights


def make_data(case, seed=0):
    """Input X (B, T, I), lengths or None, initial state list or None, per case."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(case.dtype)
    X = rng.standard_normal((case.B, case.T, case.I)).astype(dt)
    L = None
    if case.lengths == "mixed":
        # half the rows run the whole sequence, the others stop early (5 .. T/2 steps)
        L = np.where(np.arange(case.B) % 2 == 0, case.T,
                     rng.integers(5, max(6, case.T // 2), case.B)).astype(np.int64)
    return X, L


def make_model(case, seed=0):
    import fastlstm as fl

    layers = []
    inp = case.I
    for k, h in enumerate(case.H):
        layers.append(fl.LSTM(inp, h, dtype=case.dtype, random_state=seed + k,
                              n_threads=case.n_threads))
        inp = h
    if case.step:
        return layers[0]
    return fl.MultiLSTM(layers) if len(layers) > 1 else layers[0]


def _layers(model):
    from fastlstm import MultiLSTM

    return list(model.layers) if isinstance(model, MultiLSTM) else [model]


class Unavailable(Exception):
    """The implementation cannot run this case (not installed, or no such feature)."""


# ---------------------------------------------------------------------------------------
# implementations: build(case, model, X, L) -> (run, output)
# ``run()`` does one timed call; ``output()`` calls once more and returns Y (B, T, Hout)
# (or the (B, Hout) step output) as a float64 NumPy array, for the agreement check.


def _build_fastlstm(case, model, X, L):
    if case.step:
        x = np.ascontiguousarray(X[:, 0])
        state = model.zero_state(case.B)

        def run():
            return model.step(x, state)

        return run, lambda: np.asarray(run()[0], np.float64)

    def run():
        return model(X, lengths=L)

    return run, lambda: np.asarray(run()[0], np.float64)


def _build_frozen(case, model, X, L):
    """fastlstm on a frozen copy of the model (``fastlstm.freeze``: weights packed once,
    as an ONNX Runtime session packs them when it is created)."""
    from fastlstm import freeze

    return _build_fastlstm(case, freeze(model), X, L)


def _build_reference(case, model, X, L):
    from fastlstm import reference as ref

    layers = _layers(model)
    if case.step:
        p = layers[0].params
        x = np.ascontiguousarray(X[:, 0])
        c = np.zeros((case.B, case.H[0]), X.dtype)
        h = np.zeros((case.B, case.H[0]), X.dtype)

        def run():
            return ref.lstm_step(x, c, h, p)

        return run, lambda: np.asarray(run()[0], np.float64)
    items = [("lstm", layer.params, None) for layer in layers]

    def run():
        return ref.stack_forward(X, items, lengths=L)

    return run, lambda: np.asarray(run()[0], np.float64)


# gate blocks: fastlstm (i, f, g, o) -> ONNX (i, o, f, c)
_TO_ONNX = [0, 3, 1, 2]


def _blocks(a, order, axis):
    parts = np.split(np.asarray(a), 4, axis=axis)
    return np.concatenate([parts[i] for i in order], axis=axis)


def _onnx_model(case, layers, with_state):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    B = case.B
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [case.T, B, case.I])]
    if case.lengths is not None:
        inputs.append(helper.make_tensor_value_info("L", TensorProto.INT32, [B]))
    cur = "X"
    outputs = []
    for k, layer in enumerate(layers):
        H = layer.hidden_size
        W = _blocks(layer.W, _TO_ONNX, 1).T[None].astype(np.float32)
        R = _blocks(layer.U, _TO_ONNX, 1).T[None].astype(np.float32)
        bb = np.concatenate([_blocks(layer.b, _TO_ONNX, 0), np.zeros(4 * H)])[None]
        inits += [numpy_helper.from_array(W, f"W{k}"), numpy_helper.from_array(R, f"R{k}"),
                  numpy_helper.from_array(bb.astype(np.float32), f"B{k}")]
        ins = [cur, f"W{k}", f"R{k}", f"B{k}", "L" if case.lengths is not None else ""]
        if with_state:
            inputs += [helper.make_tensor_value_info(f"h{k}", TensorProto.FLOAT, [1, B, H]),
                       helper.make_tensor_value_info(f"c{k}", TensorProto.FLOAT, [1, B, H])]
            ins += [f"h{k}", f"c{k}"]
        nodes.append(helper.make_node("LSTM", ins, [f"Y{k}", f"Yh{k}", f"Yc{k}"],
                                      hidden_size=H))
        outputs += [helper.make_tensor_value_info(f"Yh{k}", TensorProto.FLOAT, [1, B, H]),
                    helper.make_tensor_value_info(f"Yc{k}", TensorProto.FLOAT, [1, B, H])]
        # Y is (T, 1, B, H): drop the direction axis for the next layer
        inits.append(numpy_helper.from_array(np.array([1], np.int64), f"ax{k}"))
        nodes.append(helper.make_node("Squeeze", [f"Y{k}", f"ax{k}"], [f"S{k}"]))
        cur = f"S{k}"
    outputs.insert(0, helper.make_tensor_value_info(cur, TensorProto.FLOAT,
                                                    [case.T, B, layers[-1].hidden_size]))
    graph = helper.make_graph(nodes, "lstm", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _build_onnxruntime(case, model, X, L):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise Unavailable("onnxruntime not installed") from exc
    if case.dtype != "float32":
        raise Unavailable("onnxruntime's LSTM is float32 only")
    layers = _layers(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = case.n_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    sess = ort.InferenceSession(_onnx_model(case, layers, case.step), so,
                                providers=["CPUExecutionProvider"])
    # ONNX Runtime rejects layout=1: it gets the input already time-major (not timed)
    feed = {"X": np.ascontiguousarray(X.transpose(1, 0, 2))}
    if L is not None:
        feed["L"] = L.astype(np.int32)
    if case.step:
        H = case.H[0]
        feed["h0"] = np.zeros((1, case.B, H), np.float32)
        feed["c0"] = np.zeros((1, case.B, H), np.float32)
    out_name = sess.get_outputs()[0].name

    def run():
        return sess.run(None, feed)

    def output():
        Y = sess.run([out_name], feed)[0].astype(np.float64).transpose(1, 0, 2)
        return Y[:, 0] if case.step else Y

    return run, output


def _build_torch(case, model, X, L):
    try:
        import torch
    except ImportError as exc:
        raise Unavailable("torch not installed") from exc
    torch.set_num_threads(case.n_threads)
    dt = torch.float64 if case.dtype == "float64" else torch.float32
    layers = _layers(model)
    mods = []
    for layer in layers:
        if case.step:
            m = torch.nn.LSTMCell(layer.input_size, layer.hidden_size, dtype=dt)
        else:
            m = torch.nn.LSTM(layer.input_size, layer.hidden_size, batch_first=True, dtype=dt)
        sfx = "" if case.step else "_l0"
        with torch.no_grad():
            getattr(m, "weight_ih" + sfx).copy_(torch.from_numpy(layer.W.T.copy()))
            getattr(m, "weight_hh" + sfx).copy_(torch.from_numpy(layer.U.T.copy()))
            getattr(m, "bias_ih" + sfx).copy_(torch.from_numpy(layer.b.copy()))
            getattr(m, "bias_hh" + sfx).zero_()
        mods.append(m.eval())
    xt = torch.from_numpy(X)
    threads = case.n_threads

    if case.step:
        x0 = xt[:, 0].contiguous()
        h0 = torch.zeros(case.B, case.H[0], dtype=dt)
        c0 = torch.zeros(case.B, case.H[0], dtype=dt)

        def run():
            with torch.inference_mode():
                return mods[0](x0, (h0, c0))

        return run, lambda: run()[0].double().numpy()

    if L is None:
        def run():
            with torch.inference_mode():
                y = xt
                for m in mods:
                    y, _ = m(y)
                return y
    else:
        lt = torch.from_numpy(L)
        pack = torch.nn.utils.rnn.pack_padded_sequence
        unpack = torch.nn.utils.rnn.pad_packed_sequence

        def run():
            with torch.inference_mode():
                y = pack(xt, lt, batch_first=True, enforce_sorted=False)
                for m in mods:
                    y, _ = m(y)
                return unpack(y, batch_first=True, total_length=case.T)[0]

    def timed():
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return run()

    return timed, lambda: timed().double().numpy()


IMPLEMENTATIONS = {
    "fastlstm": _build_fastlstm,
    "fastlstm-frozen": _build_frozen,
    "onnxruntime": _build_onnxruntime,
    "torch": _build_torch,
    "numpy": _build_reference,
}
PEERS = ("onnxruntime", "torch", "numpy")


def build(impl, case, seed=0):
    """(run, output) for one implementation and case; raises ``Unavailable``."""
    model = make_model(case, seed)
    X, L = make_data(case, seed)
    return IMPLEMENTATIONS[impl](case, model, X, L)


def build_all(case, impls, seed=0, check=True):
    """Build every implementation on shared weights; check each output against fastlstm's."""
    model = make_model(case, seed)
    X, L = make_data(case, seed)
    runs, notes = {}, {}
    ref_out = None
    for impl in impls:
        try:
            runs[impl], output = IMPLEMENTATIONS[impl](case, model, X, L)
        except Unavailable as exc:
            notes[impl] = str(exc)
            continue
        if check:
            out = output()
            if impl == "fastlstm":
                ref_out = out
            elif ref_out is not None:
                tol = 1e-4 if case.dtype == "float32" else 1e-9
                err = float(np.max(np.abs(out - ref_out))) if out.size else 0.0
                if not err <= tol:
                    raise AssertionError(f"{impl} disagrees with fastlstm on {case.name}: "
                                         f"max abs difference {err:.3g}")
    return runs, notes


# ---------------------------------------------------------------------------------------
# timing


def calibrate(fn, min_time):
    """Calls per sample so that one sample lasts about ``min_time`` seconds."""
    fn()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_time or n >= 1 << 20:
            return n
        n = max(n + 1, int(n * min(10.0, 1.5 * min_time / max(dt, 1e-9))))


def measure(runs, repeats, min_time, gap):
    """Interleaved samples: {impl: [seconds per call, ...]}."""
    counts = {}
    for impl, fn in runs.items():
        time.sleep(gap)
        counts[impl] = calibrate(fn, min_time)
    samples = {impl: [] for impl in runs}
    for _ in range(repeats):
        for impl, fn in runs.items():
            time.sleep(gap)
            n = counts[impl]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[impl].append((time.perf_counter() - t0) / n)
    return samples


def _fmt(sec):
    if sec is None:
        return "—"
    if sec < 1e-3:
        return f"{sec * 1e6:.1f} µs"
    if sec < 1:
        return f"{sec * 1e3:.2f} ms"
    return f"{sec:.2f} s"


# cases below this many FLOPs a call take CHEAP_REPEATS samples per implementation: a
# sample lasts min_time whatever the case, and more of them steady the median
CHEAP_FLOPS = 1e9
CHEAP_REPEATS = 15
# the key under which a float64 case also times fastlstm on the float32 twin of its shape
TWIN = "fastlstm float32"


def case_repeats(case, repeats, cheap_repeats=None):
    """Samples per implementation for ``case``."""
    if cheap_repeats is not None and case.flops < CHEAP_FLOPS:
        return cheap_repeats
    return repeats


def _twin_run(case):
    """fastlstm on the same shape, weights and input, in float32 (a float64 case's twin)."""
    twin = replace(case, dtype="float32")
    model = make_model(twin)
    X, L = make_data(twin)
    return _build_fastlstm(twin, model, X, L)[0]


def run_cases(cases, impls, repeats=7, min_time=0.05, gap=0.2, out=None, cheap_repeats=None):
    """Time every case; rows of (case, {impl: median seconds}, {impl: why not run}).

    A float64 case that runs fastlstm also times fastlstm on the float32 twin of its
    shape, interleaved with the other samples (``TWIN`` in the medians), so that the ratio
    float64 / float32 compares samples taken side by side."""
    out = out or sys.stdout
    rows = []
    for case in cases:
        runs, notes = build_all(case, impls)
        if case.dtype == "float64" and "fastlstm" in runs:
            runs[TWIN] = _twin_run(case)
        samples = measure(runs, case_repeats(case, repeats, cheap_repeats), min_time, gap)
        med = {k: statistics.median(v) for k, v in samples.items()}
        rows.append((case, med, notes))
        print(_row(case, med, impls), file=out, flush=True)
    return rows


def twin_ratios(rows):
    """[(case, float64 median / float32 median)] for the float64 rows timed with a twin."""
    return [(case, med["fastlstm"] / med[TWIN]) for case, med, _ in rows
            if TWIN in med and "fastlstm" in med]


FROZEN = "fastlstm-frozen"


def _header(impls):
    cols = ["case", "shape B,T,I,H", "dtype", "thr"] + list(impls) + \
        ["best peer", "speedup"] + (["frozen speedup"] if FROZEN in impls else []) + \
        ["fastlstm GFLOP/s"]
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def _row(case, med, impls):
    cells = [case.title, case.shape, case.dtype, str(case.n_threads)]
    cells += [_fmt(med.get(k)) for k in impls]
    peers = {k: v for k, v in med.items() if k in PEERS}
    fast = med.get("fastlstm")
    if peers and fast:
        best = min(peers, key=peers.get)
        cells += [f"{best} {_fmt(peers[best])}", f"{peers[best] / fast:.2f}×"]
    else:
        cells += ["—", "—"]
    if FROZEN in impls:
        frozen = med.get(FROZEN)
        cells.append(f"{min(peers.values()) / frozen:.2f}×" if peers and frozen else "—")
    cells.append(f"{case.flops / fast / 1e9:.1f}" if fast else "—")
    return "| " + " | ".join(cells) + " |"


def versions():
    import numpy
    import scipy

    import fastlstm

    v = {"fastlstm": fastlstm.__version__, "numpy": numpy.__version__,
         "scipy": scipy.__version__, "python": sys.version.split()[0]}
    for mod in ("onnxruntime", "torch"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return v


def plot(rows, impls, path):
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)",
              file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max((r[0].n_threads for r in rows if r[0].dtype == "float32"), default=1)
    rows = [r for r in rows if r[0].dtype == "float32" and r[0].n_threads == top]
    rows.sort(key=lambda r: r[0].flops)
    fig, ax = plt.subplots(figsize=(8, 5))
    for impl in impls:
        pts = [(r[0].flops, r[1][impl]) for r in rows if impl in r[1]]
        if pts:
            ax.loglog([p[0] for p in pts], [p[1] for p in pts], "o-", label=impl)
    for r in rows:
        ax.annotate(r[0].name, (r[0].flops, r[1].get("fastlstm", 1)), fontsize=7)
    ax.set_xlabel("gemm FLOPs per call")
    ax.set_ylabel("seconds per call (median)")
    ax.set_title(f"LSTM inference, float32, {top} thread{'s' if top > 1 else ''}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def main(argv=None, prog="python -m fastlstm bench"):
    parser = argparse.ArgumentParser(prog=prog,
                                     description="side-by-side LSTM inference timings")
    parser.add_argument("--quick", action="store_true",
                        help="small shapes, 3 samples each (under a minute)")
    parser.add_argument("--cases", default=None,
                        help="comma-separated case names (default: all; see --list)")
    parser.add_argument("--impls", default=",".join(IMPLEMENTATIONS),
                        help="comma-separated implementations to run")
    parser.add_argument("--repeats", type=_positive_int, default=None,
                        help="samples per implementation")
    parser.add_argument("--gap", type=_non_negative_float, default=0.2,
                        help="idle seconds before each sample (thread pools go to sleep)")
    parser.add_argument("--plot", default=None, help="save a PNG of time vs size here")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    ns = parser.parse_args(argv)

    if ns.list:
        for c in CASES:
            print(f"{c.name:12s} {c.title:26s} B,T,I,H={c.shape} {c.dtype} "
                  f"threads={c.n_threads}")
        return 0
    if ns.cases is not None:
        by_name = {c.name: c for c in CASES}
        names = [n.strip() for n in ns.cases.split(",")]
        try:
            cases = [by_name[n] for n in names]
        except KeyError as exc:
            parser.error(f"unknown case {exc}; use --list")
        if len(set(names)) < len(names):
            parser.error(f"--cases names a case twice: {ns.cases!r}")
    else:
        cases = QUICK if ns.quick else CASES
    impls = [i.strip() for i in ns.impls.split(",")]
    for i in impls:
        if i not in IMPLEMENTATIONS:
            parser.error(f"unknown implementation {i!r}; choose from {list(IMPLEMENTATIONS)}")
    if len(set(impls)) < len(impls):
        parser.error(f"--impls names an implementation twice: {ns.impls!r}")
    if ns.plot is not None:
        import importlib.util
        if importlib.util.find_spec("matplotlib") is None:
            parser.error("--plot needs matplotlib (pip install matplotlib)")
        folder = os.path.dirname(os.path.abspath(ns.plot))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            parser.error(f"--plot: cannot write to {ns.plot!r} (no such writable folder)")
    repeats = ns.repeats or (3 if ns.quick else 7)
    # a full run without --repeats takes more samples of the cheap cases
    cheap_repeats = None if ns.repeats or ns.quick else CHEAP_REPEATS
    min_time = 0.02 if ns.quick else 0.1

    # after the checks above: a refused command line exits here, not in a new process
    if any(k in os.environ for k in _ENV_DROP) and not os.environ.get("_FASTLSTM_BENCH_CHILD"):
        env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
        env["_FASTLSTM_BENCH_CHILD"] = "1"
        args = [sys.executable, "-m", "fastlstm", "bench"] + list(argv or sys.argv[2:])
        os.execve(sys.executable, args, env)

    import fastlstm

    # every implementation runs a case on the same number of threads: at most those
    # fastlstm may use here (OMP_NUM_THREADS, the CPU affinity), as the table's thr says
    available = fastlstm.get_n_threads()
    capped = sorted({c.n_threads for c in cases if c.n_threads > available})
    cases = [replace(c, n_threads=min(c.n_threads, available)) for c in cases]

    v = versions()
    print(" ".join(f"{k} {val}" for k, val in v.items()))
    counts = f"{repeats}" if cheap_repeats is None else \
        f"{cheap_repeats} (cases under {CHEAP_FLOPS / 1e9:g} GFLOP a call) or {repeats}"
    print(f"fastlstm threads available: {available}; samples: {counts}, "
          f"median; {ns.gap:g} s idle gap before each sample")
    if capped:
        print(f"(cases meant for {', '.join(map(str, capped))} threads run on {available} "
              "for every implementation: that is all fastlstm may use here)")
    print()
    print(_header(impls))
    rows = run_cases(cases, impls, repeats=repeats, min_time=min_time, gap=ns.gap,
                     cheap_repeats=cheap_repeats)
    ratios = twin_ratios(rows)
    if ratios:
        print()
        print("float64 against float32 (fastlstm on the same shape, the float32 samples "
              "interleaved with the float64 case's): " +
              "; ".join(f"{case.title} {r:.2f}×" for case, r in ratios))
    skipped = {}                  # (implementation, reason) -> the cases it missed
    for case, _, notes in rows:
        for impl, why in notes.items():
            skipped.setdefault((impl, why), []).append(case.title)
    if skipped:
        print()
        for (impl, why), titles in skipped.items():
            where = "any case" if len(titles) == len(rows) else ", ".join(titles)
            print(f"{impl} did not run for {where}: {why}")
        absent = {impl for (impl, why) in skipped if why.endswith("not installed")}
        if absent >= {"onnxruntime", "torch"}:
            print("(without ONNX Runtime and PyTorch, the speedups are over the NumPy "
                  "reference: pip install onnxruntime onnx torch for bench/RESULTS.md's "
                  "comparison)")
    if ns.plot is not None:
        try:
            if plot(rows, impls, ns.plot):
                print(f"plot saved to {ns.plot}")
        except OSError as exc:
            print(f"could not save the plot to {ns.plot!r}: {exc}", file=sys.stderr)
            return 1
    return 0
