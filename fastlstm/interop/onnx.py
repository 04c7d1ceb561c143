"""ONNX ``LSTM`` nodes <-> fastlstm (SPEC.md §5, §8).  Needs the ``onnx`` extra.

ONNX keeps ``W`` (D, 4H, I), ``R`` (D, 4H, H), ``B`` (D, 8H) (input and recurrent bias,
summed), ``P`` (D, 3H) (peepholes p_i, p_o, p_f), gate blocks in the order (i, o, f, c);
direction 0 is forward, 1 the reverse half of a bidirectional node.  ONNX has no
projection and no cell-state clip; its ``clip`` clamps the gate pre-activations and
``input_forget`` ties f = 1 - i, neither of which fastlstm computes: such models are
refused, as are activations fastlstm does not compute exactly.

Where the rules differ: a row with ``sequence_lens = 0`` gives ``Y_h = Y_c = 0`` in ONNX
but the initial state in fastlstm (TF's rule).  Both agree whenever the initial state is
zero; ``onnx_state`` applies ONNX's rule to a fastlstm state explicitly.

``activation_alpha`` / ``activation_beta`` are read and written the way onnxruntime reads
them: consumed in order by the functions that take parameters (HardSigmoid, Affine).  A
missing HardSigmoid pair means (0.2, 0.5) for both ONNX and onnxruntime, a missing Affine
beta 0; an Affine without its alpha is refused (ONNX's Affine defaults to alpha 1,
onnxruntime computes with 0).
"""

import os
import warnings

import numpy as np

from ._common import (PERM_FROM_ONNX, PERM_TO_ONNX, assemble, bias_sum, blocks, build_layer,
                      check_range, directions, layers_of, refuse_unrepresentable)
from .._optional import need
from ..layers import ACTIVATIONS, LSTMState

__all__ = ["to_onnx", "from_onnx", "onnx_state"]

DEFAULT_OPSET = 14
_HARD_SIGMOID = {"hard_sigmoid": 1.0 / 6.0, "hard_sigmoid_keras2": 0.2}
_ACT_TO_ONNX = {"tanh": ("Tanh",), "relu": ("Relu",), "sigmoid": ("Sigmoid",),
                "linear": ("Affine", 1.0, 0.0)}
_NEEDS_PARAMS = {"affine": 2, "hardsigmoid": 2, "leakyrelu": 1, "thresholdedrelu": 1,
                 "scaledtanh": 2, "elu": 1}
_DEFAULT_PARAMS = {"affine": (1.0, 0.0), "hardsigmoid": (0.2, 0.5), "leakyrelu": (0.01, 0.0),
                   "thresholdedrelu": (1.0, 0.0), "scaledtanh": (1.0, 1.0), "elu": (1.0, 0.0)}
# ops that only move data between stacked LSTM nodes
_SHAPE_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten"}


# ---------------------------------------------------------------------------------------
# export


def _activations(layer):
    """[(name, alpha, beta) for f, g, h] of one direction."""
    ra = layer.recurrent_activation
    f = ("Sigmoid",) if ra == "sigmoid" else ("HardSigmoid", _HARD_SIGMOID[ra], 0.5)
    g = _ACT_TO_ONNX[layer.activation]
    return [f, g, g]


def _check_exportable(item, k):
    dirs = directions(item)
    for d, layer in enumerate(dirs):
        refuse_unrepresentable(layer, "ONNX LSTM", activations=tuple(ACTIVATIONS),
                               recurrent_activations=("sigmoid",) + tuple(_HARD_SIGMOID),
                               peepholes=True, where=f"layer {k}" + (" (backward)" if d else ""))
    if len({layer.hidden_size for layer in dirs}) > 1:
        raise ValueError(f"layer {k}: ONNX's bidirectional LSTM has one hidden_size; the two "
                         f"directions have {[layer.hidden_size for layer in dirs]}")


def to_onnx(model, path=None, *, opset=DEFAULT_OPSET, time_major=False, lengths=False,
            initial_state=False, dtype=None, graph_name="fastlstm"):
    """An ONNX model computing what a fastlstm model computes, with standard LSTM nodes.

    One ``LSTM`` node per layer (``direction="bidirectional"`` for ``Bidirectional``),
    between them ``Transpose`` + ``Reshape`` that turn ``Y`` [T, D, N, H] into the
    [T, N, D*H] input of the next layer (``[forward | backward]``, fastlstm's order).

    Graph inputs: ``X`` [N, T, I] (or [T, N, I] with ``time_major=True``; nodes use
    ``layout=0``, which onnxruntime requires, with ``Transpose`` around them);
    ``sequence_lens`` [N] int32 when ``lengths=True``; ``initial_h_k`` / ``initial_c_k``
    [D, N, H] per layer when ``initial_state=True``.
    Graph outputs: ``Y`` like fastlstm's output, and ``Y_h_k`` / ``Y_c_k`` [D, N, H] per
    layer k (fastlstm's state of layer k, direction d is ``(Y_c_k[d], Y_h_k[d])``).  One
    difference is ONNX's: a row of ``sequence_lens`` 0 gets ``Y_h = Y_c = 0``, where
    fastlstm (as TF) returns that row's initial state; ``onnx_state`` gives fastlstm's
    state in ONNX's terms.

    dtype : float32 / float64 (default: the model's).  onnxruntime runs float32 only.
    opset : the ONNX opset imported, from 7 (LSTM's maths are the same from there on; the
        graph uses no ``layout`` attribute, new in 14) to the newest the installed onnx
        knows; default 14.
    graph_name : the graph's name (default ``"fastlstm"``).
    path : if given, the model is also saved there.  Returns the ``onnx.ModelProto``.

    Refused (ValueError): projections, ``cell_clip`` (ONNX's ``clip`` is a different
    operation), and bidirectional layers whose two directions differ in size.
    """
    onnx = need("onnx", "to_onnx")
    from onnx import TensorProto, helper, numpy_helper

    items = layers_of(model)
    for k, item in enumerate(items):
        _check_exportable(item, k)
    dt = np.dtype(dtype) if dtype is not None else model.dtype
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or \
            not 7 <= opset <= newest:
        raise ValueError(f"opset must be an int from 7 (LSTM as ONNX defines it today) to "
                         f"{newest} (the newest this onnx {onnx.__version__} knows), got "
                         f"{opset!r}")
    opset = int(opset)
    if not isinstance(graph_name, str) or not graph_name:
        raise TypeError(f"graph_name must be a non-empty str, got {graph_name!r}")
    if path is not None and not isinstance(path, (str, os.PathLike)) and \
            not hasattr(path, "write"):
        raise TypeError(f"path must be None, a path or a binary file, got "
                        f"{type(path).__name__}")
    elem = TensorProto.FLOAT if dt == np.float32 else TensorProto.DOUBLE
    I = model.input_size
    x_shape = ["time", "batch", I] if time_major else ["batch", "time", I]
    inputs = [helper.make_tensor_value_info("X", elem, x_shape)]
    outputs = []
    nodes, inits = [], []
    if lengths:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["batch"]))
    cur = "X"
    if not time_major:
        nodes.append(helper.make_node("Transpose", ["X"], ["X_time_major"], perm=[1, 0, 2]))
        cur = "X_time_major"
    inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "concat_shape"))
    for k, item in enumerate(items):
        dirs = directions(item)
        D, H = len(dirs), dirs[0].hidden_size
        for layer in dirs:   # a float64 model written as float32: nothing may overflow
            for what in ("W", "U", "b") + (("peepholes",) if layer.use_peepholes else ()):
                check_range(getattr(layer, what), dt, f"layer {k}: {what}")
        W = np.stack([blocks(layer.W.T, PERM_TO_ONNX, 0) for layer in dirs]).astype(dt)
        R = np.stack([blocks(layer.U.T, PERM_TO_ONNX, 0) for layer in dirs]).astype(dt)
        B = np.stack([np.concatenate([blocks(layer.b, PERM_TO_ONNX, 0), np.zeros(4 * H)])
                      for layer in dirs]).astype(dt)
        names = [cur, f"W_{k}", f"R_{k}", f"B_{k}"]
        inits += [numpy_helper.from_array(W, f"W_{k}"), numpy_helper.from_array(R, f"R_{k}"),
                  numpy_helper.from_array(B, f"B_{k}")]
        names.append("sequence_lens" if lengths else "")
        if initial_state:
            for s in ("h", "c"):
                inputs.append(helper.make_tensor_value_info(f"initial_{s}_{k}", elem,
                                                            [D, "batch", H]))
            names += [f"initial_h_{k}", f"initial_c_{k}"]
        else:
            names += ["", ""]
        if any(layer.use_peepholes for layer in dirs):
            P = np.stack([np.concatenate([layer.peepholes[0], layer.peepholes[2],
                                          layer.peepholes[1]]) if layer.use_peepholes
                          else np.zeros(3 * H) for layer in dirs]).astype(dt)
            inits.append(numpy_helper.from_array(P, f"P_{k}"))
            names.append(f"P_{k}")
        while names[-1] == "":
            names.pop()
        attrs = dict(hidden_size=H, direction="bidirectional" if D == 2 else
                     "reverse" if item.reverse else "forward")
        acts = [a for layer in dirs for a in _activations(layer)]
        if any(a[0] != d for a, d in zip(acts, ["Sigmoid", "Tanh", "Tanh"] * D)):
            attrs["activations"] = [a[0] for a in acts]
            if any(len(a) > 1 for a in acts):
                attrs["activation_alpha"] = [float(a[1]) for a in acts if len(a) > 1]
                attrs["activation_beta"] = [float(a[2]) for a in acts if len(a) > 1]
        nodes.append(helper.make_node("LSTM", names, [f"Y4_{k}", f"Y_h_{k}", f"Y_c_{k}"],
                                      name=f"lstm_{k}", **attrs))
        nodes.append(helper.make_node("Transpose", [f"Y4_{k}"], [f"Y4t_{k}"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"Y4t_{k}", "concat_shape"], [f"Y_{k}"]))
        outputs += [helper.make_tensor_value_info(f"Y_h_{k}", elem, [D, "batch", H]),
                    helper.make_tensor_value_info(f"Y_c_{k}", elem, [D, "batch", H])]
        cur = f"Y_{k}"
    F = model.output_size
    if time_major:
        nodes.append(helper.make_node("Identity", [cur], ["Y"]))
        y_shape = ["time", "batch", F]
    else:
        nodes.append(helper.make_node("Transpose", [cur], ["Y"], perm=[1, 0, 2]))
        y_shape = ["batch", "time", F]
    outputs.insert(0, helper.make_tensor_value_info("Y", elem, y_shape))
    graph = helper.make_graph(nodes, graph_name, inputs, outputs, inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                   producer_name="fastlstm")
    onnx.checker.check_model(onnx_model)
    if path is not None:
        onnx.save(onnx_model, os.fspath(path) if isinstance(path, (str, os.PathLike)) else path)
    return onnx_model


# ---------------------------------------------------------------------------------------
# import


def _attr_dict(node):
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, (list, tuple)):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


def _parse_activations(attrs, D, where):
    """[(activation, recurrent_activation)] per direction, or ValueError."""
    names = attrs.get("activations")
    if not names:   # absent, or an empty list: the defaults (as onnxruntime reads it)
        return [("tanh", "sigmoid")] * D
    names = [str(n) for n in names]
    if len(names) != 3 * D:
        raise ValueError(f"{where}: activations must list 3 functions per direction "
                         f"({3 * D}), got {names}")
    alphas = list(attrs.get("activation_alpha", []))
    betas = list(attrs.get("activation_beta", []))
    parsed = []
    for name in names:
        low = name.lower()
        n = _NEEDS_PARAMS.get(low, 0)
        a, b = _DEFAULT_PARAMS.get(low, (None, None))
        if n:
            if low == "affine" and not alphas:
                # ONNX's Affine operator defaults to alpha 1, but onnxruntime takes 0 for a
                # missing alpha (it has defaults only for LeakyRelu, HardSigmoid and Elu):
                # the node means different things to different runtimes.  A missing beta
                # is 0 for both.
                raise ValueError(f"{where}: activation {name} without its alpha in "
                                 "activation_alpha is ambiguous (ONNX's Affine defaults to "
                                 "alpha 1, onnxruntime computes with 0)")
            a = alphas.pop(0) if alphas else a
            if n > 1:
                b = betas.pop(0) if betas else b
        parsed.append((low, a, b))
    out = []
    for d in range(D):
        f, g, h = parsed[3 * d:3 * d + 3]
        if f[0] == "sigmoid":
            rec = "sigmoid"
        elif f[0] == "hardsigmoid" and np.float32(f[2]) == np.float32(0.5) and \
                np.float32(f[1]) in (np.float32(0.2), np.float32(1.0 / 6.0)):
            rec = "hard_sigmoid_keras2" if np.float32(f[1]) == np.float32(0.2) else "hard_sigmoid"
        else:
            raise ValueError(f"{where}: gate activation {names[3 * d]}"
                             + (f"(alpha={f[1]}, beta={f[2]})" if f[1] is not None else "")
                             + " cannot be represented exactly (fastlstm has Sigmoid and "
                             "HardSigmoid with alpha 0.2 or 1/6 and beta 0.5)")
        if g != h:
            raise ValueError(f"{where}: activations g={names[3 * d + 1]} and "
                             f"h={names[3 * d + 2]} differ; fastlstm uses one function for both")
        if g[0] in ("tanh", "relu", "sigmoid"):
            act = g[0]
        elif g[0] == "affine" and g[1] == 1.0 and g[2] == 0.0:
            act = "linear"
        else:
            raise ValueError(f"{where}: activation {names[3 * d + 1]} cannot be represented "
                             "exactly (fastlstm has Tanh, Relu, Sigmoid and Affine(1, 0))")
        out.append((act, rec))
    return out


def _tensors(proto):
    """Every tensor stored in the model: initializers and node attributes (``Constant``
    nodes' values), subgraphs included."""
    def graph_tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from graph_tensors(attr.g)
                for sub in attr.graphs:
                    yield from graph_tensors(sub)
    return graph_tensors(proto.graph)


def _load(model):
    onnx = need("onnx", "from_onnx")

    from google.protobuf.message import DecodeError

    if isinstance(model, onnx.ModelProto):
        proto, unloaded = model, ("model refers to weights in external data files that are "
                                  "not loaded: pass its path (or onnx.load it with its data)")
    elif not isinstance(model, (str, os.PathLike, bytes, bytearray)) and \
            not hasattr(model, "read"):
        raise TypeError(f"model must be a path, bytes, a file or an onnx.ModelProto, "
                        f"got {type(model).__name__}")
    else:
        try:
            if isinstance(model, (bytes, bytearray)):
                proto = onnx.load_from_string(bytes(model))
                unloaded = ("model keeps its weights in external data files, which bytes do "
                            "not carry: pass its path instead")
            elif isinstance(model, (str, os.PathLike)):
                # onnx reads external data beside the model's file
                proto, unloaded = onnx.load(os.fspath(model)), None
            else:
                # a file object: onnx finds external data beside the file its `name` gives;
                # without one (io.BytesIO) nothing is loaded, and reading the tensors would
                # then open files of those names in the working directory
                path = getattr(model, "name", None)
                has_path = isinstance(path, (str, os.PathLike)) and os.path.isfile(path)
                proto = onnx.load(model, load_external_data=has_path)
                unloaded = ("model keeps its weights in external data files, and the file "
                            "object has no path to find them by: pass the model's path")
        except DecodeError as exc:   # the file system's own errors pass as they are
            raise ValueError(f"model is not a valid ONNX model (protobuf: {exc})") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _tensors(proto)):
        raise ValueError(unloaded or "model refers to external data files that onnx did "
                         "not load")
    return proto


def from_onnx(model, *, return_initial_state=False, dtype=None):
    """A fastlstm model from the ``LSTM`` nodes of an ONNX model.

    model : path, bytes, file object or ``onnx.ModelProto``.  Its LSTM nodes, in graph
        order, must form a stack: each node's ``X`` comes from the previous node's ``Y``
        through shape operations only (the first from a graph input), which must give it
        [time, batch, features] ([batch, time, features] for layout 1), the features
        [forward | backward].  W, R, B and P must be stored in the model (initializers
        or Constant nodes) or computed from stored values alone (as torch's export with
        ``do_constant_folding=False`` reorders the gates); an initial state computed in
        the graph must be zeros or a graph input moved by shape operations.
    return_initial_state : also return the initial states stored in the model (a per-layer
        tuple like the model's state, None for a layer without stored state).  Stored
        non-zero initial states are otherwise refused, since the model alone would not
        reproduce them.
    dtype : float32 / float64, default: that of the weights.

    Returns ``LSTM`` / ``Bidirectional`` / ``MultiLSTM`` (and the initial states).
    A ``direction="reverse"`` node becomes an ``LSTM`` with ``reverse=True``.
    Refused: ``clip``, ``input_forget=1``, activations fastlstm does not compute, graphs
    whose LSTM nodes are not a plain stack, graphs computing more after it (their outputs
    must be the nodes' results moved by shape operations), and nodes reading different
    ``sequence_lens``.  ``sequence_lens`` and ``layout`` only
    concern the call: pass ``lengths=`` (and ``time_major=``) to the fastlstm model (a
    ``sequence_lens`` stored in the model is not applied, with a warning).
    """
    proto = _load(model)
    from onnx import numpy_helper

    graph = proto.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {}
    for node in graph.node:
        if node.op_type == "Constant":
            value = _constant_value(node)
            if value is not None:
                consts[node.output[0]] = value
        for out in node.output:
            producer[out] = node
    graph_inputs = {i.name for i in graph.input}
    lstms = [n for n in graph.node if n.op_type == "LSTM" and n.domain in ("", "ai.onnx")]
    if not lstms:
        raise ValueError("the ONNX model has no LSTM node")
    _fold_parameters(proto, lstms, consts, producer, graph_inputs)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                 None)
    _check_outputs(graph, lstms, producer, consts, graph_inputs, opset)
    _check_sequence_lens(lstms, producer, consts, graph_inputs)
    graph_ = _Graph(proto, consts, producer)
    items, states = [], []
    for k, node in enumerate(lstms):
        where = f"LSTM node {k} ({node.name or 'unnamed'})"
        _check_source(node, k, lstms, graph_, graph_inputs, where)
        item, state = _node_to_item(node, consts, graph_inputs, where, dtype, producer)
        items.append(item)
        states.append(state)
    result = assemble(items)
    if return_initial_state:
        return result, (states[0] if len(items) == 1 else tuple(states))
    for k, s in enumerate(states):
        if s is not None and any(np.any(a != 0) for part in _flat_state(s) for a in part):
            raise ValueError(f"LSTM node {k} stores a non-zero initial state, which a fastlstm "
                             "model does not hold: pass return_initial_state=True and give it "
                             "to the model as initial_state")
    return result


# operations whose results are not a function of their inputs alone
_NOT_FOLDABLE = ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                 "Multinomial", "Bernoulli", "Dropout", "LSTM", "GRU", "RNN", "Loop", "If",
                 "Scan")


def _fold_parameters(proto, lstms, consts, producer, graph_inputs):
    """W, R, B and P computed in the graph from stored values alone (torch's export with
    ``do_constant_folding=False`` reorders the gates with Slice / Concat nodes) are
    evaluated once here, with ONNX's reference evaluator, and added to ``consts``.
    Anything reading a graph input, or not a plain function of its inputs, is left
    alone (and refused later as not stored)."""
    for node in lstms:
        for idx in (1, 2, 3, 7):
            name = node.input[idx] if len(node.input) > idx else ""
            if not name or name in consts or name not in producer:
                continue
            needed, todo, ok = {}, [name], True
            while todo and ok:
                out = todo.pop()
                if out in consts or out == "" or out in needed:
                    continue
                op = producer.get(out)
                ok = (op is not None and out not in graph_inputs
                      and op.domain in ("", "ai.onnx") and op.op_type not in _NOT_FOLDABLE
                      and not any(a.type in (5, 10) for a in op.attribute))   # no subgraphs
                if ok:
                    needed[out] = op
                    todo.extend(op.input)
            if not ok or len(needed) > 1000:
                continue
            nodes = []
            for n in proto.graph.node:            # graph order is a topological order
                if any(o in needed for o in n.output) and n not in nodes:
                    nodes.append(n)
            leaves = {i for n in nodes for i in n.input if i in consts}
            try:
                consts[name] = _evaluate(proto, nodes, {k: consts[k] for k in leaves}, name)
            except Exception:                 # noqa: BLE001 - left to the "not stored" error
                continue


def _evaluate(proto, nodes, values, name):
    """The value ``name`` computed by ``nodes`` from the stored ``values``."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = helper.make_graph(
        nodes, "fold", [], [helper.make_tensor_value_info(name, 0, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in values.items()])
    model = helper.make_model(graph, opset_imports=list(proto.opset_import),
                              ir_version=proto.ir_version)
    return np.asarray(ReferenceEvaluator(model).run(None, {})[0])


# operations that only move or select the LSTM nodes' results (to the graph's outputs)
_OUTPUT_OPS = _SHAPE_OPS | {"Concat", "Slice", "Split", "Gather", "Cast", "Dropout"}


def _constant_value(node):
    """The value of a Constant node (its ``value`` tensor, or ``value_float(s)`` /
    ``value_int(s)``), None for the others (strings, sparse)."""
    from onnx import numpy_helper

    attrs = _attr_dict(node)
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    for key, dt in (("value_float", np.float32), ("value_floats", np.float32),
                    ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dt)
    return None


def _moves_values(node, name, consts, graph_inputs, opset):
    """Whether a node on the way to a graph output (``name``, one of its outputs) leaves
    the LSTM results' values as they are: shape operations; a Cast to float32 or float64
    (not to half precision, integers or booleans); a Dropout's output (not its mask) in
    inference mode (no training_mode or a false stored one, or one the caller gives as a
    graph input; up to opset 6 ``is_test=1``)."""
    from onnx import TensorProto

    if node.op_type == "Cast":
        return _attr_dict(node).get("to") in (TensorProto.FLOAT, TensorProto.DOUBLE)
    if node.op_type == "Dropout":
        if name != node.output[0]:
            return False                                # the mask
        if opset is not None and opset <= 6:
            return _attr_dict(node).get("is_test", 0) == 1
        mode = node.input[2] if len(node.input) > 2 else ""
        return not mode or (mode in graph_inputs and mode not in consts) or (
            mode in consts and not np.any(consts[mode]))
    return node.op_type in _OUTPUT_OPS


def _check_outputs(graph, lstms, producer, consts, graph_inputs, opset):
    """Every graph output must be an LSTM node's result moved by shape operations (torch's
    h_n is the nodes' Y_h concatenated): a graph that computes more after the stack (a
    head, a residual sum) is refused, since the model imported would compute less; so is
    a graph whose outputs do not use the last LSTM node (it would compute more)."""
    reached = set()
    for out in graph.output:
        todo, seen = [out.name], set()
        while todo:
            name = todo.pop()
            node = producer.get(name)
            if node is not None and node.op_type == "LSTM":
                reached.add(id(node))
            if name in seen or node is not None and node.op_type == "LSTM":
                continue
            if node is None:
                raise ValueError(
                    f"graph output {out.name!r} is, or joins an LSTM result with, "
                    f"{name!r}, a graph input or stored value: fastlstm imports LSTM stacks "
                    "only, and the model would compute less than the graph")
            seen.add(name)
            if not _moves_values(node, name, consts, graph_inputs, opset) \
                    or node.domain not in ("", "ai.onnx") \
                    or len(seen) > 10000:
                what = {"Cast": " casting to another type",
                        "Dropout": " in training mode, or its mask,"}.get(node.op_type, "")
                raise ValueError(
                    f"graph output {out.name!r} is computed by a {node.op_type} node{what} "
                    f"({node.name or 'unnamed'}) from the LSTM nodes' results: fastlstm "
                    "imports LSTM stacks only, and the model would compute less than the "
                    "graph (export the LSTM part alone, and apply the rest to its output)")
            todo.extend(node.input if node.op_type == "Concat" else node.input[:1])
    if lstms and id(lstms[-1]) not in reached:
        last = lstms[-1]
        raise ValueError(
            f"no graph output uses the results of the last LSTM node ({last.name or 'node '}"
            f"{'' if last.name else len(lstms) - 1}): the model imported would run more "
            "layers than the graph computes (export the graph with that node's outputs, or "
            "without the node)")


def _check_sequence_lens(lstms, producer, consts, graph_inputs):
    """All LSTM nodes must read the same sequence_lens (or none): a fastlstm stack applies
    one ``lengths`` to every layer.  They must be a graph input (the caller's lengths=)
    moved by shape operations; stored ones are not applied (a warning), computed ones
    refused (the caller's lengths would not be the node's)."""
    def source(node):
        name = node.input[4] if len(node.input) > 4 else ""
        while name in producer and producer[name].op_type in _SHAPE_OPS | {"Cast"}:
            name = producer[name].input[0]
        return name

    names = [source(node) for node in lstms]
    if len(set(names)) > 1:
        raise ValueError(
            "the LSTM nodes read different sequence_lens ("
            + ", ".join(f"node {k}: {n or 'none'}" for k, n in enumerate(names))
            + "): a fastlstm stack applies one lengths= to every layer")
    name = names[0]
    if name in consts:
        default = " (the default of a graph input)" if name in graph_inputs else ""
        warnings.warn(f"the model stores sequence_lens {np.asarray(consts[name]).tolist()}"
                      f"{default}; a fastlstm model takes lengths per call: pass lengths= "
                      "to it", UserWarning, stacklevel=3)
    elif name and name not in graph_inputs:
        op = producer[name].op_type if name in producer else "no node"
        warnings.warn(f"the LSTM nodes' sequence_lens is computed in the graph (by a {op} "
                      "node), not taken from a graph input as it is: pass the lengths the "
                      "graph computes as lengths= to the fastlstm model (all steps run "
                      "without)", UserWarning, stacklevel=3)


def _flat_state(s):
    return [s] if isinstance(s, LSTMState) else list(s)


def _check_source(node, k, lstms, graph, graph_inputs, where):
    producer = graph.producer
    if k == 0:
        name = node.input[0]
        while name in producer and producer[name].op_type in _SHAPE_OPS:
            name = producer[name].input[0]
        if name in producer and producer[name].op_type == "LSTM":
            raise ValueError(f"{where}: the first LSTM node reads another LSTM's output")
        if name not in graph_inputs and name in producer:
            raise ValueError(f"{where}: its input X is computed by a {producer[name].op_type} "
                             "node; only shape operations may precede the first LSTM")
        if name not in graph_inputs:
            raise ValueError(f"{where}: its input X is not a graph input but a value stored "
                             "in the model; a fastlstm model takes its input at each call")
        return
    prev = lstms[k - 1]
    try:
        _check_link(prev, node, graph, where)
    except (IndexError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{where}: the shape operations before it cannot be followed "
                         f"({type(exc).__name__}: {exc}); the LSTM nodes are not a plain "
                         "stack fastlstm can check") from None


def _check_link(prev, node, graph, where):
    """The shape operations from the previous node's Y to this node's X, followed on the
    meaning of the axes: they must give this node's [T, N, features] ([N, T, features]
    for layout 1), the features [forward | backward].  A stack that moves the time or
    batch axis, or mixes the directions' features otherwise, is refused: the MultiLSTM
    built from it would compute something else."""
    pa = _attr_dict(prev)
    D = 2 if pa.get("direction", "forward") == "bidirectional" else 1
    H = int(pa.get("hidden_size", 0)) or _const_shape(prev, graph.consts)
    size = {"D": D, "H": H, "1": 1}
    order = ("T", "D", "N", "H") if pa.get("layout", 0) == 0 else ("N", "T", "D", "H")
    for part, n in zip(order, graph.dims(prev.output[0])):
        if part in ("T", "N") and n:
            size[part] = n    # a model exported for fixed sizes may reshape to them

    def atoms(axis):   # the axis' parts that are not of size 1 (T, N always kept)
        return tuple(a for a in axis if a in ("T", "N") or size.get(a) != 1)

    known = {prev.output[0]: [(p,) for p in order]}
    direction = {prev.output[0]: None}   # a value holding one direction's half only
    not_stack = (f"{where}: its input does not come from the previous LSTM node's Y "
                 "through shape operations only; the LSTM nodes are not a plain stack")

    def follow(name, depth=0):
        """The axes of a value between the two nodes (memoised in ``known``)."""
        if name in known:
            return known[name]
        op = graph.producer.get(name)
        if op is None or depth > 256 or op.op_type not in _SHAPE_OPS | {"Slice", "Concat"}:
            raise ValueError(not_stack)
        if op.op_type == "Concat":
            parts = [follow(n, depth + 1) for n in op.input]
            axes = _concat_directions(op, parts, [direction[n] for n in op.input], atoms,
                                      where)
            direction[name] = None
        else:
            src = follow(op.input[0], depth + 1)
            if op.op_type == "Slice":
                axes, direction[name] = _slice_direction(op, src, direction[op.input[0]],
                                                         size, graph, where)
            else:
                axes = _follow_shape_op(op, src, atoms, size, graph, known, where)
                direction[name] = direction[op.input[0]]
        known[name] = axes
        return axes

    axes = follow(node.input[0])
    if direction[node.input[0]] is not None:
        raise ValueError(f"{where}: it reads one direction of the previous node only")
    want = [("T",), ("N",), atoms(("D", "H"))]
    if _attr_dict(node).get("layout", 0) == 1:
        want[:2] = want[1::-1]
    if [atoms(a) for a in axes] != want:
        names = {("T",): "time", ("N",): "batch", atoms(("D", "H")): "features"}
        got = ", ".join(names.get(atoms(a), "+".join(atoms(a)) or "1") for a in axes)
        raise ValueError(f"{where}: the shape operations before it turn the previous LSTM "
                         f"node's Y into [{got}], not this node's "
                         f"[{', '.join(names[a] for a in want)}] with features "
                         "[forward | backward]; the LSTM nodes are not a plain stack")


def _slice_direction(op, axes, direction, size, graph, where):
    """A Slice between two nodes: only the selection of one direction of a bidirectional
    Y ([k:k+1] on its direction axis, as tf2onnx writes), which leaves that axis of size 1
    and marks the value as holding direction k."""
    a = _attr_dict(op)
    if len(op.input) > 1:
        vals = [_shape_value(n, graph, {}) if n else None for n in list(op.input[1:]) + [""] * 4]
        starts, ends, ax, steps = vals[:4]
    else:
        starts, ends, ax, steps = a.get("starts"), a.get("ends"), a.get("axes"), None
    bad = ValueError(f"{where}: the Slice before it keeps part of an axis other than one "
                     "direction of a bidirectional Y; the LSTM nodes are not a plain stack")
    if starts is None or ends is None or len(starts) != 1 or len(ends) != 1 or \
            not all(isinstance(v, int) for v in list(starts) + list(ends)):
        raise bad
    k_axis = int((ax or [0])[0])
    k_axis = k_axis + len(axes) if k_axis < 0 else k_axis
    if steps not in (None, [1]) or not 0 <= k_axis < len(axes) or \
            axes[k_axis] != ("D",) or size["D"] != 2 or direction is not None:
        raise bad
    start = starts[0] + 2 if starts[0] < 0 else starts[0]
    end = min(ends[0] + 2 if ends[0] < 0 else ends[0], 2)
    if start not in (0, 1) or end != start + 1:
        raise bad
    return axes[:k_axis] + [("1",)] + axes[k_axis + 1:], start


def _concat_directions(op, parts, directions, atoms, where):
    """A Concat between two nodes: only [forward | backward] along the hidden axis of
    values holding one direction each (tf2onnx's join of a bidirectional Y)."""
    axis = int(_attr_dict(op).get("axis", 0))
    bad = ValueError(f"{where}: the Concat before it does not join the forward and backward "
                     "halves of the previous node's Y on the feature axis; the LSTM nodes are "
                     "not a plain stack")
    if len(parts) != 2 or directions != [0, 1] or len(parts[0]) != len(parts[1]):
        raise bad
    rank = len(parts[0])
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank or atoms(parts[0][axis]) != ("H",) or \
            atoms(parts[1][axis]) != ("H",) or \
            [atoms(x) for k, x in enumerate(parts[0]) if k != axis] != \
            [atoms(x) for k, x in enumerate(parts[1]) if k != axis]:
        raise bad
    out = list(parts[0])
    out[axis] = ("D", "H")
    return out


class _Graph:
    """What the import needs to look up in a graph: stored values, each value's producing
    node, and the sizes ONNX's shape inference finds (when it can)."""

    def __init__(self, proto, consts, producer):
        self.consts, self.producer = consts, producer
        self._proto, self._shapes = proto, None

    def dims(self, name):
        """The inferred sizes of a value's axes (0 where unknown), or ()."""
        if self._shapes is None:
            self._shapes = {}
            try:
                from onnx import ModelProto, shape_inference
                # sizes from the declared inputs only: value_info and output shapes are
                # hints a graph may state for one size and run for others
                bare = ModelProto()
                bare.CopyFrom(self._proto)
                del bare.graph.value_info[:]
                for out in bare.graph.output:
                    out.type.tensor_type.ClearField("shape")
                inferred = shape_inference.infer_shapes(bare).graph
                for v in list(inferred.value_info) + list(inferred.input):
                    self._shapes[v.name] = [d.dim_value if d.HasField("dim_value") else 0
                                            for d in v.type.tensor_type.shape.dim]
            except Exception:   # no shapes: sizes stay unknown
                pass
        return self._shapes.get(name, ())


def _const_shape(node, consts):
    W = consts.get(node.input[1]) if len(node.input) > 1 else None
    return 0 if W is None else int(np.shape(W)[1]) // 4


def _int_list(op, consts, attr, idx, where):
    """An operation's integer list, from its attribute (older opsets) or stored input."""
    a = _attr_dict(op)
    if attr in a:
        return [int(v) for v in np.atleast_1d(a[attr])]
    if len(op.input) > idx and op.input[idx]:
        if op.input[idx] not in consts:
            raise ValueError(f"{where}: the {op.op_type} before it takes a computed {attr}, "
                             "which cannot be checked")
        return [int(v) for v in np.atleast_1d(consts[op.input[idx]])]
    return None


def _shape_value(name, graph, known, depth=0):
    """A shape computed in the graph from the sizes of followed values (torch's exporter
    writes Shape -> Slice / Gather -> Mul -> Concat): a list of entries, each an int or a
    tuple of axis parts whose sizes multiply to it; None when it cannot be followed."""
    if depth > 64:
        return None
    if name in graph.consts:
        v = np.asarray(graph.consts[name])
        return [int(x) for x in v.reshape(-1)] if v.dtype.kind in "iu" and v.ndim <= 1 \
            else None
    node = graph.producer.get(name)
    if node is None:
        return None
    kind, a = node.op_type, _attr_dict(node)

    def arg(k):
        return _shape_value(node.input[k], graph, known, depth + 1) \
            if len(node.input) > k and node.input[k] else None

    if kind == "Shape":
        axes = known.get(node.input[0])
        if axes is None:
            return None
        r = len(axes)
        lo, hi = (min(max(v + r if v < 0 else v, 0), r)
                  for v in (a.get("start", 0), a.get("end", r)))
        return [tuple(x) for x in axes[lo:hi]]
    if kind in ("Identity", "Cast", "Squeeze", "Unsqueeze", "Reshape", "Flatten"):
        return arg(0)   # a shape vector (or one entry of it) keeps its entries
    if kind == "Concat":
        parts = [_shape_value(n, graph, known, depth + 1) for n in node.input]
        return None if any(p is None for p in parts) else sum(parts, [])
    if kind == "Slice" and len(node.input) == 1:   # opset < 10: starts / ends attributes
        data = arg(0)
        if data is None or [int(x) for x in a.get("axes", [0])] not in ([0], [-1]):
            return None
        return data[int(a["starts"][0]):int(a["ends"][0])] \
            if "starts" in a and "ends" in a else None
    if kind in ("Slice", "Gather"):
        data, idx = arg(0), [arg(k) for k in range(1, len(node.input))]
        if data is None or any(v is None or not all(isinstance(x, int) for x in v)
                               for v in idx) or a.get("axis", 0) != 0:
            return None
        if kind == "Gather":
            return [data[i] for i in idx[0]] if all(-len(data) <= i < len(data)
                                                    for i in idx[0]) else None
        starts, ends = idx[0], idx[1]
        if len(idx) > 2 and idx[2] not in ([0], [-1]):
            return None
        step = idx[3][0] if len(idx) > 3 else 1
        return data[starts[0]:ends[0]:step] if step else None
    if kind == "Mul":
        x, y = arg(0), arg(1)
        if x is None or y is None or len(x) != 1 or len(y) != 1:
            return None
        x, y = x[0], y[0]
        if isinstance(x, int) and isinstance(y, int):
            return [x * y]
        if x == 1 or y == 1:
            return [y if x == 1 else x]
        return [x + y] if not isinstance(x, int) and not isinstance(y, int) else None
    return None


def _follow_shape_op(op, axes, atoms, size, graph, known, where):
    """The axes after one shape operation; each axis is a tuple of parts (T, N, D, H, or
    1 for an inserted axis), outermost first."""
    rank, kind, consts = len(axes), op.op_type, graph.consts
    bad = f"{where}: the {kind} before it"
    if kind == "Identity":
        return axes
    if kind == "Transpose":
        perm = _attr_dict(op).get("perm")
        perm = list(range(rank))[::-1] if perm is None else [int(p) for p in perm]
        if sorted(perm) != list(range(rank)):
            raise ValueError(f"{bad} has perm {perm} for a rank-{rank} tensor")
        return [axes[p] for p in perm]
    if kind == "Squeeze":
        ax = _int_list(op, consts, "axes", 1, where)
        if not ax:   # no (or empty) axes: every axis of size 1, time or batch too if 1
            if any(p in ("T", "N") and size.get(p, 0) <= 1 for a in axes for p in a):
                raise ValueError(f"{bad} has no axes: it also removes the time or batch "
                                 "axis when that has size 1")
            return [a for a in axes if atoms(a)]
        ax = {a + rank if a < 0 else a for a in ax}
        if any(not 0 <= a < rank or atoms(axes[a]) for a in ax):
            raise ValueError(f"{bad} removes axes {sorted(ax)} that are not of size 1")
        return [a for k, a in enumerate(axes) if k not in ax]
    if kind == "Unsqueeze":
        ax = _int_list(op, consts, "axes", 1, where)
        out_rank = rank + len(ax or ())
        ax = sorted(a + out_rank if a < 0 else a for a in (ax or ()))
        out, rest = [], iter(axes)
        for k in range(out_rank):
            out.append(("1",) if k in ax else next(rest, ("1",)))
        return out
    if kind == "Flatten":
        axis = int(_attr_dict(op).get("axis", 1))
        axis = axis + rank if axis < 0 else axis
        return [sum(axes[:axis], ()), sum(axes[axis:], ())]
    # Reshape: the new shape must only split or merge parts whose sizes are known, and
    # keep T and N whole, each on its own axis
    shape = None
    if len(op.input) > 1 and op.input[1]:
        shape = _shape_value(op.input[1], graph, known)
    if shape is None or (_attr_dict(op).get("allowzero", 0) and 0 in shape):
        raise ValueError(f"{bad} has a shape that is neither stored nor computed from the "
                         "sizes of its input (or one with allowzero), which cannot be checked")
    flat = [p for a in axes for p in atoms(a)]
    offset = np.cumsum([0] + [len(atoms(a)) for a in axes])

    def take(parts, want):
        """The parts at the start of ``parts`` that make an axis of size ``want`` (an
        int, or parts whose sizes multiply to it), or None."""
        if not isinstance(want, int):
            want = atoms(want)
            return tuple(parts[:len(want)]) if sorted(parts[:len(want)]) == sorted(want) \
                else None
        if want == 1 and parts and parts[0] in ("T", "N") and size.get(parts[0]) == 1:
            return (parts[0],)
        out, n = [], 1
        for p in parts:
            if n == want:
                break
            if p not in size:
                return None
            out.append(p)
            n *= size[p]
        return tuple(out) if n == want else None

    ints = [v for v in shape if isinstance(v, int)]
    if ints.count(-1) > 1 or any(v < -1 for v in ints):
        raise ValueError(f"{bad} has an invalid shape {shape}")
    split = shape.index(-1) if -1 in ints else len(shape)
    moved = f"{bad} (shape {shape}) moves data across the time or batch axis"
    out, lo = [], 0
    for j, v in enumerate(shape[:split]):
        if v == 0:
            if j >= rank or lo != offset[j]:
                raise ValueError(moved)
            part = atoms(axes[j])
        else:
            part = take(flat[lo:], v)
            if part is None:
                raise ValueError(f"{bad} (shape {shape}) splits or merges the time or batch "
                                 "axis")
        out.append(part or ("1",))
        lo += len(part)
    tail, hi = [], len(flat)
    for j, v in reversed(list(enumerate(shape[split + 1:], split + 1))):
        if v == 0:
            if j >= rank or hi != offset[j + 1]:
                raise ValueError(moved)
            part = atoms(axes[j])
        else:
            part = take(flat[:hi][::-1], v if isinstance(v, int) else tuple(v)[::-1])
            if part is None:
                raise ValueError(f"{bad} (shape {shape}) splits or merges the time or batch "
                                 "axis")
            part = part[::-1]
        tail.insert(0, part or ("1",))
        hi -= len(part)
    if split < len(shape):
        out.append(tuple(flat[lo:hi]) or ("1",))
    elif lo != hi:
        raise ValueError(f"{bad} (shape {shape}) does not hold the whole tensor")
    return out + tail


def _const(node, idx, consts, graph_inputs, where, what, required=False):
    name = node.input[idx] if len(node.input) > idx else ""
    if name == "":
        if required:
            raise ValueError(f"{where}: input {what} is missing")
        return None
    if name in consts:
        return np.asarray(consts[name])
    if required:
        raise ValueError(f"{where}: {what} ({name!r}) is not stored in the model (it is computed "
                         "or a graph input), so it cannot be read")
    return "runtime"


# For a computed initial state: the operations that only move values (the listed inputs
# carry them; the others are shapes, axes or indices; None: all of them).  Any other
# operation computes new values, which the model cannot reproduce from the caller's state.
_VALUE_INPUTS = {
    "Identity": (0,), "Cast": (0,), "Reshape": (0,), "Flatten": (0,),
    "Squeeze": (0,), "Unsqueeze": (0,), "Expand": (0,), "Tile": (0,), "Slice": (0,),
    "Gather": (0,), "Transpose": (0,), "Split": (0,), "Concat": None,
}
# arithmetic that keeps zeros zero (a state computed from zeros alone is zero)
_ZERO_PRESERVING = {"Add": None, "Sub": None, "Mul": None, "Neg": (0,)}


def _state_sources(name, consts, graph_inputs, producer, memo=None):
    """Where a computed initial state's values come from: a set of "input" (a graph
    input's values, moved but not changed, which the caller supplies), "zero" (stored
    zeros, ConstantOfShape 0) and "stored" (other stored values, values computed from
    them or from a graph input, or operations this cannot follow)."""
    memo = {} if memo is None else memo
    if name not in memo:
        memo[name] = {"stored"}    # while in progress: a cycle cannot be followed
        memo[name] = _state_sources_of(name, consts, graph_inputs, producer, memo)
    return memo[name]


def _state_sources_of(name, consts, graph_inputs, producer, memo):
    from onnx import TensorProto, numpy_helper

    if name in consts:
        return {"stored" if np.any(np.asarray(consts[name]) != 0) else "zero"}
    if name in graph_inputs:
        return {"input"}
    node = producer.get(name)
    if node is None:
        return {"stored"}
    if node.op_type == "LSTM":
        return {"lstm"}
    if node.op_type == "ConstantOfShape":
        value = _attr_dict(node).get("value")
        zero = value is None or not np.any(numpy_helper.to_array(value) != 0)
        return {"zero" if zero else "stored"}
    if node.op_type == "Cast" and _attr_dict(node).get("to") not in (
            TensorProto.FLOAT, TensorProto.DOUBLE):
        return {"stored"}   # to integers or half precision: the values change
    table = _VALUE_INPUTS if node.op_type in _VALUE_INPUTS else _ZERO_PRESERVING
    if node.op_type not in table:
        return {"stored"}
    idx = table[node.op_type]
    names = [n for k, n in enumerate(node.input) if n and (idx is None or k in idx)]
    out = set()
    for n in names:
        out |= _state_sources(n, consts, graph_inputs, producer, memo)
    if table is _ZERO_PRESERVING and out != {"zero"}:
        return {"stored"}
    return out


def _node_to_item(node, consts, graph_inputs, where, dtype, producer):
    attrs = _attr_dict(node)
    if "clip" in attrs:
        raise ValueError(f"{where}: clip={attrs['clip']} clamps the gate pre-activations, "
                         "which fastlstm does not compute (its cell_clip clamps the cell state)")
    if attrs.get("input_forget", 0):
        raise ValueError(f"{where}: input_forget=1 (f = 1 - i) cannot be represented in fastlstm")
    direction = attrs.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ValueError(f"{where}: unknown direction {direction!r}")
    D = 2 if direction == "bidirectional" else 1
    layout = attrs.get("layout", 0)
    if layout not in (0, 1):
        raise ValueError(f"{where}: layout={layout} (ONNX defines 0 and 1)")
    W = _const(node, 1, consts, graph_inputs, where, "W", required=True)
    R = _const(node, 2, consts, graph_inputs, where, "R", required=True)
    if W.ndim != 3 or W.shape[0] != D or W.shape[1] % 4:
        raise ValueError(f"{where}: W must have shape ({D}, 4*hidden_size, input_size), "
                         f"got {W.shape}")
    H = W.shape[1] // 4
    if attrs.get("hidden_size", H) != H:
        raise ValueError(f"{where}: hidden_size={attrs['hidden_size']} but W has 4*{H} rows")
    if R.shape != (D, 4 * H, H):
        raise ValueError(f"{where}: R must have shape ({D}, {4 * H}, {H}), got {R.shape}")
    B = _const(node, 3, consts, graph_inputs, where, "B")
    P = _const(node, 7, consts, graph_inputs, where, "P")
    for what, arr, shape in (("B", B, (D, 8 * H)), ("P", P, (D, 3 * H))):
        if isinstance(arr, str):
            raise ValueError(f"{where}: {what} is not stored in the model")
        if arr is not None and arr.shape != shape:
            raise ValueError(f"{where}: {what} must have shape {shape}, got {arr.shape}")
    acts = _parse_activations(attrs, D, where)
    h0 = _const(node, 5, consts, graph_inputs, where, "initial_h")
    c0 = _const(node, 6, consts, graph_inputs, where, "initial_c")
    for what, idx, v in (("initial_h", 5, h0), ("initial_c", 6, c0)):
        # computed in the graph: from the caller's inputs (they pass it as initial_state),
        # or zeros (torch's export of a call without a state); a state computed from other
        # stored values (a learned initial state, broadcast to the batch) is not one the
        # model alone can reproduce
        if isinstance(v, str):
            src = _state_sources(node.input[idx], consts, graph_inputs, producer)
            if "lstm" in src:
                raise ValueError(
                    f"{where}: {what} comes from another LSTM node's final state, which a "
                    "stack imported by fastlstm does not pass on (each layer starts from "
                    "the initial state its caller gives)")
            if not src or "stored" in src:
                raise ValueError(
                    f"{where}: {what} is computed from values stored in the model (a learned "
                    "initial state?) or by arithmetic in the graph, which fastlstm cannot "
                    "read from the graph; compute it yourself and pass it to the model as "
                    "initial_state")
            if src == {"zero"}:       # computed zeros: as if omitted
                if what == "initial_h":
                    h0 = None
                else:
                    c0 = None
    made = []
    for d in range(D):
        b = None if B is None else blocks(bias_sum(B[d, :4 * H], B[d, 4 * H:], dtype),
                                          PERM_FROM_ONNX, 0)
        peep = None
        if P is not None and not (D == 2 and not np.any(P[d]) and np.any(P[1 - d])):
            # (one direction of a bidirectional node all zero beside the other's: a layer
            # without peepholes, as to_onnx writes a Bidirectional with one half having them)
            p = P[d]
            peep = np.stack([p[:H], p[2 * H:], p[H:2 * H]])  # (p_i, p_o, p_f) -> (i, f, o)
        made.append(build_layer(blocks(W[d], PERM_FROM_ONNX, 0).T,
                                blocks(R[d], PERM_FROM_ONNX, 0).T, b, peepholes=peep,
                                dtype=dtype, activation=acts[d][0],
                                recurrent_activation=acts[d][1],
                                name=where + (" reverse" if d else "")))
    item = tuple(made) if D == 2 else made[0]
    if direction == "reverse":
        made[0].reverse = True
    state = None
    for what, v in (("initial_h", h0), ("initial_c", c0)):
        if isinstance(v, np.ndarray) and (v.ndim != 3 or v.shape[2] != H
                                          or v.shape[1 if layout == 1 else 0] != D):
            raise ValueError(f"{where}: {what} must have shape "
                             + (f"(N, {D}, {H})" if layout == 1 else f"({D}, N, {H})")
                             + f", got {v.shape}")
    # one part stored as zeros and the other a graph input: as computed zeros (the caller
    # passes the initial state whole, that part zeros)
    if isinstance(h0, np.ndarray) and isinstance(c0, str) and not np.any(h0):
        h0 = None
    if isinstance(c0, np.ndarray) and isinstance(h0, str) and not np.any(c0):
        c0 = None
    # one part stored as zeros and the other omitted (zeros too in ONNX): no state; one
    # part stored and the other omitted: that one is zeros
    if (h0 is None and isinstance(c0, np.ndarray) and not np.any(c0)) or \
            (c0 is None and isinstance(h0, np.ndarray) and not np.any(h0)):
        h0 = c0 = None
    if h0 is None and isinstance(c0, np.ndarray):
        h0 = np.zeros_like(c0)
    if c0 is None and isinstance(h0, np.ndarray):
        c0 = np.zeros_like(h0)
    if isinstance(h0, np.ndarray) or isinstance(c0, np.ndarray):
        if not (isinstance(h0, np.ndarray) and isinstance(c0, np.ndarray)):
            raise ValueError(f"{where}: one of initial_h / initial_c is stored in the model "
                             "and the other is a graph input; fastlstm takes the initial "
                             "state whole, either stored (return_initial_state=True) or "
                             "passed per call")
        if layout == 1 and h0.ndim == 3 and c0.ndim == 3:  # [N, D, H] -> [D, N, H]
            h0, c0 = np.swapaxes(h0, 0, 1), np.swapaxes(c0, 0, 1)
        if h0.ndim != 3 or h0.shape[0] != D or h0.shape[2] != H or c0.shape != h0.shape:
            raise ValueError(f"{where}: initial_h / initial_c must have shape ({D}, N, {H})")
        dt = made[0].dtype
        check_range(h0, dt, f"{where}: initial_h")
        check_range(c0, dt, f"{where}: initial_c")
        per_dir = [LSTMState(c0[d].astype(dt), h0[d].astype(dt)) for d in range(D)]
        state = tuple(per_dir) if D == 2 else per_dir[0]
    return item, state


def onnx_state(state, lengths):
    """A fastlstm final state with ONNX's rule for empty rows applied: rows whose length
    is 0 become zeros (fastlstm, like TF, returns their initial state).  ``state`` is any
    nesting of ``LSTMState``; returns new arrays."""
    L = np.asarray(lengths)
    if L.ndim != 1 or L.dtype.kind not in "iu":
        raise ValueError(f"lengths must be a 1-D integer array, got {L.shape} {L.dtype}")
    if L.size and L.min() < 0:
        raise ValueError(f"lengths must be >= 0, got {L.min()}")
    empty = L == 0
    if isinstance(state, LSTMState):
        c, h = (np.asarray(a).copy() for a in state)
        for name, a in (("c", c), ("h", h)):
            if a.ndim != 2 or a.shape[0] != L.shape[0]:
                raise ValueError(f"state.{name} must be 2-D with one row per length "
                                 f"({L.shape[0]}), got shape {a.shape}")
        c[empty] = 0
        h[empty] = 0
        return LSTMState(c, h)
    if isinstance(state, (tuple, list)):
        return tuple(onnx_state(s, L) for s in state)
    raise TypeError(f"state must be an LSTMState or a tuple of them, got {type(state).__name__}")
