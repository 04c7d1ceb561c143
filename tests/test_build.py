"""The build: OpenMP when the compiler has it, and a serial build that still works.

``FASTLSTM_SKIP_OPENMP_TEST=1`` skips the check that this build has OpenMP (for platforms
whose compiler lacks it).  The serial-fallback test builds a second copy of the extension
with ``FASTLSTM_NO_OPENMP=1`` in a temporary directory and runs it in a subprocess.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastlstm as fl

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _bench_runs_in_this_process(monkeypatch):
    """The bench command re-runs itself in a new process without OPENBLAS_CORETYPE /
    OPENBLAS_L2_SIZE when they are set (os.execve), which would replace pytest's process:
    the tests here call it in-process, so those variables are unset for them."""
    from fastlstm import _bench
    for name in _bench._ENV_DROP:
        monkeypatch.delenv(name, raising=False)


def test_build_has_openmp():
    if os.environ.get("FASTLSTM_SKIP_OPENMP_TEST", "") not in ("", "0"):
        pytest.skip("FASTLSTM_SKIP_OPENMP_TEST is set")
    config = fl.show_config(file=io.StringIO())
    assert config["openmp"], (
        "fastlstm was built without OpenMP: the kernels use one core.  Install a compiler "
        "with OpenMP support and rebuild, or set FASTLSTM_SKIP_OPENMP_TEST=1 to accept it.")


def test_show_config_reports_the_build():
    out = io.StringIO()
    config = fl.show_config(file=out)
    text = out.getvalue()
    assert config["openmp"] == fl._threads._forward.openmp_enabled()
    assert ("OpenMP:        on" in text) == config["openmp"]
    assert config["version"] == fl.__version__
    assert config["n_threads"] == fl.get_n_threads() >= 1
    assert 1 <= config["usable_cores"] <= (os.cpu_count() or 1)
    # the instruction set the packed kernel runs here
    names = {0: "baseline", 1: "AVX2 + FMA", 2: "AVX-512"}
    assert config["instruction_set"] == names[fl._threads._forward.packed_isa()]
    assert f"kernels:       {config['instruction_set']}" in text


def test_serial_build_reports_the_openmp_probe_is_skipped(monkeypatch):
    sys.path.insert(0, str(ROOT))
    try:
        from build_tools.openmp import openmp_flags
    finally:
        sys.path.remove(str(ROOT))
    monkeypatch.setenv("FASTLSTM_NO_OPENMP", "1")
    assert openmp_flags() == (False, [], [])


CHECK = textwrap.dedent(
    """
    import io, json, sys
    import numpy as np
    import fastlstm as fl
    from fastlstm import reference as ref
    assert fl.__file__.startswith(sys.argv[1]), fl.__file__
    out = io.StringIO()
    config = fl.show_config(file=out)
    rng = np.random.default_rng(0)
    worst = 0.0
    for dtype, options in [(np.float32, {}), (np.float64, dict(peepholes=True, proj_size=5)),
                           (np.float64, dict(cell_clip=0.5))]:
        layer = fl.LSTM(6, 32, dtype=dtype, random_state=0, n_threads=2, **options)
        for v in layer.params.values():
            v[...] = rng.normal(scale=0.5, size=v.shape)
        X = rng.normal(size=(64, 7, 6))
        L = rng.integers(0, 8, size=64)
        for reverse in (False, True):
            Y, s = layer(X, lengths=L, reverse=reverse)
            params = {k: np.asarray(v, np.float64) for k, v in layer.params.items()}
            Yr, (cr, hr) = ref.lstm_forward(X.astype(dtype).astype(np.float64), params,
                                            lengths=L, reverse=reverse,
                                            cell_clip=layer.cell_clip,
                                            proj_clip=None)
            tol = 1e-5 if dtype == np.float32 else 1e-11
            np.testing.assert_allclose(Y, Yr, rtol=tol, atol=tol)
            np.testing.assert_allclose(s.c, cr, rtol=tol, atol=tol)
            worst = max(worst, float(np.abs(Y - Yr).max()))
    stack = fl.MultiLSTM([fl.LSTM(6, 8, random_state=1),
                          fl.Bidirectional(fl.LSTM(8, 4, random_state=2), fl.LSTM(8, 4, random_state=3))])
    Xs = rng.normal(size=(20, 5, 6))
    items = [("lstm", {k: np.asarray(v, np.float64) for k, v in stack.layers[0].params.items()}, None),
             ("bidirectional",
              ({k: np.asarray(v, np.float64) for k, v in stack.layers[1].forward_layer.params.items()}, None),
              ({k: np.asarray(v, np.float64) for k, v in stack.layers[1].backward_layer.params.items()}, None))]
    Ys, _ = stack(Xs)
    Yr, _ = ref.stack_forward(Xs.astype(np.float32).astype(np.float64), items)
    np.testing.assert_allclose(Ys, Yr, rtol=1e-5, atol=2e-6)
    print(json.dumps({"openmp": config["openmp"], "text": out.getvalue(),
                      "n_threads": config["n_threads"], "worst": worst}))
    """
)


@pytest.mark.slow
def test_build_without_openmp(tmp_path):
    """A build with OpenMP forced off compiles, says so, and computes the right numbers."""
    if shutil.which(os.environ.get("CC", "gcc").split()[0]) is None and shutil.which("cc") is None:
        pytest.skip("no C compiler")
    pytest.importorskip("Cython")
    src = tmp_path / "src_copy"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "build")
    for name in ("build_tools", "src", "fastlstm"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    env = dict(os.environ, FASTLSTM_NO_OPENMP="1")
    env.pop("FASTLSTM_FAIL_NO_OPENMP", None)
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src,
                           env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-5000:]
    assert "-fopenmp" not in build.stdout + build.stderr
    assert "FASTLSTM_OPENMP=0" in build.stdout + build.stderr

    run_env = dict(os.environ, PYTHONPATH=str(src))
    run = subprocess.run([sys.executable, "-c", CHECK, str(src)], cwd=tmp_path, env=run_env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-5000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["openmp"] is False
    assert "off (serial build)" in result["text"]
    assert result["n_threads"] == 1


def test_bench_command_refuses_bad_numbers(capsys):
    # argparse errors (exit status 2, the argument named), before any timing runs
    from fastlstm import _bench

    for args, name in ((["--repeats", "0"], "--repeats"), (["--repeats", "-1"], "--repeats"),
                       (["--gap", "-1"], "--gap"), (["--gap", "nan"], "--gap")):
        with pytest.raises(SystemExit) as exc:
            _bench.main(args)
        assert exc.value.code == 2
        assert f"argument {name}" in capsys.readouterr().err


def test_bench_command_refuses_bad_selections_before_running(capsys, monkeypatch, tmp_path):
    """An empty or repeated case list, a repeated implementation and a --plot that cannot
    be written are refused before any timing (they ran every case, two identical columns,
    or failed after the whole run)."""
    import importlib.util

    from fastlstm import _bench

    monkeypatch.setattr(_bench, "run_cases", lambda *a, **k: pytest.fail("timed anyway"))
    real_find_spec = importlib.util.find_spec
    for args, message in ((["--cases", ""], "unknown case ''"),
                          (["--cases", "step,step"], "names a case twice"),
                          (["--impls", "fastlstm,fastlstm"], "names an implementation twice"),
                          (["--plot", str(tmp_path / "no" / "t.png")], "--plot")):
        if args[0] == "--plot":       # whether or not matplotlib is installed here
            monkeypatch.setattr(importlib.util, "find_spec",
                                lambda name, *a: object() if name == "matplotlib"
                                else real_find_spec(name, *a))
        with pytest.raises(SystemExit) as exc:
            _bench.main(args)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


def test_bench_peers_run_on_the_threads_fastlstm_may_use(capsys, monkeypatch):
    """Under a limit of one thread every implementation runs a 2-thread case on one, and
    the table says so (torch and ONNX Runtime were given 2 against fastlstm's 1)."""
    from fastlstm import _bench

    seen = []

    def fake_run(cases, impls, **kwargs):
        seen.extend(cases)
        return []

    monkeypatch.setattr(_bench, "run_cases", fake_run)
    monkeypatch.setattr(fl, "get_n_threads", lambda: 1)
    assert _bench.main(["--cases", "small,small-1t", "--impls", "fastlstm"]) == 0
    assert [c.n_threads for c in seen] == [1, 1]
    assert "run on 1 for every implementation" in capsys.readouterr().out


def test_installed_command_exits_quietly_on_a_closed_pipe(monkeypatch, capsys):
    """The installed ``fastlstm`` command runs what ``python -m fastlstm`` runs, with its
    handling of a reader that stops early (``fastlstm demo | head -1`` printed a
    BrokenPipeError traceback: the command pointed at main), and names itself in --help."""
    import tomllib

    from fastlstm import __main__ as cli

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        target = tomllib.load(f)["project"]["scripts"]["fastlstm"]
    module, name = target.split(":")
    assert module == "fastlstm.__main__" and getattr(cli, name) is cli.run

    def broken(argv=None):
        raise BrokenPipeError
    monkeypatch.setattr(cli, "main", broken)
    monkeypatch.setattr(cli.os, "dup2", lambda *a: None)    # keep pytest's stdout
    with open(os.devnull, "w") as sink:
        monkeypatch.setattr(cli.sys, "stdout", sink)
        assert cli.run() == 0
    monkeypatch.undo()
    for argv0, prog in (("/usr/local/bin/fastlstm", "fastlstm"),
                        ("/x/fastlstm/__main__.py", "python -m fastlstm"),
                        ("ipykernel_launcher.py", "python -m fastlstm")):
        monkeypatch.setattr(cli.sys, "argv", [argv0, "--help"])
        with pytest.raises(SystemExit):
            cli.main()
        assert capsys.readouterr().out.startswith(f"usage: {prog} ")


def test_command_line_errors_and_help_speak_of_the_sub_command(monkeypatch, capsys):
    """A stray argument after demo / config printed the top-level usage; --version did not
    exist ("the following arguments are required: command"); demo --help and config
    --help did not say what the command does."""
    import fastlstm
    from fastlstm import __main__ as cli

    monkeypatch.setattr(cli.sys, "argv", ["fastlstm"])
    for argv, usage in ((["demo", "extra"], "usage: fastlstm demo [-h]"),
                        (["config", "-x"], "usage: fastlstm config [-h]")):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith(usage)
        assert f"fastlstm {argv[0]}: error: unrecognized arguments: {argv[1]}" in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == \
        f"fastlstm {fastlstm.__version__}\n"
    for command, words in (("demo", "Run the TF1 walk-through"),
                           ("config", "Show how fastlstm was built")):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert words in capsys.readouterr().out


def test_source_distribution_holds_what_the_build_and_tests_read(tmp_path):
    """The sdist lacked build_tools/ (setup.py imports it), the .pyx / .pxd sources and the
    tests' data: it could not be installed."""
    import tarfile
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    pytest.importorskip("Cython")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    copy = tmp_path / "tree"
    for name in tracked:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    out = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)],
                         cwd=copy, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (archive,) = tmp_path.glob("fastlstm-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    wanted = [n for n in tracked
              if n.split("/")[0] in ("build_tools", "src", "fastlstm", "tests", "bench",
                                     "docs", "examples")
              or n in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in")]
    missing = sorted(set(wanted) - names)
    assert not missing, f"not in the sdist: {missing}"


def test_bench_plot_writes_a_png(tmp_path, monkeypatch):
    """--plot draws time against size per implementation (timings stubbed: the drawing is
    tested here, the timing by the benchmark suite)."""
    pytest.importorskip("matplotlib")
    from fastlstm import _bench

    def fake_run(cases, impls, **kwargs):
        rows = []
        for k, case in enumerate(cases):
            med = {impl: 1e-5 * (k + 1) * (j + 1) for j, impl in enumerate(impls)}
            rows.append((case, med, {}))
        return rows

    monkeypatch.setattr(_bench, "run_cases", fake_run)
    out = tmp_path / "t.png"
    assert _bench.main(["--quick", "--impls", "fastlstm,numpy", "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_times_a_float64_case_beside_its_float32_twin(monkeypatch, capsys):
    """A float64 case also times fastlstm in float32 on the same shape, weights and input,
    in the same interleaved samples; that twin is no peer, and the float64 / float32 ratio
    is printed after the table.  Timings stubbed: the bookkeeping is tested here."""
    import numpy as np

    from fastlstm import _bench

    case = next(c for c in _bench.CASES if c.name == "small-f64")
    runs_seen = {}

    def fake_measure(runs, repeats, min_time, gap):
        runs_seen.update(runs)
        fake = {"fastlstm": 2.0, _bench.TWIN: 0.8, "numpy": 5.0}
        return {k: [fake[k]] * repeats for k in runs}

    monkeypatch.setattr(_bench, "measure", fake_measure)
    rows = _bench.run_cases([case], ["fastlstm", "numpy"], repeats=1, out=io.StringIO())
    assert set(runs_seen) == {"fastlstm", "numpy", _bench.TWIN}
    # the twin computes the float64 case's maths in float32
    y64 = np.asarray(runs_seen["fastlstm"]()[0])
    y32 = np.asarray(runs_seen[_bench.TWIN]()[0])
    assert y64.dtype == np.float64 and y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, atol=1e-5)
    # the best peer is the NumPy reference, not the twin (which is faster here)
    assert "numpy 5.00 s | 2.50×" in _bench._row(case, rows[0][1], ["fastlstm", "numpy"])
    assert _bench.twin_ratios(rows) == [(case, 2.0 / 0.8)]

    monkeypatch.setattr(_bench, "run_cases", lambda *a, **k: rows)
    assert _bench.main(["--cases", "small-f64", "--impls", "fastlstm,numpy"]) == 0
    assert "float64 against float32 (fastlstm" in capsys.readouterr().out


def test_bench_takes_more_samples_of_cheap_cases(monkeypatch):
    """A full run without --repeats takes CHEAP_REPEATS samples of the cases under
    CHEAP_FLOPS, 7 of the others; --repeats and --quick set one count for all."""
    from fastlstm import _bench

    by_name = {c.name: c for c in _bench.CASES}
    small, medium = by_name["small"], by_name["medium"]
    assert small.flops < _bench.CHEAP_FLOPS < medium.flops
    seen = {}

    def fake_run(cases, impls, repeats=7, cheap_repeats=None, **kwargs):
        seen.update({c.name: _bench.case_repeats(c, repeats, cheap_repeats) for c in cases})
        return []

    monkeypatch.setattr(_bench, "run_cases", fake_run)
    for args, want in (([], (_bench.CHEAP_REPEATS, 7)), (["--repeats", "4"], (4, 4)),
                       (["--quick"], (3, 3))):
        seen.clear()
        cases = ["online"] if "--quick" in args else ["small", "medium"]
        assert _bench.main(["--cases", ",".join(cases), "--impls", "fastlstm"] + args) == 0
        got = (seen[cases[0]], seen.get("medium", seen[cases[0]]))
        assert got == want, (args, got)
