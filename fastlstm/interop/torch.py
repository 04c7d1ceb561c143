"""PyTorch ``nn.LSTM`` / ``nn.LSTMCell`` <-> fastlstm (SPEC.md §7, §8).

torch keeps ``weight_ih`` (4H, I), ``weight_hh`` (4H, Hout), two biases whose sum is the
bias, and ``weight_hr`` (P, H) for a projection; its gate order (i, f, g, o) is fastlstm's,
so a conversion is transposes and one bias sum.  torch is imported only by ``to_torch`` and
when a module is passed in; a plain ``state_dict`` of arrays needs no torch.

``batch_first`` only changes torch's input layout, never the weights: fastlstm models are
batch-major by default (``time_major=True`` gives torch's default layout).  ``dropout``
acts only in torch's training mode and has no fastlstm counterpart; inference is exact.
"""

import re
import warnings

import numpy as np

from ._common import (as_array, assemble, bias_sum, build_layer, check_shape, directions,
                      dtype_name, layers_of, narrow_float, pick_dtype, refuse_reverse,
                      refuse_unrepresentable)
from .._optional import need
from ..layers import Bidirectional, LSTM

__all__ = ["from_torch", "to_torch", "to_torch_state_dict"]

_PARAMETRIZED = ("the state_dict holds weights under a parametrization or weight_norm / "
                 "spectral_norm ({}), whose values it does not store: pass the module "
                 "itself, and fastlstm reads the weights it computes with")

_SIZE_ARGS = ("input_size", "hidden_size", "num_layers", "bidirectional", "proj_size", "bias")


def _is_module(obj):
    return hasattr(obj, "state_dict") and hasattr(obj, "parameters") and callable(obj.state_dict)


_TORCHSCRIPT = ("RecursiveScriptModule", "TopLevelTracedModule", "TracedModule")


def _torchscript_class(module):
    """The qualified name of a TorchScript module's class (``torch.jit.script`` or
    ``trace``), "" when unknown; None for a module that is not TorchScript."""
    if type(module).__name__ not in _TORCHSCRIPT:
        return None
    try:
        return module._c._type().qualified_name()
    except Exception:                       # noqa: BLE001 - any other TorchScript build
        return ""


def _lstm_kind(module):
    """"LSTM" / "LSTMCell" for torch's classes, their subclasses that keep torch's
    ``forward`` and the TorchScript versions of torch's classes; otherwise None."""
    qualified = _torchscript_class(module)
    if qualified is not None:
        # the compiled class's qualified name tells torch's own nn.LSTM
        # ("__torch__.torch.nn.modules.rnn[.___torch_mangle_N].LSTM") from any other class
        # (a subclass, or a class of the same name), whose compiled forward may differ
        name = qualified.rsplit(".", 1)[-1]
        if qualified.startswith("__torch__.torch.nn.modules.rnn.") and \
                name in ("LSTM", "LSTMCell"):
            return name
        return None
    for cls in type(module).__mro__:
        if cls.__name__ in ("LSTM", "LSTMCell") and cls.__module__.startswith("torch.nn"):
            _check_torch_methods(module, cls)
            return cls.__name__
    return None


# methods of torch's RNN classes that a subclass may override without changing the maths
_TORCH_HARMLESS = frozenset(("extra_repr", "reset_parameters", "flatten_parameters",
                             "_apply", "_replicate_for_data_parallel"))


def _check_torch_methods(module, cls):
    """TypeError when ``module`` (of torch's ``cls`` or a subclass) has a forward of its
    own (set on the object, as wrappers do) or its class overrides forward, ``__call__``
    or a method of torch's RNN classes that forward calls (``permute_hidden``, the
    checks, ...): its outputs may differ from the weights' LSTM maths."""
    found = ["forward (set on the object)"] if "forward" in vars(module) else []
    mro = type(module).__mro__
    for sub in mro[:mro.index(cls)]:            # the classes defined on top of torch's
        for attr, value in vars(sub).items():
            if attr in _TORCH_HARMLESS or (attr.startswith("__") and attr != "__call__"):
                continue
            torch_method = attr in ("forward", "__call__", "_call_impl") or any(
                attr in vars(c) for c in cls.__mro__ if c.__module__ == "torch.nn.modules.rnn")
            if torch_method and (callable(value) or isinstance(value, (staticmethod,
                                                                       classmethod))):
                found.append(attr)
    if found:
        what = (f"{type(module).__name__} subclasses torch's nn.{cls.__name__} but overrides"
                if type(module) is not cls else f"this nn.{cls.__name__} has")
        raise TypeError(f"{what} {', '.join(found)}, so its outputs may differ: convert its "
                        "state_dict() if the LSTM maths is unchanged")


def _strip_prefix(state_dict, prefix):
    """Keys of an LSTM inside a larger state_dict: find (or check) the common prefix."""
    keys = list(state_dict)
    bad = [k for k in keys if not isinstance(k, str)]
    if bad:
        raise TypeError(f"state_dict keys must be str (parameter names), got {bad[0]!r}")
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"prefix must be None or a str, got {prefix!r}")
    if prefix is None:
        found = sorted({k[:-len(tail)] for k in keys for tail in ("weight_ih_l0", "weight_ih")
                        if k.endswith(tail)
                        and (tail == "weight_ih_l0" or not k.endswith("_l0"))})
        if not found:
            if _parametrized(keys):
                raise ValueError(_PARAMETRIZED.format(_parametrized(keys)[:4]))
            raise ValueError("state_dict has no 'weight_ih_l0' (nn.LSTM) or 'weight_ih' "
                             f"(nn.LSTMCell) entry; keys: {keys[:12]}")
        if len(found) > 1:
            raise ValueError(f"state_dict holds several LSTMs (prefixes {found}); pass prefix=")
        prefix = found[0]
    elif prefix and not prefix.endswith(".") and any(k.startswith(prefix + ".") for k in keys):
        prefix += "."               # "rnn" for the keys "rnn.weight_ih_l0", ...
    sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not sub:
        raise ValueError(f"no state_dict key starts with prefix={prefix!r}")
    return sub


_WEIGHT_HOOKS = ("WeightNorm", "SpectralNorm")       # torch.nn.utils' (older) weight hooks


def _hooks(module, attr):
    return list((getattr(module, attr, None) or {}).values())


def _weight_hook(hook):
    """The name of the weight a torch.nn.utils hook computes before each forward
    (weight_norm, spectral_norm, pruning), else None."""
    if not type(hook).__module__.startswith("torch.nn.utils"):
        return None
    if type(hook).__name__ in _WEIGHT_HOOKS:
        return hook.name
    return getattr(hook, "_tensor_name", None) if hasattr(hook, "apply_mask") else None


def _effective_weights(module, kind):
    """The weights the module's forward computes with, by torch's names (its
    ``_flat_weights_names``: attributes, which may be plain tensors or parametrized): for
    weights under ``torch.nn.utils.parametrize`` (``parametrizations.weight_norm``,
    ``orthogonal``, ``spectral_norm``, ...) the values the parametrizations give in eval
    mode, for the older ``weight_norm`` / ``spectral_norm`` hooks and pruning the values
    they compute (spectral norm from its stored vectors, no power iteration).  The module
    is not changed.  Other forward hooks may change the outputs: TypeError."""
    if _torchscript_class(module) is not None:
        return module.state_dict()      # compiled: no Python hooks or attributes
    pre = _hooks(module, "_forward_pre_hooks")
    computed = [h for h in pre if _weight_hook(h) is not None]
    other = [h for h in pre if _weight_hook(h) is None] + _hooks(module, "_forward_hooks")
    if other:
        computed_weights = computed or hasattr(module, "parametrizations")
        raise TypeError(f"the torch {kind} has forward hooks ({', '.join(map(repr, other))}), "
                        "which may change its outputs: "
                        + ("remove them (handle.remove()) and pass the module again (its "
                           "weights are computed, so its state_dict() does not hold them)"
                           if computed_weights else
                           "convert its state_dict() if they do not, or remove them"))
    import torch

    names = list(getattr(module, "_flat_weights_names", None) or
                 ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    parametrizations = getattr(module, "parametrizations", None)
    modes = [(m, m.training) for m in parametrizations.modules()] if parametrizations else []
    try:
        for m, _ in modes:
            m.training = False          # spectral norm: no power iteration, buffers kept
        with torch.no_grad():
            weights = {n: getattr(module, n, None) for n in names}
            for hook in computed:
                name = _weight_hook(hook)
                if type(hook).__name__ == "WeightNorm":
                    weights[name] = hook.compute_weight(module)
                elif type(hook).__name__ == "SpectralNorm":
                    weights[name] = hook.compute_weight(module, do_power_iteration=False)
                else:
                    weights[name] = hook.apply_mask(module)
    finally:
        for m, mode in modes:
            m.training = mode
    return {n: w for n, w in weights.items() if w is not None}


def _parametrized(keys):
    """Keys of a state_dict holding weights under a parametrization or norm hook."""
    return [k for k in keys if "parametrizations." in k
            or re.search(r"(weight|bias)_(ih|hh|hr)(_l\d+(_reverse)?)?_(g|v|orig|u)$", k)]


def _check_given(given, name, found):
    if given is not None and given != found:
        raise ValueError(f"{name}={given!r} does not match the state_dict, which has "
                         f"{name}={found!r}")


def from_torch(module, *, dtype=None, prefix=None, **sizes):
    """A fastlstm model with the same outputs as a torch ``nn.LSTM`` or ``nn.LSTMCell``.

    module : ``nn.LSTM``, ``nn.LSTMCell`` (or a subclass keeping their ``forward``), their
        ``torch.jit.script`` / ``torch.jit.trace`` versions (of torch's classes: a
        compiled subclass is refused, its forward unknown), a module holding
        exactly one of them (an ``nn.Sequential``, a model class), or a ``state_dict`` (a
        mapping of names to tensors or NumPy arrays; no torch needed).  With a state_dict
        the sizes are read from the shapes; ``input_size``, ``hidden_size``,
        ``num_layers``, ``bidirectional``, ``proj_size`` and ``bias`` may be passed as
        keywords and are then checked.  A
        state_dict of a larger model works too: the LSTM's key prefix is found (or give
        ``prefix=``).  A module's weights are those its forward computes with (also under
        parametrizations or ``weight_norm`` / ``spectral_norm``); other forward hooks
        are refused (TypeError).
    dtype : float32 / float64 (NumPy's or torch's), default: float64 when the weights are
        float64, else float32.

    Returns ``LSTM`` (one layer, one direction; also for ``nn.LSTMCell``, whose ``step``
    is the cell call), ``Bidirectional`` (one layer) or ``MultiLSTM`` (``num_layers > 1``).
    torch's state ``(h, c)`` with shape ``[L*D, N, .]`` maps to fastlstm's per-layer
    ``LSTMState(c, h)``: layer k, direction d is index ``k*D + d``.
    """
    unknown = set(sizes) - set(_SIZE_ARGS)
    if unknown:
        raise TypeError(f"from_torch() got unexpected keyword arguments {sorted(unknown)}")
    if _is_module(module) and _lstm_kind(module) is None and hasattr(module, "named_modules"):
        # a larger module (nn.Sequential, a model class): its one LSTM
        inner = [(name, m) for name, m in module.named_modules()
                 if m is not module and _lstm_kind(m) is not None]
        if len(inner) != 1:
            quantized = [type(m).__name__ for m in module.modules()
                         if type(m).__module__.startswith("torch.ao.nn")
                         and "LSTM" in type(m).__name__]
            if not inner and quantized:
                raise TypeError(
                    f"module holds torch.ao's {quantized[0]} (a quantized or quantizable "
                    "LSTM), which computes with quantized weights and activations that "
                    "fastlstm does not reproduce: convert the float model before "
                    "quantization")
            qualified = _torchscript_class(module)
            if not inner and qualified:
                raise TypeError(
                    f"{type(module).__name__} of {qualified!r} holds no torch nn.LSTM or "
                    "nn.LSTMCell; TorchScript versions of other classes (subclasses of "
                    "nn.LSTM among them) are not read, since their compiled forward may "
                    "compute something else: convert the state_dict() if the LSTM maths "
                    "is torch's")
            raise (TypeError if not inner else ValueError)(
                f"module must be a torch nn.LSTM or nn.LSTMCell, got {type(module).__name__}"
                + (f" holding several ({', '.join(n for n, _ in inner)}): pass one of them"
                   if inner else " (which holds none)"))
        module = inner[0][1]
    if _is_module(module):
        kind = _lstm_kind(module) or type(module).__name__
        mode = getattr(module, "mode", "LSTM")
        if mode != "LSTM" or kind not in ("LSTM", "LSTMCell"):
            raise TypeError(f"module must be a torch nn.LSTM or nn.LSTMCell, got {kind}"
                            + (f" (mode {mode})" if mode != "LSTM" else ""))
        given = {k: getattr(module, k) for k in _SIZE_ARGS if hasattr(module, k)}
        if kind == "LSTMCell":      # an nn.LSTMCell is one layer, one direction, no projection
            given.update(num_layers=1, bidirectional=False, proj_size=0)
        for k, v in sizes.items():
            _check_given(v, k, given.get(k))
        state_dict = _effective_weights(module, kind)
    elif hasattr(module, "keys") and hasattr(module, "__getitem__"):
        state_dict = dict(module)
        given = sizes
    else:
        raise TypeError("module must be a torch nn.LSTM / nn.LSTMCell or a state_dict mapping, "
                        f"got {type(module).__name__}")
    raw = _strip_prefix(state_dict, prefix)
    narrow = sorted({dtype_name(v) for v in raw.values() if narrow_float(v)})
    if narrow:
        warnings.warn(f"the weights are {' and '.join(narrow)}: torch computes such a module "
                      f"in {narrow[0]}, fastlstm in float32 or float64, so outputs differ "
                      f"from torch's by {narrow[0]} rounding", UserWarning, stacklevel=2)
    sd = {k: as_array(v, k) for k, v in raw.items()}
    if "weight_ih" in sd:
        return _from_cell(sd, given, dtype)
    return _from_lstm(sd, given, dtype)


def _from_cell(sd, given, dtype):
    unknown = set(sd) - {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}
    if unknown:
        if _parametrized(unknown):
            raise ValueError(_PARAMETRIZED.format(sorted(_parametrized(unknown))[:4]))
        raise ValueError(f"unexpected nn.LSTMCell state_dict entries {sorted(unknown)}")
    w_ih, w_hh = sd["weight_ih"], sd["weight_hh"]
    if w_ih.ndim != 2 or w_ih.shape[0] % 4:
        raise ValueError(f"weight_ih must have shape (4*hidden_size, input_size), got {w_ih.shape}")
    H, I = w_ih.shape[0] // 4, w_ih.shape[1]
    _check_given(given.get("input_size"), "input_size", I)
    _check_given(given.get("hidden_size"), "hidden_size", H)
    # what an nn.LSTMCell is, for the nn.LSTM keywords
    _check_given(given.get("num_layers"), "num_layers", 1)
    _check_given(given.get("bidirectional"), "bidirectional", False)
    _check_given(given.get("proj_size"), "proj_size", 0)
    check_shape(w_hh, (4 * H, H), "weight_hh", "(4*hidden_size, hidden_size)")
    dt = pick_dtype(dtype, list(sd.values()))
    b = _bias(sd, "", H, given.get("bias"), dt)
    return build_layer(w_ih.T, w_hh.T, b, dtype=dt, name="nn.LSTMCell")


def _bias(sd, suffix, H, bias_flag, dtype):
    has = [f"bias_ih{suffix}" in sd, f"bias_hh{suffix}" in sd]
    if has[0] != has[1]:
        raise ValueError(f"state_dict has only one of bias_ih{suffix} / bias_hh{suffix}")
    _check_given(bias_flag, "bias", has[0])
    if not has[0]:
        return None
    b_ih = check_shape(sd[f"bias_ih{suffix}"], (4 * H,), f"bias_ih{suffix}")
    b_hh = check_shape(sd[f"bias_hh{suffix}"], (4 * H,), f"bias_hh{suffix}")
    # torch adds the two biases to the pre-activations; their sum is fastlstm's b
    return bias_sum(b_ih, b_hh, dtype)


def _from_lstm(sd, given, dtype):
    names = set(sd)
    layer_ids = sorted({int(m.group(1)) for k in names
                        for m in [re.fullmatch(r"weight_ih_l(\d+)(_reverse)?", k)] if m})
    L = len(layer_ids)
    if layer_ids != list(range(L)):
        raise ValueError(f"state_dict layers must be numbered 0..L-1, found {layer_ids}")
    D = 2 if "weight_ih_l0_reverse" in names else 1
    _check_given(given.get("num_layers"), "num_layers", L)
    _check_given(given.get("bidirectional"), "bidirectional", D == 2)
    expected = set()
    for k in range(L):
        for sfx in ([""] if D == 1 else ["", "_reverse"]):
            expected |= {f"{w}_l{k}{sfx}" for w in
                         ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")}
    unknown = names - expected
    if unknown:
        if _parametrized(unknown):
            raise ValueError(_PARAMETRIZED.format(sorted(_parametrized(unknown))[:4]))
        raise ValueError(f"unexpected nn.LSTM state_dict entries {sorted(unknown)}")
    for k in range(L):
        for sfx in ([""] if D == 1 else ["", "_reverse"]):
            for w in ("weight_ih", "weight_hh"):
                if f"{w}_l{k}{sfx}" not in sd:
                    raise ValueError(f"state_dict has no {w}_l{k}{sfx}")
    w_hh0 = sd["weight_hh_l0"]
    if w_hh0.ndim != 2 or w_hh0.shape[0] % 4:
        raise ValueError(f"weight_hh_l0 must have shape (4*hidden_size, .), got {w_hh0.shape}")
    H = w_hh0.shape[0] // 4
    has_proj = "weight_hr_l0" in names
    if has_proj and (sd["weight_hr_l0"].ndim != 2 or sd["weight_hr_l0"].shape[1] != H):
        raise ValueError(f"weight_hr_l0 must have shape (proj_size, hidden_size={H}), got "
                         f"{sd['weight_hr_l0'].shape}")
    Ho = sd["weight_hr_l0"].shape[0] if has_proj else H
    _check_given(given.get("hidden_size"), "hidden_size", H)
    if given.get("proj_size") is not None:
        _check_given(given["proj_size"], "proj_size", Ho if has_proj else 0)
    I = sd["weight_ih_l0"].shape[1] if sd["weight_ih_l0"].ndim == 2 else None
    _check_given(given.get("input_size"), "input_size", I)
    dt = pick_dtype(dtype, list(sd.values()))
    items = []
    in_size = I
    for k in range(L):
        layer_dirs = []
        for sfx in ([""] if D == 1 else ["", "_reverse"]):
            tag = f"l{k}{sfx}"
            w_ih = check_shape(sd[f"weight_ih_{tag}"], (4 * H, in_size), f"weight_ih_{tag}",
                               "(4*hidden_size, input width)")
            w_hh = check_shape(sd[f"weight_hh_{tag}"], (4 * H, Ho), f"weight_hh_{tag}",
                               "(4*hidden_size, proj_size or hidden_size)")
            P = None
            if has_proj:
                if f"weight_hr_{tag}" not in sd:
                    raise ValueError(f"weight_hr_{tag} is missing (weight_hr_l0 is present)")
                P = check_shape(sd[f"weight_hr_{tag}"], (Ho, H), f"weight_hr_{tag}",
                                "(proj_size, hidden_size)").T
            b = _bias(sd, "_" + tag, H, given.get("bias"), dt)
            layer_dirs.append(build_layer(w_ih.T, w_hh.T, b, P=P, dtype=dt,
                                          name=f"layer {k}{' reverse' if sfx else ''}"))
        items.append(tuple(layer_dirs) if D == 2 else layer_dirs[0])
        in_size = D * Ho
    return assemble(items)


def to_torch_state_dict(model):
    """``(config, state_dict)`` for ``torch.nn.LSTM(**config)``; plain NumPy, no torch.

    Refuses (ValueError) what torch cannot represent: peepholes, cell_clip, proj_clip,
    activations other than tanh, gate functions other than the sigmoid, a projection as
    wide as the cell (torch needs ``proj_size < hidden_size``), and stacks whose layers
    differ in width or direction.  ``bias_hh`` is written as zeros (any split of the sum
    is equivalent).
    """
    items = layers_of(model)
    D = 2 if isinstance(items[0], Bidirectional) else 1
    first = directions(items[0])[0]
    H, P = first.hidden_size, first.proj_size
    for k, item in enumerate(items):
        refuse_reverse(item, "torch nn.LSTM", f"layer {k}")
        if (2 if isinstance(item, Bidirectional) else 1) != D:
            raise ValueError("torch nn.LSTM needs every layer to have the same direction "
                             f"setting; layer 0 is {'bi' if D == 2 else 'uni'}directional, "
                             f"layer {k} is not")
        for d, layer in enumerate(directions(item)):
            where = f"layer {k}" + (" (backward)" if d else "")
            refuse_unrepresentable(layer, "torch nn.LSTM", projection=True, where=where)
            if layer.hidden_size != H or layer.proj_size != P:
                raise ValueError(
                    f"torch nn.LSTM needs one hidden_size and proj_size for all layers; {where} "
                    f"has hidden_size={layer.hidden_size}, proj_size={layer.proj_size}, layer 0 "
                    f"has {H}, {P}")
    if P is not None and P >= H:
        raise ValueError(f"torch needs proj_size < hidden_size, got proj_size={P}, "
                         f"hidden_size={H}")
    config = dict(input_size=first.input_size, hidden_size=H, num_layers=len(items),
                  bias=True, bidirectional=D == 2, proj_size=P or 0)
    sd = {}
    for k, item in enumerate(items):
        for d, layer in enumerate(directions(item)):
            tag = f"l{k}{'_reverse' if d else ''}"
            sd[f"weight_ih_{tag}"] = layer.W.T.copy()     # copies, also where .T is
            sd[f"weight_hh_{tag}"] = layer.U.T.copy()     # contiguous (a width of 1)
            sd[f"bias_ih_{tag}"] = layer.b.copy()
            sd[f"bias_hh_{tag}"] = np.zeros_like(layer.b)
            if P is not None:
                sd[f"weight_hr_{tag}"] = layer.P.T.copy()
    return config, sd


def to_torch(model, *, batch_first=True, cell=False):
    """A torch module with the same outputs as a fastlstm model.

    Returns ``nn.LSTM`` (``batch_first=True`` by default, like fastlstm's default layout),
    or with ``cell=True`` an ``nn.LSTMCell`` (single ``LSTM`` layer without projection
    only).  The module has the model's dtype.  Refusals: see
    ``fastlstm.interop.to_torch_state_dict``.
    """
    torch = need("torch", "to_torch")
    config, sd = to_torch_state_dict(model)
    tdtype = torch.float64 if model.dtype == np.float64 else torch.float32
    if cell:
        if not isinstance(model, LSTM) or config["proj_size"]:
            raise ValueError("cell=True needs a single LSTM layer without projection "
                             "(nn.LSTMCell has neither stacking, direction nor projection)")
        module = torch.nn.LSTMCell(config["input_size"], config["hidden_size"], bias=True,
                                   dtype=tdtype)
        sd = {k[:-3]: v for k, v in sd.items()}  # weight_ih_l0 -> weight_ih
    else:
        module = torch.nn.LSTM(batch_first=batch_first, dtype=tdtype, **config)
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
    return module
