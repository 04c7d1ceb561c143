"""The README's runnable examples run and do what the README says they do."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_walkthrough_runs_with_tf_shapes():
    block = next(b for b in python_blocks() if "fl.MultiLSTM([fl.LSTM(6, 4), fl.LSTM(4, 5)])" in b)
    ns = {}
    exec(compile(block, "README walk-through", "exec"), ns)
    assert ns["out"].shape == (1, 4) and ns["state"].c.shape == (1, 4)
    assert ns["Y"].shape == (2, 3, 8)                      # the last line: Bidirectional
    assert np.all(ns["Y"][1, 1:] == 0)                      # lengths [3, 1]
    assert [s.h.shape for s in ns["states"]] == [(2, 4), (2, 5)]


def test_training_example_learns():
    block = next(b for b in python_blocks() if "optim.Adam" in b)
    block = block.replace("print(", "(lambda *a, **k: None)(")
    ns = {}
    exec(compile(block, "README training", "exec"), ns)
    assert ns["loss"] < 0.05  # predicting the mean gives about 0.5


def test_demo_command_runs_the_walkthrough():
    import io

    from fastlstm.__main__ import demo

    out = io.StringIO()
    Y, states = demo(file=out)
    text = out.getvalue()
    assert "outputs: (2, 3, 5)" in text and "outputs [fw | bw]: (2, 3, 8)" in text
    assert np.all(Y[1, 1:] == 0)                    # the lengths [3, 1] run comes last
    np.testing.assert_array_equal(states[-1].h[1], Y[1, 0])
