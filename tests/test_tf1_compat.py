"""The TF1-style module ``fastlstm.tf1``: TF's names, structures and default initialisation,
checked against golden TF numbers and the NumPy reference."""

import os
import re

import numpy as np
import pytest

import fastlstm as fl
import fastlstm.tf1 as tf
from fastlstm import reference as ref

DATA = os.path.join(os.path.dirname(__file__), "data")
TOL = {np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6),
       np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13)}
TUTORIAL_X = np.array([[[1, 2, 3, 4, 3, 2], [1, 2, 1, 1, 1, 2], [1, 2, 2, 2, 2, 2]],
                       [[1, 2, 3, 4, 3, 2], [3, 2, 2, 1, 1, 2], [0, 0, 0, 0, 3, 2]]])


def _params(layer):
    return {k: np.asarray(v, np.float64) for k, v in layer.params.items()}


def _opts(layer):
    return dict(cell_clip=layer.cell_clip, proj_clip=layer.proj_clip if layer.proj_size else None,
                activation=layer.activation, recurrent_activation=layer.recurrent_activation)


@pytest.mark.parametrize("name", ["tf1_multirnn_4_5_tutorial", "tf1_multirnn_4_5_tutorial_seqlen"])
@pytest.mark.parametrize("suffix", ["f32", "f64"])
def test_tutorial_against_golden(name, suffix):
    g = np.load(os.path.join(DATA, f"{name}_{suffix}.npz"))
    np.testing.assert_array_equal(g["inputs"], TUTORIAL_X)
    dtype = tf.float32 if suffix == "f32" else tf.float64
    # --- the tutorial's lines ---
    cells = [tf.contrib.rnn.BasicLSTMCell(num_units=n) for n in [4, 5]]
    stacked = tf.contrib.rnn.MultiRNNCell(cells)
    # --- (TF would restore a checkpoint here) ---
    for k, cell in enumerate(cells):
        cell.set_weights([g[f"cell_{k}.kernel"], g[f"cell_{k}.bias"]])
    lengths = g["sequence_length"] if "sequence_length" in g.files else None
    outputs, state = tf.nn.dynamic_rnn(stacked, g["inputs"], sequence_length=lengths,
                                       dtype=dtype)
    tol = TOL[np.dtype(dtype)]
    assert outputs.dtype == dtype and outputs.shape == (2, 3, 5)
    np.testing.assert_allclose(outputs, g["outputs"], **tol)
    assert isinstance(state, tuple) and len(state) == 2
    for k in range(2):
        assert isinstance(state[k], tf.LSTMStateTuple)
        np.testing.assert_allclose(state[k].c, g[f"final_state.{k}.c"], **tol)
        np.testing.assert_allclose(state[k].h, g[f"final_state.{k}.h"], **tol)
    # get_weights gives TF's variables back
    for k, cell in enumerate(cells):
        kernel, bias = cell.get_weights()
        np.testing.assert_array_equal(kernel, g[f"cell_{k}.kernel"])
        np.testing.assert_allclose(bias, g[f"cell_{k}.bias"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("suffix", ["f32", "f64"])
@pytest.mark.parametrize("stored", [False, True], ids=["float", "stored-0d-array"])
def test_cell_call_against_golden(suffix, stored):
    g = np.load(os.path.join(DATA, f"tf1_basic_cell_step_{suffix}.npz"))
    # the file's stored scalars (0-d arrays) go in as they are, or as Python numbers
    fb = g["forget_bias"] if stored else float(g["forget_bias"])
    units = np.array(4) if stored else 4
    cell = tf.nn.rnn_cell.BasicLSTMCell(units, forget_bias=fb)
    cell.set_weights([g["kernel"], g["bias"]])
    output, new_state = cell(g["x"], tf.LSTMStateTuple(g["state.c"], g["state.h"]))
    tol = TOL[np.dtype(g["x"].dtype)]
    np.testing.assert_allclose(output, g["output"], **tol)
    np.testing.assert_allclose(new_state.c, g["new_state.c"], **tol)
    np.testing.assert_array_equal(new_state.h, output)
    assert cell.state_size == (4, 4) and cell.output_size == 4
    for bad in ("1.0", True, np.array([1.0]), np.array("1.0")):
        with pytest.raises(TypeError, match="forget_bias must be a float"):
            tf.nn.rnn_cell.BasicLSTMCell(4, forget_bias=bad)


def test_default_initialisation_is_tf1s():
    I, H, P = 6, 7, 3
    cell = tf.LSTMCell(H, use_peepholes=True, num_proj=P, random_state=0)
    assert not cell.built and cell.get_weights() == []
    cell(np.zeros((1, I), np.float32), cell.zero_state(1, tf.float32))
    kernel, bias, wf, wi, wo, proj = cell.get_weights()
    assert kernel.shape == (I + P, 4 * H) and proj.shape == (H, P)
    np.testing.assert_array_equal(bias, 0)
    for arr, limit in ((kernel, np.sqrt(6 / (I + P + 4 * H))), (wf, np.sqrt(3 / H)),
                       (proj, np.sqrt(6 / (H + P)))):
        assert np.abs(arr).max() <= limit
    # the kernel's spread is that of U(-limit, limit) over the combined shape
    big = tf.BasicLSTMCell(64, random_state=1).build(200).get_weights()[0]
    limit = np.sqrt(6 / (200 + 64 + 256))
    assert abs(big.std() - limit / np.sqrt(3)) < 0.02 * limit
    assert np.abs(big).max() > 0.99 * limit
    # reproducible from random_state; the layer's b holds the folded forget bias
    again = tf.LSTMCell(H, use_peepholes=True, num_proj=P, random_state=0).build(I)
    np.testing.assert_array_equal(again.get_weights()[0], kernel)
    np.testing.assert_array_equal(cell.layer.b[H:2 * H], 1.0)


def test_initializer_argument():
    init = tf.random_uniform_initializer(-0.1, 0.1, seed=3)
    cell = tf.LSTMCell(4, use_peepholes=True, num_proj=2, initializer=init).build(5)
    kernel, bias, *rest = cell.get_weights()
    for arr in [kernel] + rest:
        assert np.abs(arr).max() <= 0.1
    np.testing.assert_array_equal(bias, 0)  # the initializer never touches the bias
    const = tf.LSTMCell(3, initializer=tf.constant_initializer(0.5)).build(2)
    np.testing.assert_array_equal(const.get_weights()[0], 0.5)
    with pytest.raises(TypeError, match="initializer must be callable"):
        tf.LSTMCell(3, initializer=0.5)


def test_lstmcell_options_against_reference():
    rng = np.random.default_rng(0)
    cell = tf.LSTMCell(5, use_peepholes=True, cell_clip=0.7, num_proj=3, proj_clip=0.4,
                       forget_bias=0.3, activation=tf.nn.relu, random_state=1)
    X = rng.normal(size=(3, 4, 6))
    outputs, state = tf.nn.dynamic_rnn(cell, X, sequence_length=[4, 1, 0], dtype=tf.float64)
    layer = cell.layer
    assert (layer.activation, layer.cell_clip, layer.proj_size) == ("relu", 0.7, 3)
    want, (c, h) = ref.lstm_forward(X, _params(layer), lengths=[4, 1, 0], **_opts(layer))
    np.testing.assert_allclose(outputs, want, **TOL[np.dtype(np.float64)])
    np.testing.assert_allclose(state.c, c, **TOL[np.dtype(np.float64)])
    assert state.h.shape == (3, 3) and cell.state_size == (5, 3)
    np.testing.assert_array_equal(state.c[2], 0)  # length 0 keeps the (zero) initial state


def test_state_is_tuple_false():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2, 3, 4)).astype(np.float32)
    a = tf.BasicLSTMCell(3, random_state=5)
    b = tf.BasicLSTMCell(3, state_is_tuple=False, random_state=5)
    ya, sa = tf.nn.dynamic_rnn(a, X, dtype=tf.float32)
    s0 = rng.normal(size=(2, 6)).astype(np.float32)
    yb, sb = tf.nn.dynamic_rnn(b, X, initial_state=np.zeros((2, 6), np.float32))
    np.testing.assert_array_equal(ya, yb)
    assert sb.shape == (2, 6) and b.state_size == 6
    np.testing.assert_array_equal(sb, np.concatenate([sa.c, sa.h], 1))
    yc, _ = tf.nn.dynamic_rnn(b, X, initial_state=s0)
    yd, _ = tf.nn.dynamic_rnn(a, X, initial_state=tf.LSTMStateTuple(s0[:, :3], s0[:, 3:]))
    np.testing.assert_array_equal(yc, yd)
    multi = tf.nn.rnn_cell.MultiRNNCell([tf.BasicLSTMCell(3, state_is_tuple=False),
                                         tf.BasicLSTMCell(2, state_is_tuple=False)],
                                        state_is_tuple=False)
    y, s = tf.nn.dynamic_rnn(multi, X, dtype=tf.float32)
    assert s.shape == (2, 10) and multi.state_size == 10
    with pytest.raises(ValueError, match="state_is_tuple is not set"):
        tf.MultiRNNCell([tf.BasicLSTMCell(3)], state_is_tuple=False)


def test_time_major_and_step_through_multirnncell():
    rng = np.random.default_rng(2)
    cells = tf.MultiRNNCell([tf.BasicLSTMCell(4, random_state=1),
                             tf.BasicLSTMCell(3, random_state=2)])
    X = rng.normal(size=(5, 2, 6))  # [time, batch, depth]
    outputs, state = tf.nn.dynamic_rnn(cells, X, time_major=True, dtype=tf.float64)
    assert outputs.shape == (5, 2, 3)
    s = cells.zero_state(2, tf.float64)
    for t in range(5):
        out, s = cells(X[t], s)
        np.testing.assert_allclose(out, outputs[t], **TOL[np.dtype(np.float64)])
    np.testing.assert_allclose(s[1].c, state[1].c, **TOL[np.dtype(np.float64)])
    assert isinstance(cells.model, fl.MultiLSTM)


def test_bidirectional_dynamic_rnn():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3, 5, 4))
    lengths = np.array([5, 2, 3])
    fw, bw = tf.LSTMCell(3, random_state=1), tf.LSTMCell(3, use_peepholes=True, random_state=2)
    (out_fw, out_bw), (st_fw, st_bw) = tf.nn.bidirectional_dynamic_rnn(
        fw, bw, X, sequence_length=lengths, dtype=tf.float64)
    want, (sf, sb) = ref.bidirectional_forward(X, _params(fw.layer), _params(bw.layer),
                                               lengths=lengths)
    tol = TOL[np.dtype(np.float64)]
    np.testing.assert_allclose(np.concatenate([out_fw, out_bw], -1), want, **tol)
    np.testing.assert_allclose(st_bw.c, sb[0], **tol)
    # stacks: each runs whole in its direction (not a stack of bidirectional layers)
    mf = tf.MultiRNNCell([tf.BasicLSTMCell(3, random_state=3), tf.BasicLSTMCell(2, random_state=4)])
    mb = tf.MultiRNNCell([tf.BasicLSTMCell(3, random_state=5), tf.BasicLSTMCell(2, random_state=6)])
    (o_f, o_b), (s_f, s_b) = tf.nn.bidirectional_dynamic_rnn(mf, mb, X, sequence_length=lengths,
                                                             dtype=tf.float64)
    inp = X
    for layer in mb.model.layers:
        inp, last = ref.lstm_forward(inp, _params(layer), lengths=lengths, reverse=True)
    np.testing.assert_allclose(o_b, inp, **tol)
    np.testing.assert_allclose(s_b[1].h, last[1], **tol)
    with pytest.raises(ValueError, match="two different cell objects"):
        tf.nn.bidirectional_dynamic_rnn(fw, fw, X, dtype=tf.float64)


def test_built_cells_wrapped_again_share_their_weights():
    """As in TF, cells already run inside one MultiRNNCell may be wrapped in another: the
    two stacks share the cells' weights (a weight written through either shows in both),
    and both compute the reference stack."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(2, 3, 6))
    cells = [tf.BasicLSTMCell(4, random_state=1), tf.BasicLSTMCell(5, random_state=2)]
    tol = TOL[np.dtype(np.float64)]

    def want():
        inp = X
        for c in cells:
            inp, _ = ref.lstm_forward(inp, _params(c.layer))
        return inp

    first = tf.MultiRNNCell(cells)
    out1, _ = tf.nn.dynamic_rnn(first, X, dtype=tf.float64)
    second = tf.MultiRNNCell(cells)
    out2, _ = tf.nn.dynamic_rnn(second, X, dtype=tf.float64)
    np.testing.assert_array_equal(out1, out2)
    np.testing.assert_allclose(out1, want(), **tol)
    cells[1].layer.b[...] = 0.5                      # through the cell, after the second wrap
    for stack in (first, second, first):
        out, state = tf.nn.dynamic_rnn(stack, X, dtype=tf.float64)
        np.testing.assert_allclose(out, want(), **tol)
        assert stack.model.layers[1] is cells[1].layer
    (o_f, o_b), _ = tf.nn.bidirectional_dynamic_rnn(first, second, X, dtype=tf.float64)
    np.testing.assert_array_equal(o_f, out)


def test_errors_follow_tf():
    cell = tf.BasicLSTMCell(3)
    X = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="you must give a dtype"):
        tf.nn.dynamic_rnn(cell, X)
    with pytest.raises(ValueError, match="3-D"):
        tf.nn.dynamic_rnn(cell, X[0], dtype=tf.float32)
    tf.nn.dynamic_rnn(cell, X, dtype=tf.float32)
    with pytest.raises(ValueError, match="built for input width 4"):
        tf.nn.dynamic_rnn(cell, np.zeros((2, 3, 5)), dtype=tf.float32)
    with pytest.raises(ValueError, match=r"sequence_length must be in \[0, T=3\]"):
        tf.nn.dynamic_rnn(cell, X, sequence_length=[4, 1], dtype=tf.float32)
    # TF casts sequence_length to int32: whole-number floats work, others are refused
    X2 = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    for a, b in zip(tf.nn.dynamic_rnn(cell, X2, sequence_length=np.array([3.0, 1.0]),
                                      dtype=tf.float32)[0:1],
                    tf.nn.dynamic_rnn(cell, X2, sequence_length=[3, 1], dtype=tf.float32)[0:1]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="sequence_length must hold whole numbers"):
        tf.nn.dynamic_rnn(cell, X, sequence_length=[2.5, 1.0], dtype=tf.float32)
    with pytest.raises(ValueError, match=r"sequence_length must have shape \(2,\)"):
        tf.nn.bidirectional_dynamic_rnn(tf.BasicLSTMCell(3), tf.BasicLSTMCell(3), X,
                                        sequence_length=[3], dtype=tf.float32)
    with pytest.raises(ValueError, match="its own object"):
        tf.MultiRNNCell([cell, cell])
    with pytest.raises(TypeError, match="nested stacks are not supported"):
        tf.MultiRNNCell([tf.MultiRNNCell([tf.BasicLSTMCell(3)]), tf.BasicLSTMCell(3)])
    with pytest.raises(ValueError, match="num_units"):
        tf.BasicLSTMCell(0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        tf.BasicLSTMCell(3, use_peepholes=True)
    with pytest.raises(ValueError, match="expected 2 arrays"):
        tf.BasicLSTMCell(3).set_weights([np.zeros((7, 12))])
    with pytest.raises(ValueError, match="activation"):
        tf.BasicLSTMCell(3, activation=np.exp)
    # a float32 cell's zero state in float64: TF's MatMul refuses the mix (this ran in
    # float32 and returned float32 outputs); with an initial state, dtype is not used
    with pytest.raises(TypeError, match="dtype=float64 does not match cell's dtype float32"):
        tf.nn.dynamic_rnn(cell, X.astype(np.float64), dtype=tf.float64)
    with pytest.raises(TypeError, match="does not match cell_bw's dtype float32"):
        tf.nn.bidirectional_dynamic_rnn(tf.BasicLSTMCell(3, dtype=tf.float64), cell, X,
                                        dtype=tf.float64)
    out, _ = tf.nn.dynamic_rnn(cell, X, initial_state=cell.zero_state(2, tf.float32),
                               dtype=tf.float64)
    assert out.dtype == np.float32


def test_namespaces():
    assert tf.contrib.rnn.BasicLSTMCell is tf.nn.rnn_cell.BasicLSTMCell is tf.BasicLSTMCell
    assert tf.compat.v1.nn.rnn_cell.LSTMCell is tf.LSTMCell
    assert tf.compat.v1.nn.dynamic_rnn is tf.dynamic_rnn
    assert tf.LSTMStateTuple is fl.LSTMState


def _doc_blocks():
    path = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "interop.md")
    with open(path) as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("k", range(len(_doc_blocks())))
def test_docs_examples_run(k, tmp_path, monkeypatch):
    block = _doc_blocks()[k]
    if "import torch" in block:
        pytest.importorskip("torch")
    if "onnx" in block:
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    if "import tensorflow" in block:
        pytest.skip("the original TF1 code, shown for comparison")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, f"docs/interop.md block {k}", "exec"), {})


def test_dtypes_other_than_float32_float64_are_refused():
    """int32 / float16 ran silently in float32 (TF refuses integers and runs float16)."""
    X = np.zeros((2, 3, 4), np.float32)
    for bad in (np.int32, np.float16, "int64"):
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            tf.nn.dynamic_rnn(tf.BasicLSTMCell(3), X, dtype=bad)
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            tf.BasicLSTMCell(3).zero_state(2, bad)
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            tf.LSTMCell(3, dtype=bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_first_cell_call_on_integer_inputs_takes_the_states_dtype(dtype):
    """The tutorial's integer array fed to an unbuilt cell by hand (where TF had a float
    placeholder): the cell is built in the state's dtype and the inputs cast, as
    dynamic_rnn(dtype=...) does (it was a TypeError about a dtype argument never given)."""
    x = TUTORIAL_X[:, 0]
    for make in (lambda: tf.BasicLSTMCell(4, random_state=0),
                 lambda: tf.MultiRNNCell([tf.BasicLSTMCell(4, random_state=0),
                                          tf.BasicLSTMCell(5, random_state=1)])):
        cell, twin = make(), make()
        out, _ = cell(x, cell.zero_state(2, dtype))
        want, _ = tf.nn.dynamic_rnn(twin, TUTORIAL_X[:, :1], dtype=dtype)
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, want[:, 0])


def test_time_major_truth_values_as_tf():
    cell = tf.BasicLSTMCell(3, random_state=0)
    X = np.random.default_rng(0).normal(size=(5, 2, 4)).astype(np.float32)
    a = tf.nn.dynamic_rnn(cell, X, time_major=1, dtype=tf.float32)[0]
    b = tf.nn.dynamic_rnn(cell, X, time_major=True, dtype=tf.float32)[0]
    np.testing.assert_array_equal(a, b)


def test_multi_rnn_cell_set_weights_and_in_place_updates():
    """MultiRNNCell had no set_weights; a built cell's set_weights replaced its layer, so
    cell.layer, the stack's model and optimisers made on them kept the old weights."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2, 4, 5)).astype(np.float32)

    def stack():
        return tf.MultiRNNCell([tf.LSTMCell(3, use_peepholes=True, random_state=1),
                                tf.LSTMCell(4, num_proj=2, random_state=2)])
    src, dst = stack(), stack()
    tf.nn.dynamic_rnn(src, X, dtype=tf.float32)
    weights = [w + rng.normal(scale=0.1, size=w.shape).astype(w.dtype)
               for w in src.get_weights()]
    src.set_weights(weights)
    dst.set_weights(weights)                    # unbuilt: built from the kernels
    for a, b in zip(dst.get_weights(), weights):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(tf.nn.dynamic_rnn(dst, X, dtype=tf.float32)[0],
                                  tf.nn.dynamic_rnn(src, X, dtype=tf.float32)[0])
    model, layer = dst.model, dst.cells[0].layer
    dst.set_weights(src.get_weights())          # built: written in place
    assert dst.model is model and dst.cells[0].layer is layer
    with pytest.raises(ValueError, match=r"expected 8 arrays \(5, 3 for the 2 cells\)"):
        dst.set_weights(weights[:-1])
    bad = list(weights)
    bad[5] = np.zeros((7 + 2, 16), np.float32)  # cell 1's kernel for input width 7
    with pytest.raises(ValueError, match="cell 1's kernel is for input width 7, but cell 0"):
        dst.set_weights(bad)


def test_flat_state_given_as_a_tuple_is_named():
    cell = tf.MultiRNNCell([tf.BasicLSTMCell(3, state_is_tuple=False),
                            tf.BasicLSTMCell(4, state_is_tuple=False)], state_is_tuple=False)
    X = np.zeros((2, 3, 5), np.float32)
    with pytest.raises(TypeError, match=r"initial_state must be one array \(batch, 14\)"):
        tf.nn.dynamic_rnn(cell, X, initial_state=(np.zeros((2, 6)), np.zeros((2, 8))))


def test_flat_state_as_nested_lists_and_atomic_set_weights():
    """A state_is_tuple=False state written as rows of numbers was refused as a tuple of
    states; a MultiRNNCell.set_weights that failed on cell 1 had already set cell 0."""
    cell = tf.MultiRNNCell([tf.BasicLSTMCell(3, state_is_tuple=False, random_state=0),
                            tf.BasicLSTMCell(4, state_is_tuple=False, random_state=1)],
                           state_is_tuple=False)
    X = np.random.default_rng(4).normal(size=(2, 3, 5)).astype(np.float32)
    s0 = np.random.default_rng(5).normal(size=(2, 14)).astype(np.float32)
    a = tf.nn.dynamic_rnn(cell, X, initial_state=s0)[0]
    b = tf.nn.dynamic_rnn(cell, X, initial_state=s0.tolist())[0]
    np.testing.assert_array_equal(a, b)
    before = cell.get_weights()
    bad = [w + 1 for w in before]
    bad[3] = np.zeros(7, np.float32)                 # cell 1's bias of the wrong shape
    with pytest.raises(ValueError, match="bias"):
        cell.set_weights(bad)
    for now, then in zip(cell.get_weights(), before):
        np.testing.assert_array_equal(now, then)


def test_refused_calls_leave_the_cells_unbuilt():
    # a refused call changes nothing: no weights drawn, no input width fixed, and the same
    # seed then gives the weights of a cell that was never called wrongly
    X = np.ones((2, 3, 6), np.float32)
    bad_state = (np.zeros((2, 4)), np.zeros((3, 4)))
    for make in (lambda rs: tf.nn.rnn_cell.BasicLSTMCell(4, random_state=rs),
                 lambda rs: tf.nn.rnn_cell.MultiRNNCell(
                     [tf.nn.rnn_cell.BasicLSTMCell(4, random_state=rs),
                      tf.nn.rnn_cell.BasicLSTMCell(4, random_state=rs)])):
        rs = np.random.RandomState(5)
        cell = make(rs)
        multi = isinstance(cell, tf.nn.rnn_cell.MultiRNNCell)
        state = (bad_state, bad_state) if multi else bad_state
        with pytest.raises(TypeError, match="real numbers"):
            tf.nn.dynamic_rnn(cell, X.astype(complex), dtype=np.float32)
        with pytest.raises(ValueError, match=r"must have shape \(2, 4\)"):
            # a wrong width and a bad state: refused, and the width is not kept
            tf.nn.dynamic_rnn(cell, np.ones((2, 3, 5), np.float32), initial_state=state)
        with pytest.raises(ValueError, match=r"must have shape \(2, 4\)"):
            cell(np.ones((2, 5), np.float32), state)       # one step, likewise
        assert not any(c.built for c in (cell.cells if multi else [cell]))
        out, _ = tf.nn.dynamic_rnn(cell, X, dtype=np.float32)
        fresh = make(np.random.RandomState(5))
        expected, _ = tf.nn.dynamic_rnn(fresh, X, dtype=np.float32)
        np.testing.assert_array_equal(out, expected)


def test_bidirectional_checks_both_directions_before_running_either():
    X = np.ones((2, 3, 6), np.float32)
    fw, bw = tf.nn.rnn_cell.BasicLSTMCell(4), tf.nn.rnn_cell.BasicLSTMCell(4)
    with pytest.raises(ValueError, match=r"initial_state_bw\.c must have shape \(2, 4\)"):
        tf.nn.bidirectional_dynamic_rnn(fw, bw, X, dtype=np.float32,
                                        initial_state_bw=(np.zeros((9, 4)), np.zeros((9, 4))))
    assert not fw.built and not bw.built
    (out_fw, out_bw), _ = tf.nn.bidirectional_dynamic_rnn(fw, bw, X, dtype=np.float32)
    assert out_fw.shape == out_bw.shape == (2, 3, 4)


@pytest.mark.parametrize("bad", [-1, 2.0, None, True, "2"])
def test_zero_state_batch_size_is_checked(bad):
    for cell in (tf.nn.rnn_cell.BasicLSTMCell(4), tf.nn.rnn_cell.MultiRNNCell(
            [tf.nn.rnn_cell.BasicLSTMCell(4), tf.nn.rnn_cell.BasicLSTMCell(5)])):
        with pytest.raises(ValueError, match="batch_size must be a non-negative int"):
            cell.zero_state(bad, np.float32)
    assert tf.nn.rnn_cell.BasicLSTMCell(4).zero_state(np.int64(3), np.float32).c.shape == (3, 4)


def test_a_call_refused_by_its_size_leaves_the_cell_unbuilt():
    # the checks that depend on the number of steps (32-bit row counts, memory) come with
    # the run, after the zero-step checks: the rollback covers them too
    rs = np.random.RandomState(0)
    cell = tf.nn.rnn_cell.BasicLSTMCell(8, random_state=rs)
    state = rs.get_state()[1].copy()
    x = np.broadcast_to(np.zeros((1, 1, 3), np.float32), (1, 2 ** 31 + 8, 3))
    with pytest.raises((ValueError, MemoryError)):
        tf.nn.dynamic_rnn(cell, x, dtype=np.float32)
    assert not cell.built and np.array_equal(rs.get_state()[1], state)
    out, _ = tf.nn.dynamic_rnn(cell, np.zeros((1, 2, 5), np.float32), dtype=np.float32)
    assert out.shape == (1, 2, 8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("forget_bias", [1.0, 3.7, 0.1])
def test_get_weights_gives_the_loaded_bias_back(dtype, forget_bias):
    """TF keeps the bias as loaded and adds forget_bias on each call; fastlstm folds it into
    b, and subtracting it again rounded the f block in the last bit."""
    rng = np.random.default_rng(11)
    cell = tf.LSTMCell(5, use_peepholes=True, forget_bias=forget_bias, dtype=dtype)
    weights = [rng.normal(size=(3 + 5, 20)).astype(dtype), rng.normal(size=20).astype(dtype)]
    weights += [rng.normal(size=5).astype(dtype) for _ in range(3)]
    x = rng.normal(size=(2, 3)).astype(dtype)
    state = cell.zero_state(2, dtype)
    for built in (False, True):          # unbuilt: built from the kernel; built: in place
        if built:
            cell(x, state)
        for _ in range(3):
            cell.set_weights(weights)
            weights = cell.get_weights()
        for got, want in zip(cell.get_weights(), weights):
            np.testing.assert_array_equal(got, want)
        assert cell.get_weights()[1].dtype == dtype
    # the stack's list is the cells' lists
    stack = tf.MultiRNNCell([tf.BasicLSTMCell(4, forget_bias=forget_bias, dtype=dtype),
                             tf.BasicLSTMCell(3, forget_bias=forget_bias, dtype=dtype)])
    w = [rng.normal(size=(3 + 4, 16)), rng.normal(size=16), rng.normal(size=(4 + 3, 12)),
         rng.normal(size=12)]
    w = [a.astype(dtype) for a in w]
    stack.set_weights(w)
    for got, want in zip(stack.get_weights(), w):
        np.testing.assert_array_equal(got, want)
    # once the layer's bias changes (training), the bias is the layer's, less forget_bias
    H = 5
    cell.layer.b[H:2 * H] += dtype(0.5)
    f_tf = cell.get_weights()[1][2 * H:3 * H]
    np.testing.assert_array_equal(f_tf, cell.layer.b[H:2 * H] - dtype(forget_bias))
    np.testing.assert_allclose(f_tf, weights[1][2 * H:3 * H] + 0.5,
                               rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_clip_arguments_are_checked_when_the_cell_is_made():
    with pytest.raises(TypeError, match="cell_clip must be None or a non-negative float"):
        tf.LSTMCell(3, cell_clip="a")
    with pytest.raises(ValueError, match="proj_clip must be None or a non-negative float"):
        tf.LSTMCell(3, num_proj=2, proj_clip=-1.0)
    tf.LSTMCell(3, proj_clip=-1.0)       # TF ignores proj_clip without a projection


def test_stack_state_that_is_not_a_tuple_is_tfs_value_error():
    stack = tf.MultiRNNCell([tf.BasicLSTMCell(3), tf.BasicLSTMCell(2)])
    x = np.zeros((2, 4), np.float32)
    state = stack.zero_state(2, tf.float32)
    for bad in (state[0], state[:1], np.zeros((2, 10), np.float32)):
        for exc in (ValueError, TypeError):
            with pytest.raises(exc, match="expected a tuple of length 2"):
                stack(x, bad)
    out, _ = stack(x, state)
    assert out.shape == (2, 2)


def test_state_errors_name_the_argument_and_the_cell():
    """A wrong state named "initial_state" whichever argument and cell of a stack held it
    (initial_state_bw, or the second cell of a MultiRNNCell)."""
    X = np.zeros((3, 4, 2), np.float32)
    with pytest.raises(ValueError, match=r"^initial_state_fw\.h must have shape \(3, 3\)"):
        tf.nn.bidirectional_dynamic_rnn(
            tf.nn.rnn_cell.LSTMCell(3), tf.nn.rnn_cell.LSTMCell(4), X, dtype=np.float32,
            initial_state_fw=tf.nn.rnn_cell.LSTMStateTuple(np.zeros((3, 3)), np.zeros((3, 4))))
    stack = tf.nn.rnn_cell.MultiRNNCell([tf.nn.rnn_cell.BasicLSTMCell(4),
                                         tf.nn.rnn_cell.LSTMCell(5, num_proj=2)])
    state = (tf.nn.rnn_cell.LSTMStateTuple(np.zeros((3, 4)), np.zeros((3, 4))),
             tf.nn.rnn_cell.LSTMStateTuple(np.zeros((3, 5)), np.zeros((3, 5))))
    with pytest.raises(ValueError, match=r"^initial_state\[1\]\.h must have shape \(3, 2\)"):
        tf.nn.dynamic_rnn(stack, X, initial_state=state)


def test_cell_calls_need_a_state_as_in_tf():
    """TF's cells fail on state=None (AttributeError; MultiRNNCell a ValueError); these
    refuse it with a TypeError naming the state and the zero_state remedy, so that code
    run here runs in TF too.  A width-0 input is refused naming ``inputs``."""
    x = np.ones((2, 4), np.float32)
    for cell in (tf.nn.rnn_cell.BasicLSTMCell(3), tf.nn.rnn_cell.LSTMCell(3, num_proj=2),
                 tf.nn.rnn_cell.MultiRNNCell([tf.nn.rnn_cell.BasicLSTMCell(3),
                                              tf.nn.rnn_cell.BasicLSTMCell(2)])):
        with pytest.raises(TypeError, match=r"state must be the cell's state.*zero_state"):
            cell(x, None)
        out, _ = cell(x, cell.zero_state(2, tf.float32))
        assert out.shape[0] == 2
    with pytest.raises(ValueError, match="inputs must have a known, positive width"):
        tf.nn.dynamic_rnn(tf.nn.rnn_cell.BasicLSTMCell(3), np.zeros((2, 3, 0), np.float32),
                          dtype=tf.float32)
