"""Command line: ``python -m fastlstm demo`` | ``config`` | ``bench``."""

import argparse
import os
import sys

import numpy as np


def demo(file=None):
    """The classic TF1 walk-through, run natively."""
    import fastlstm as fl

    np.set_printoptions(precision=5, suppress=True)
    p = lambda *a: print(*a, file=file or sys.stdout)  # noqa: E731

    p("== 1. One BasicLSTMCell(4) stepped by hand on a (c, h) state ==")
    cell = fl.LSTM(input_size=6, hidden_size=4, random_state=0)
    state = cell.zero_state(1)
    x = np.array([[3, 2, 2, 2, 2, 2]], np.float32)
    out, state = cell.step(x, state)
    p("input  x:", x.shape)
    p("output h:", out.shape, out)
    p("state  c:", state.c.shape, state.c)
    out, state = cell.step(x, state)
    p("second step, output:", out)

    p("\n== 2. LSTMCell with options: peepholes, cell_clip, num_proj=3, proj_clip ==")
    cell2 = fl.LSTM(6, 4, proj_size=3, peepholes=True, cell_clip=1.0, proj_clip=0.5,
                    random_state=0)
    out2, st2 = cell2.step(x)
    p(cell2)
    p("output (projected):", out2.shape, out2)
    p("state c:", st2.c.shape, " state h:", st2.h.shape)

    p("\n== 3. MultiRNNCell([4, 5]) + dynamic_rnn over [batch=2, time=3, features=6] ==")
    stack = fl.MultiLSTM([fl.LSTM(6, 4, random_state=1), fl.LSTM(4, 5, random_state=2)])
    X = np.array([[[1, 2, 3, 4, 3, 2], [1, 2, 1, 1, 1, 2], [1, 2, 2, 2, 2, 2]],
                  [[1, 2, 3, 4, 3, 2], [3, 2, 2, 1, 1, 2], [0, 0, 0, 0, 3, 2]]], np.float32)
    Y, states = stack(X)
    p("outputs:", Y.shape)
    p(Y)
    for k, s in enumerate(states):
        p(f"final state, layer {k}: c {s.c.shape}, h {s.h.shape}")
    p("top h equals the last output:", bool(np.array_equal(states[-1].h, Y[:, -1])))

    p("\n== 4. The same with sequence_length = [3, 1] ==")
    Y, states = stack(X, lengths=[3, 1])
    p(Y)
    p("row 1 is zero after its length; its final state is the state after step 0:")
    p("top h:", states[-1].h)

    p("\n== 5. Bidirectional layer, lengths [3, 1] ==")
    bi = fl.Bidirectional(fl.LSTM(6, 4, random_state=3), fl.LSTM(6, 4, random_state=4))
    Yb, (fw, bw) = bi(X, lengths=[3, 1])
    p("outputs [fw | bw]:", Yb.shape)
    p(Yb)
    return Y, states


def _prog():
    """How the user called us: ``fastlstm`` (the installed command) or ``python -m
    fastlstm``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "fastlstm" if os.path.splitext(name)[0] == "fastlstm" else "python -m fastlstm"


def main(argv=None):
    prog = _prog()
    from ._version import __version__

    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--version", action="version", version=f"fastlstm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {}
    for name, text in (("demo", "run the TF1 walk-through natively and print the results"),
                       ("config", "show how fastlstm was built and what it uses")):
        commands[name] = sub.add_parser(name, help=text, description=text[0].upper()
                                        + text[1:] + ".")
    bench = sub.add_parser("bench", help="side-by-side speed table (fastlstm and installed peers)")
    bench.add_argument("args", nargs=argparse.REMAINDER,
                       help="options for the benchmark runner (see `bench --help`)")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the runner parses its own options
        from . import _bench

        return _bench.main(argv[1:], prog=f"{prog} bench")
    ns, extra = parser.parse_known_args(argv)
    if extra:       # the sub-command's own usage, not the top level's
        commands[ns.command].error(f"unrecognized arguments: {' '.join(extra)}")
    if ns.command == "demo":
        demo()
    elif ns.command == "config":
        import fastlstm as fl

        fl.show_config()
    else:
        from . import _bench

        return _bench.main(ns.args, prog=f"{prog} bench")
    return 0


def run():
    """The command line (``python -m fastlstm`` and the installed ``fastlstm``): ``main``,
    exiting quietly when the reader of its output stops early."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader stopped early (`python -m fastlstm demo | head`): exit quietly, with
        # stdout pointed at devnull so that Python's own final flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    return code


if __name__ == "__main__":
    sys.exit(run())
