"""TensorFlow 1 ``BasicLSTMCell`` / ``LSTMCell`` / ``MultiRNNCell`` weights <-> fastlstm.

No TensorFlow is needed: the converters read NumPy arrays (SPEC.md §1-§4, §8).

A TF1 cell keeps one ``kernel`` (I + Hout, 4H) whose first I rows multiply the input
and the rest the previous output, a ``bias`` (4H,), gate blocks in the order (i, j, f, o),
and adds ``forget_bias`` (a Python float, not a variable) to the f pre-activation on every
call.  fastlstm folds ``forget_bias`` into ``b`` and splits the kernel into ``W`` and
``U``.  Peepholes (``w_i_diag``, ``w_f_diag``, ``w_o_diag``), the projection
(``projection/kernel`` (H, P)), ``cell_clip`` and ``proj_clip`` have the same meaning in
both.  ``cell_clip``, ``proj_clip``, ``forget_bias`` and the activation are constructor
arguments in TF, not checkpoint variables: pass them to the importer.
"""

import os
import re
import warnings

import numpy as np

from ._common import (PERM_TF, as_array, blocks, build_layer, check_range, check_shape,
                      directions, function_name, layers_of, narrow_float, pick_dtype,
                      refuse_reverse, refuse_unrepresentable)
from ..layers import ACTIVATIONS, Bidirectional, LSTM, MultiLSTM, _check_forget_bias

__all__ = ["from_tf1", "from_tf1_checkpoint", "to_tf1", "to_tf1_checkpoint", "activation_name"]

_ACT_ALIASES = {"identity": "linear", "linear": "linear", "tanh": "tanh", "relu": "relu",
                "sigmoid": "sigmoid"}


def activation_name(activation):
    """fastlstm's name for a TF activation given as a string or a function (tf.tanh,
    tf.nn.relu, np.tanh, ...).  None means tanh (TF's default)."""
    if activation is None:
        return "tanh"
    name = activation if isinstance(activation, str) else function_name(activation,
                                                                         "activation")
    key = name.lower()
    if key not in _ACT_ALIASES:
        raise ValueError(f"activation={activation!r} cannot be represented exactly in fastlstm "
                         f"(supported: {', '.join(ACTIVATIONS)})")
    return _ACT_ALIASES[key]


def from_tf1(kernel, bias=None, forget_bias=1.0, *, w_i_diag=None, w_f_diag=None,
             w_o_diag=None, projection_kernel=None, cell_clip=None, proj_clip=None,
             activation="tanh", dtype=None):
    """A fastlstm ``LSTM`` with the same outputs and states as one TF1 cell.

    kernel : (I + Hout, 4H) TF ``kernel`` (or TF <= 1.1 ``weights``).
    bias : (4H,) TF ``bias`` (``biases``); None for zeros.
    forget_bias : the cell's ``forget_bias`` constructor argument (default 1.0 in TF); it
        is folded into the f block of ``b``.
    w_i_diag, w_f_diag, w_o_diag : (H,) peepholes (all three or none).
    projection_kernel : (H, P) ``projection/kernel`` (``num_proj=P``).
    cell_clip, proj_clip : the cell's clip arguments (None = off; 0.0 clamps to 0).
    activation : name or function (tanh, relu, sigmoid, identity/linear).
    dtype : float32 / float64; default float64 for float64 weights, else float32.
    """
    kernel = as_array(kernel, "kernel")
    if kernel.ndim != 2 or kernel.shape[1] % 4 or not kernel.shape[1]:
        raise ValueError(f"kernel must have shape (input_size + output_size, 4*num_units), "
                         f"got {kernel.shape}")
    H = kernel.shape[1] // 4
    P = None
    if projection_kernel is not None:
        P = as_array(projection_kernel, "projection_kernel")
        if P.ndim != 2 or P.shape[0] != H:
            raise ValueError(f"projection_kernel must have shape ({H}, num_proj), got {P.shape}")
    Hout = H if P is None else P.shape[1]
    I = kernel.shape[0] - Hout
    if I <= 0:
        raise ValueError(f"kernel has {kernel.shape[0]} rows: it must have input_size + "
                         f"{Hout} (the output width) rows with input_size >= 1")
    diags = [w_i_diag, w_f_diag, w_o_diag]
    peep = None
    if any(d is not None for d in diags):
        if any(d is None for d in diags):
            raise ValueError("w_i_diag, w_f_diag and w_o_diag must be given together")
        peep = np.stack([check_shape(as_array(d, n), (H,), n, "(num_units,)")
                         for d, n in zip(diags, ("w_i_diag", "w_f_diag", "w_o_diag"))])
    b = np.zeros(4 * H, kernel.dtype) if bias is None else \
        check_shape(as_array(bias, "bias"), (4 * H,), "bias", "(4*num_units,)")
    dt = pick_dtype(dtype, [kernel, b, P, peep])
    forget_bias = _check_forget_bias(forget_bias)
    check_range(b, dt, "TF1 cell: bias")
    b = b.astype(dt, copy=True)
    if forget_bias:     # (adding 0.0 would turn a bias of -0.0 into +0.0)
        b[2 * H:3 * H] += dt.type(forget_bias)  # TF's f block is block 2 of (i, j, f, o)
    return build_layer(blocks(kernel[:I], PERM_TF, 1), blocks(kernel[I:], PERM_TF, 1),
                       blocks(b, PERM_TF, 0), peepholes=peep, P=P, dtype=dt,
                       cell_clip=cell_clip, proj_clip=proj_clip,
                       activation=activation_name(activation), forget_bias=float(forget_bias),
                       name="TF1 cell")


# ---------------------------------------------------------------------------------------
# checkpoints

_CELL_RE = re.compile(r"^(?:cell_?|Cell)(\d+)$")
# the default variable scopes of TF1's non-LSTM cells, and of a Dense layer
_OTHER_CELL_RE = re.compile(r"^(?:basic_rnn_cell|gru_cell|ugrnn_cell|gru_block_cell)(?:_\d+)?$")
_DENSE_RE = re.compile(r"^dense(?:_\d+)?$")


# the scopes TF1's RNN functions put their cells under (dynamic_rnn's "rnn", ...)
_RNN_SCOPE_RE = re.compile(r"^(?:bidirectional_|stack_bidirectional_)?rnn(?:_\d+)?$")


def _stack_index(parts, j):
    """The layer index when ``parts[j]`` (of a cell's path) is a stack's ``cell_k``: after
    ``multi_rnn_cell`` (TF 0.x: ``MultiRNNCell/Cell0``), before a stacked bidirectional
    RNN's ``bidirectional_rnn`` (or its ``fw`` / ``bw`` in the static one); None otherwise (a scope or a cell of the user's own
    called ``cell1`` is no stack)."""
    m = _CELL_RE.match(parts[j])
    if m is None or j == len(parts) - 1:
        return None
    if (j > 0 and parts[j - 1].lower() in ("multi_rnn_cell", "multirnncell")) or \
            parts[j + 1] == "bidirectional_rnn" or (
                j > 0 and parts[j - 1].startswith("stack_bidirectional_rnn")
                and parts[j + 1] in ("fw", "bw")):
        # (the static stack_bidirectional_rnn names its layers cell_k/fw, cell_k/bw)
        return int(m.group(1))
    return None


def _stack_of(path):
    """The path of the stack (MultiRNNCell, bidirectional RNN) a cell sits in: its parts
    before the first cell_k / fw / bw, or None for a cell in none."""
    parts = path.split("/")
    for j, p in enumerate(parts):
        if _stack_index(parts, j) is not None or p in ("fw", "bw"):
            return tuple(parts[:j])
    return None


def _lstm_shaped(entry):
    """Whether a kernel and bias could be an LSTM cell's: [I + H, 4H] and [4H] (a kernel
    without a bias, as an attention layer's, is not)."""
    kernel = np.shape(entry["kernel"][1])
    if len(kernel) != 2 or kernel[1] % 4 or kernel[0] <= kernel[1] // 4:
        return False
    return "bias" in entry and np.shape(entry["bias"][1]) == (kernel[1],)


def _classify(name):
    """(cell path, variable kind) for a TF variable name, or None if not an LSTM variable."""
    name = name[:-2] if name.endswith(":0") else name
    parts = name.split("/")
    low = [p.lower() for p in parts]
    if len(parts) >= 3 and low[-2:] == ["linear", "matrix"]:
        kind, parts, low = "kernel", parts[:-2], low[:-2]
    elif len(parts) >= 3 and low[-2:] == ["linear", "bias"]:
        kind, parts, low = "bias", parts[:-2], low[:-2]
    elif len(parts) >= 2 and low[-1] in ("kernel", "weights", "matrix"):
        kind, parts, low = "kernel", parts[:-1], low[:-1]
    elif len(parts) >= 2 and low[-1] in ("bias", "biases"):
        kind, parts, low = "bias", parts[:-1], low[:-1]
    elif len(parts) >= 2 and low[-1] in ("w_i_diag", "w_f_diag", "w_o_diag"):
        kind, parts, low = low[-1], parts[:-1], low[:-1]
    elif len(parts) >= 2 and low[-1] == "recurrent_kernel":   # a Keras layer's, refused
        kind, parts, low = "recurrent_kernel", parts[:-1], low[:-1]
    else:
        return None
    if low and low[-1] == "projection":
        if kind != "kernel":
            return None
        kind, parts = "projection", parts[:-1]
    if not parts:
        return None
    return "/".join(parts), kind


_PART_RE = re.compile(r"^(.*)/part_(\d+)(?::\d+)?$")


def _merge_partitions(variables):
    """TF's partitioned variables (``LSTMCell(num_unit_shards=...)``), listed by a graph
    as ``.../kernel/part_0``, ``part_1``, ...; a Saver checkpoint stores them whole):
    joined along the first axis, as TF's fixed-size partitioner splits them."""
    parts, out = {}, {}
    for name, value in variables.items():
        m = _PART_RE.match(name) if isinstance(name, str) else None
        if m:
            parts.setdefault(m.group(1), {})[int(m.group(2))] = value
        else:
            out[name] = value
    for base, found in parts.items():
        if sorted(found) != list(range(len(found))):
            raise ValueError(f"partitioned variable {base!r} has parts {sorted(found)}, not "
                             f"0..{len(found) - 1}")
        if base in out or base + ":0" in out:
            raise ValueError(f"variable {base!r} is given both whole and in parts")
        pieces = [as_array(found[k], f"{base}/part_{k}") for k in range(len(found))]
        if len({p.shape[1:] for p in pieces}) > 1 or any(p.ndim == 0 for p in pieces):
            raise ValueError(f"partitioned variable {base!r}: its parts have shapes "
                             f"{[p.shape for p in pieces]}, which do not join on the first "
                             "axis")
        out[base] = np.concatenate(pieces, axis=0)
    return out


def _per_layer(value, n, name):
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} layers")
        return list(value)
    return [value] * n


def from_tf1_checkpoint(variables, *, scope=None, forget_bias=1.0, cell_clip=None,
                        proj_clip=None, activation="tanh", dtype=None):
    """A fastlstm model from TF1 checkpoint variables keyed by their TF names.

    variables : mapping name -> array, e.g. ``{"rnn/multi_rnn_cell/cell_0/basic_lstm_cell/
        kernel": ..., ".../bias": ...}``.  Understood: ``kernel``/``bias`` (TF >= 1.2),
        ``weights``/``biases`` (TF <= 1.1), ``Linear/Matrix``/``Linear/Bias`` (TF 0.x),
        ``w_i_diag``/``w_f_diag``/``w_o_diag`` and ``projection/kernel``; a trailing
        ``:0`` is ignored, as are other variables (optimizer slots, other layers).  The
        kernels under TF1's default scopes of other cells and layers (``basic_rnn_cell``,
        ``gru_cell``, ``dense``) are never read as an LSTM cell: alone, or in a stack
        with LSTM cells, they are refused; so is a cell with variables TF1's LSTM cells do
        not have (a layer-normalised cell's ``gamma`` / ``beta``), or without a bias.
        Beside LSTM cells, a kernel and bias of an LSTM cell's shapes under an RNN
        function's scope asks for ``scope=`` (another RNN's cell); elsewhere it is taken
        for another layer (a Dense "fc") and left out.
    scope : keep only variables under this name prefix (needed when the mapping holds
        several RNNs).
    forget_bias, cell_clip, proj_clip, activation : the cells' constructor arguments (not
        stored in checkpoints); one value for all layers or a list with one per layer.
    dtype : float32 / float64 for every layer; default: float64 for float64 variables,
        else float32 (a stack with both becomes float64, as its layers share one dtype).

    Layouts: one cell -> ``LSTM``; ``multi_rnn_cell/cell_k`` -> ``MultiLSTM`` (also with
    one cell: its state is then a 1-tuple, as TF's);
    ``fw``/``bw`` (``bidirectional_dynamic_rnn``) -> ``Bidirectional``;
    ``cell_k/.../fw`` (``stack_bidirectional_dynamic_rnn``) -> ``MultiLSTM`` of
    ``Bidirectional``.  ``bidirectional_dynamic_rnn`` over two ``MultiRNNCell`` stacks runs
    each stack whole in one direction, which is not a stack of bidirectional layers: load
    each side with ``scope=".../fw"`` / ``".../bw"`` and run them with
    ``fastlstm.tf1.bidirectional_dynamic_rnn``.
    """
    if not hasattr(variables, "items"):
        raise TypeError(f"variables must be a mapping of TF names to arrays, "
                        f"got {type(variables).__name__}")
    if scope is not None and (not isinstance(scope, str) or not scope.strip("/")):
        raise TypeError(f"scope must be None or a non-empty variable name prefix, got "
                        f"{scope!r}")
    cells, unknown = {}, []
    for name, value in _merge_partitions(variables).items():
        if not isinstance(name, str):
            raise TypeError(f"variable names must be strings, got {name!r}")
        if scope is not None and not (name == scope or name.startswith(scope.rstrip("/") + "/")):
            continue
        found = _classify(name)
        if found is None:
            unknown.append(name[:-2] if name.endswith(":0") else name)
            continue
        path, kind = found
        entry = cells.setdefault(path, {})
        if kind in entry:
            raise ValueError(f"two variables give {kind!r} for cell {path!r}")
        entry[kind] = (name, value)
    for path, entry in cells.items():
        if "recurrent_kernel" in entry:
            raise ValueError(
                f"{path!r} holds a Keras recurrent layer's weights (kernel, "
                "recurrent_kernel), not a TF1 cell's (one kernel over [x, h]): for a Keras "
                "LSTM, load them with fastlstm.from_keras([kernel, recurrent_kernel, bias]); "
                "or pass scope= to load another RNN")
    cells = {p: v for p, v in cells.items() if "kernel" in v}
    # TF1's other cells and layers under their default names (BasicRNNCell, GRUCell with
    # its gates / candidate kernels, a Dense layer) are not LSTM cells, whatever the shape
    # of their kernels: never read as one
    others = {p for p in cells if any(_OTHER_CELL_RE.match(q) for q in p.split("/"))
              or _DENSE_RE.match(p.split("/")[-1])}
    if others and len(others) == len(cells):
        raise ValueError("no TF1 LSTM cell variables found" +
                         (f" under scope {scope!r}" if scope else "") + ": the kernels "
                         "under " + ", ".join(repr(p) for p in sorted(others)) + " belong "
                         "to other TF1 cells or layers (BasicRNNCell, GRUCell, Dense), "
                         "which are not an LSTM")
    stacks = {_stack_of(p) for p in cells if p not in others} - {None}
    mixed = sorted(p for p in others if _stack_of(p) in stacks)
    if mixed:
        raise ValueError(f"the stack {'/'.join(_stack_of(mixed[0]))!r} holds cells of other "
                         f"kinds ({', '.join(map(repr, mixed))}: BasicRNNCell, GRUCell, ...) "
                         "beside its LSTM cells; fastlstm stacks LSTM cells only")
    cells = {p: v for p, v in cells.items() if p not in others}
    # other layers (a Dense "dense/kernel", ...) share the kernel/bias names: when some
    # cells carry TF's LSTM cell names or sit in a stack (cell_k) or a direction (fw/bw),
    # keep only those
    lstm_named = {p: v for p, v in cells.items() if "lstm" in p.split("/")[-1].lower()
                  or _stack_of(p) is not None}
    if lstm_named:
        # ... unless one of the others is a cell too: one with an LSTM cell's own
        # variables, or one under an RNN function's scope (dynamic_rnn's "rnn", ...) with
        # a kernel and bias of an LSTM cell's shapes.  (A cell of a name of its own under a
        # scope of its own cannot be told from a Dense layer "fc" or "logits" of the same
        # shapes, which most checkpoints have: those are left out, as documented.)
        rnns = sorted(p for p, v in cells.items() if p not in lstm_named and (
            set(v) & {"w_i_diag", "w_f_diag", "w_o_diag", "projection"}
            or (any(_RNN_SCOPE_RE.match(q.lower()) for q in p.split("/")[:-1])
                and _lstm_shaped(v))))
        if rnns:
            prefix = os.path.commonprefix([p.split("/")[:-1] for p in lstm_named])
            raise ValueError("the variables hold several RNNs (the LSTM cells "
                             + ", ".join(map(repr, sorted(lstm_named))) + " and "
                             + ", ".join(map(repr, rnns)) + "); pass scope="
                             + (f" (scope={'/'.join(prefix)!r} for the first)"
                                if prefix else ""))
        cells = lstm_named
    if not cells:
        raise ValueError("no TF1 LSTM cell variables (.../kernel, .../weights) found"
                         + (f" under scope {scope!r}" if scope else ""))
    for path, entry in cells.items():
        # variables of the cell's own that TF1's LSTM cells do not have (a layer-normalised
        # cell's gamma / beta, ...); optimizer slots (".../kernel/Adam") sit under the
        # variables they belong to
        names = [entry[k][0] for k in entry]
        mine = tuple(n + "/" for n in names) + tuple(n[:-2] + "/" for n in names
                                                     if n.endswith(":0"))
        extra = [u for u in unknown if u.startswith(path + "/") and not u.startswith(mine)]
        if extra:
            raise ValueError(f"cell {path!r} also holds {', '.join(map(repr, extra[:4]))}, "
                             "which TF1's BasicLSTMCell and LSTMCell do not have (a "
                             "layer-normalised or other kind of cell?): fastlstm computes "
                             "those two cells only")
        if "bias" not in entry:
            raise ValueError(f"cell {path!r} has a kernel but no bias, which TF1's LSTM "
                             "cells always have: pass all of the cell's variables (is "
                             "scope= the cell's path?)")
    narrow = sorted(p for p, entry in cells.items()
                    if any(narrow_float(v) for _, v in entry.values()))
    if narrow:
        warnings.warn(f"the cells {', '.join(map(repr, narrow))} hold float16 / bfloat16 "
                      "variables: TF computes such a graph in that precision, fastlstm in "
                      "float32 or float64, so outputs differ from TF's by its rounding",
                      UserWarning, stacklevel=2)
    groups = {}
    for path, entry in cells.items():
        rel = path[len(scope.rstrip("/")) + 1:] if scope and path != scope else path
        parts = rel.split("/")
        full = path.split("/")           # (a stack's cell_k is told by its neighbours)
        layer, direction, li, di = 0, None, None, None
        for j, p in enumerate(parts):
            index = _stack_index(full, j + len(full) - len(parts))
            if index is not None:
                layer, li = index, j
            elif p in ("fw", "bw"):
                direction, di = (0 if p == "fw" else 1), j
        # the last part is the cell's own name (lstm_cell, basic_lstm_cell, name=...): the
        # cells of one stack or of the two directions may be of different kinds
        anchors = [j for j in (li, di) if j is not None]
        own = len(parts) - 1 if anchors and max(anchors) < len(parts) - 1 else None
        key = tuple("*" if j in (li, di, own) else p for j, p in enumerate(parts))
        group = groups.setdefault(key, {})
        if (layer, direction) in group:
            where = "" if direction is None else f" ({'fw' if direction == 0 else 'bw'})"
            raise ValueError(f"cells {group[(layer, direction)][0]!r} and {path!r} are both "
                             f"layer {layer}{where}; pass scope=")
        group[(layer, direction)] = (path, entry, li, di)
    if len(groups) > 1:
        raise ValueError("the variables hold several RNNs ("
                         + ", ".join("/".join(k) for k in sorted(groups)) + "); pass scope= "
                         "(cells stacked by hand under scopes of their own: load each with "
                         "scope= and stack them in fastlstm.MultiLSTM)")
    (cells_by_pos,) = groups.values()
    layer_ids = sorted({k[0] for k in cells_by_pos})
    if layer_ids != list(range(len(layer_ids))):
        raise ValueError(f"cell indices must be 0..L-1, found {layer_ids}")
    dirs = sorted({k[1] for k in cells_by_pos}, key=lambda d: -1 if d is None else d)
    if dirs not in ([None], [0, 1]):
        raise ValueError(f"found only one direction ({'fw' if dirs == [0] else 'bw'}) of a "
                         "bidirectional RNN; pass scope= to load it as a single direction")
    L = len(layer_ids)
    if dirs == [0, 1] and L > 1:
        any_entry = next(iter(cells_by_pos.values()))
        if any_entry[2] is not None and any_entry[3] is not None and any_entry[3] < any_entry[2]:
            raise ValueError(
                "these are two MultiRNNCell stacks run by bidirectional_dynamic_rnn (fw/.../"
                "cell_k): each stack runs whole in one direction, which a stack of "
                "bidirectional layers cannot represent; load each with scope='<prefix>/fw' and "
                "'<prefix>/bw' and run them with fastlstm.tf1.bidirectional_dynamic_rnn")
    opts = dict(forget_bias=_per_layer(forget_bias, L, "forget_bias"),
                cell_clip=_per_layer(cell_clip, L, "cell_clip"),
                proj_clip=_per_layer(proj_clip, L, "proj_clip"),
                activation=_per_layer(activation, L, "activation"))
    items = []
    for k in range(L):
        made = []
        for d in ([None] if dirs == [None] else [0, 1]):
            if (k, d) not in cells_by_pos:
                raise ValueError(f"layer {k} {'fw' if d == 0 else 'bw'} is missing")
            path, entry, _, _ = cells_by_pos[(k, d)]
            get = lambda kind: as_array(entry[kind][1], entry[kind][0]) if kind in entry else None
            try:
                made.append(from_tf1(get("kernel"), get("bias"), opts["forget_bias"][k],
                                     w_i_diag=get("w_i_diag"), w_f_diag=get("w_f_diag"),
                                     w_o_diag=get("w_o_diag"),
                                     projection_kernel=get("projection"),
                                     cell_clip=opts["cell_clip"][k],
                                     proj_clip=opts["proj_clip"][k],
                                     activation=opts["activation"][k], dtype=dtype))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"cell {path!r}: {exc}") from exc
        if len(made) == 2 and made[0].dtype != made[1].dtype and dtype is None:
            made = [_recast(m, np.float64) for m in made]   # as for the layers of a stack
        items.append(Bidirectional(*made) if len(made) == 2 else made[0])
    in_stack = any(e[2] is not None for e in cells_by_pos.values())
    if L == 1 and not in_stack:
        return items[0]
    for k in range(1, L):
        if items[k].input_size != items[k - 1].output_size:
            raise ValueError(f"cell {k} reads {items[k].input_size} features but cell {k - 1} "
                             f"outputs {items[k - 1].output_size}")
    dts = {it.dtype for it in items}
    if len(dts) > 1 and dtype is None:
        items = [_recast(it, np.float64) for it in items]
    return MultiLSTM(items)


def _recast(item, dtype):
    if item.dtype == dtype:
        return item
    if isinstance(item, Bidirectional):
        return Bidirectional(_recast(item.forward_layer, dtype),
                             _recast(item.backward_layer, dtype))
    p = item.params
    return build_layer(p["W"], p["U"], p["b"], peepholes=p.get("peepholes"), P=p.get("P"),
                       dtype=dtype, cell_clip=item.cell_clip, proj_clip=item.proj_clip,
                       activation=item.activation, forget_bias=item.forget_bias)


# ---------------------------------------------------------------------------------------
# export


def to_tf1(layer, forget_bias=1.0):
    """The TF1 variables of one fastlstm ``LSTM`` as a dict.

    Keys: ``kernel`` (I + Hout, 4H), ``bias`` (4H,), and when present ``w_i_diag``,
    ``w_f_diag``, ``w_o_diag`` (H,) and ``projection/kernel`` (H, P).  ``forget_bias`` is
    the value the TF cell will be built with: it is subtracted from the f block of the
    bias, which rounds once in the last bit; ``forget_bias=0.0`` makes the bias bit-exact.
    Build the cell as ``LSTMCell(H, use_peepholes=..., cell_clip=layer.cell_clip,
    num_proj=layer.proj_size, proj_clip=layer.proj_clip, forget_bias=forget_bias,
    activation=...)``.  Refuses gate functions other than the sigmoid (TF cells have no
    other).  A TF cell has no direction: a layer built with ``reverse=True`` gives the
    variables of a cell to run over ``tf.reverse_sequence`` inputs (as
    ``bidirectional_dynamic_rnn`` runs its backward cell).
    """
    if not isinstance(layer, LSTM):
        raise TypeError(f"layer must be a fastlstm LSTM, got {type(layer).__name__}")
    return _tf1_variables(layer, forget_bias, "layer")


def _tf1_variables(layer, forget_bias, where):
    """``to_tf1``, its refusals naming the layer as ``where``."""
    refuse_unrepresentable(layer, "a TF1 LSTMCell", peepholes=True, projection=True,
                           cell_clip=True, proj_clip=True, activations=tuple(ACTIVATIONS),
                           where=where)
    forget_bias = _check_forget_bias(forget_bias, dtype=layer.dtype)
    H = layer.hidden_size
    b = blocks(layer.b, PERM_TF, 0).copy()
    b[2 * H:3 * H] -= b.dtype.type(forget_bias)
    out = {"kernel": np.concatenate([blocks(layer.W, PERM_TF, 1), blocks(layer.U, PERM_TF, 1)]),
           "bias": b}
    if layer.use_peepholes:
        out.update(w_i_diag=layer.peepholes[0].copy(), w_f_diag=layer.peepholes[1].copy(),
                   w_o_diag=layer.peepholes[2].copy())
    if layer.proj_size is not None:
        out["projection/kernel"] = layer.P.copy()
    return out


def _cell_name(layer):
    plain = not (layer.use_peepholes or layer.proj_size or layer.cell_clip is not None)
    return "basic_lstm_cell" if plain else "lstm_cell"


def to_tf1_checkpoint(model, *, scope=None, forget_bias=1.0, cell_name=None):
    """TF1 checkpoint variables (name -> array) for a fastlstm model.

    ``LSTM`` -> ``{scope}/{cell}/kernel`` (scope ``rnn``); ``MultiLSTM`` of ``LSTM`` ->
    ``{scope}/multi_rnn_cell/cell_k/{cell}/...``; ``Bidirectional`` ->
    ``{scope}/fw/{cell}/...`` and ``.../bw/...`` (scope ``bidirectional_rnn``); a
    ``MultiLSTM`` of ``Bidirectional`` -> ``stack_bidirectional_dynamic_rnn``'s
    ``{scope}/cell_k/bidirectional_rnn/fw/{cell}/...`` (scope ``stack_bidirectional_rnn``).
    ``cell`` is ``basic_lstm_cell`` for plain layers, else ``lstm_cell``, or
    ``cell_name``: one name, or one per layer (a list; None entries keep the default),
    e.g. ``["basic_lstm_cell", "lstm_cell"]`` for ``MultiRNNCell([BasicLSTMCell(4),
    LSTMCell(5)])``.  ``forget_bias``: see ``fastlstm.interop.to_tf1``; one value, or one
    per layer (a list, as ``from_tf1_checkpoint`` takes).  Both directions of a
    bidirectional layer use its values.
    """
    if scope is not None:
        if not isinstance(scope, str) or not scope.strip("/"):
            raise TypeError(f"scope must be None or a non-empty variable name prefix, got "
                            f"{scope!r}")
        scope = scope.rstrip("/")       # as from_tf1_checkpoint reads it
    items = layers_of(model)
    fbs = [_check_forget_bias(v, f"forget_bias[{k}]" if isinstance(forget_bias, (list, tuple))
                              else "forget_bias", dtype=model.dtype)
           for k, v in enumerate(_per_layer(forget_bias, len(items), "forget_bias"))]
    for k, item in enumerate(items):
        # the variable names are those of dynamic_rnn / MultiRNNCell, which run forward
        refuse_reverse(item, "a TF1 checkpoint (its variable names are dynamic_rnn's, which "
                       "runs forward; to_tf1 gives the cell's variables, to run over "
                       "tf.reverse_sequence)", f"layer {k}")
    names = _per_layer(cell_name, len(items), "cell_name")
    for v in names:
        if v is not None and (not isinstance(v, str) or not v.strip("/")):
            raise TypeError("cell_name must be None, a variable scope name, or a list of "
                            f"them with one per layer, got {cell_name!r}")
    bidir = [isinstance(it, Bidirectional) for it in items]
    if any(bidir) and not all(bidir):
        raise ValueError("TF1 has no standard variable names for a stack mixing "
                         "unidirectional and bidirectional layers")
    out = {}

    def put(prefix, layer, k, backward=False):
        name = names[k].strip("/") if names[k] is not None else _cell_name(layer)
        where = f"layer {k}" + (" (backward)" if backward else "")
        for key, v in _tf1_variables(layer, fbs[k], where).items():
            out[f"{prefix}/{name}/{key}"] = v

    if isinstance(model, LSTM):
        put(scope or "rnn", model, 0)
    elif isinstance(model, Bidirectional):
        for tag, layer in zip(("fw", "bw"), directions(model)):
            put(f"{scope or 'bidirectional_rnn'}/{tag}", layer, 0, tag == "bw")
    elif not any(bidir):
        for k, layer in enumerate(items):
            put(f"{scope or 'rnn'}/multi_rnn_cell/cell_{k}", layer, k)
    else:
        for k, item in enumerate(items):
            for tag, layer in zip(("fw", "bw"), directions(item)):
                put(f"{scope or 'stack_bidirectional_rnn'}/cell_{k}/bidirectional_rnn/{tag}",
                    layer, k, tag == "bw")
    return out
