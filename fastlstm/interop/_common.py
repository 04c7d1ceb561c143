"""Helpers shared by the converters: gate-block permutations, array intake, layer building.

Gate block orders (SPEC.md §8): fastlstm, Keras and torch use (i, f, g, o); TF1 uses
(i, g, f, o); ONNX uses (i, o, f, g).  ``blocks(A, perm, axis)`` splits ``A`` into four
equal blocks along ``axis`` and concatenates them in the order ``perm``: index k of
``perm`` names the destination block, its value the source block.
"""

import numpy as np

from ..layers import LSTM, Bidirectional, MultiLSTM, _check_fits, _widen_narrow_floats

# fastlstm (i, f, g, o) <-> TF (i, g, f, o): self-inverse
PERM_TF = (0, 2, 1, 3)
# ONNX (i, o, f, g) -> fastlstm (i, f, g, o)
PERM_FROM_ONNX = (0, 2, 3, 1)
# fastlstm (i, f, g, o) -> ONNX (i, o, f, g)
PERM_TO_ONNX = (0, 3, 1, 2)


# packages whose functions are taken at their name (tf.tanh, keras.activations.relu,
# np.tanh, torch.sigmoid, ...): a function defined elsewhere may compute anything
_LIBRARIES = frozenset(("tensorflow", "keras", "tf_keras", "numpy", "torch", "jax", "jaxlib",
                        "math", "scipy", "fastlstm"))


def _library_name(fn):
    """``fn.__name__`` when ``fn`` is a function of one of ``_LIBRARIES`` (and so is any
    function it wraps: ``np.vectorize``'s, a decorator's ``__wrapped__``), else None."""
    inner = fn.pyfunc if isinstance(fn, np.vectorize) else getattr(fn, "__wrapped__", None)
    if inner is not None and inner is not fn and _library_name(inner) is None:
        return None
    if isinstance(fn, type):
        return None         # a class (torch.nn.Tanh): calling it builds an object
    name = getattr(fn, "__name__", None)
    module = "numpy" if isinstance(fn, np.ufunc) else getattr(fn, "__module__", None)
    top = module.split(".")[0] if isinstance(module, str) else None
    if not isinstance(name, str) or top not in _LIBRARIES:
        return None
    if top not in _ELEMENTWISE.get(name.lower(), _LIBRARIES):
        return None
    return name


# names that only some libraries give to an element-wise function: np.identity(n) and
# keras.ops.identity(n) build matrices, torch's functional linear(x, W) is a product
_ELEMENTWISE = {"identity": frozenset(("tensorflow", "fastlstm")),
                "linear": frozenset(("keras", "tf_keras", "tensorflow", "fastlstm"))}


def function_name(fn, what, advice=None):
    """The name of an activation given as a library's function (``__name__``), or
    ValueError: a function of the user's own, or a callable object, is not identified by
    its name (a ``def tanh(x)`` may compute a scaled tanh); nor is a library's wrapper
    around one (``np.vectorize(my_tanh)``)."""
    name = _library_name(fn)
    if name is None:
        raise ValueError(
            f"{what}={fn!r} is not a function fastlstm can identify (it recognises the "
            "functions of TensorFlow, Keras, NumPy and torch, such as tf.tanh or "
            f"keras.activations.relu): if it computes one of fastlstm's activations exactly, "
            + (advice or f"pass that name as a string ({what}='tanh', ...)"))
    return name


def blocks(A, perm, axis):
    """Reorder the four gate blocks of ``A`` along ``axis`` (see the module docstring)."""
    parts = np.split(np.asarray(A), 4, axis=axis)
    return np.concatenate([parts[k] for k in perm], axis=axis)


def bias_sum(a, b, dtype=None):
    """a + b, the two biases that torch and ONNX add to the pre-activations, summed in the
    wider of their dtype and ``dtype`` (at least float32: two float16 biases summed in
    float16 would lose bits that torch keeps); ``a`` itself when ``b`` is all zeros (the
    sum would turn an entry -0.0 of ``a`` into +0.0)."""
    dt = np.result_type(a.dtype, b.dtype, np.float32,
                        np.float32 if dtype is None else pick_dtype(dtype, ()))
    return a.astype(dt) if not np.any(b) else a.astype(dt) + b.astype(dt)


def dtype_name(value):
    """The name of an array's or tensor's dtype, whichever library it comes from
    ("float16" for NumPy's, TF's tf.float16 and torch's torch.float16)."""
    dt = getattr(value, "dtype", None)
    if dt is None:
        dt = np.asarray(value).dtype
    return str(getattr(dt, "name", None) or dt).replace("torch.", "")


def narrow_float(value):
    """Whether an array or tensor is of a float type narrower than float32 (float16,
    bfloat16, float8)."""
    return dtype_name(value).startswith(("float16", "bfloat16", "float8", "half"))


def as_array(value, name):
    """A NumPy array from an array-like or a torch tensor (detached, on the CPU), not copied
    more than needed.  Refuses what is not a real floating or integer array."""
    if value is None:
        raise ValueError(f"{name} is missing")
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, duck-typed
        if getattr(value, "is_meta", False):
            raise ValueError(f"{name} is on torch's meta device: it has a shape but no "
                             "values; load or initialise the weights first")
        value = value.detach().cpu()
        if str(getattr(value, "dtype", "")) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    elif hasattr(value, "numpy") and not isinstance(value, np.ndarray):  # tf / keras tensors
        value = value.numpy()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array: {exc}") from exc
    arr = _widen_narrow_floats(arr)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def check_shape(arr, shape, name, meaning=""):
    if arr.shape != tuple(shape):
        extra = f" {meaning}" if meaning else ""
        raise ValueError(f"{name} must have shape {tuple(shape)}{extra}, got {arr.shape}")
    return arr


def pick_dtype(dtype, arrays):
    """``dtype`` if given, else float64 when any of ``arrays`` is float64, else float32."""
    if dtype is not None:
        if hasattr(dtype, "as_numpy_dtype"):        # tf.float64
            dtype = dtype.as_numpy_dtype
        elif type(dtype).__module__ == "torch" and str(dtype).startswith("torch."):
            dtype = str(dtype)[len("torch."):]      # torch.float64
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be float32 or float64, got {dt}")
        return dt
    if any(a is not None and a.dtype == np.float64 for a in arrays):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def build_layer(W, U, b, *, peepholes=None, P=None, dtype=None, cell_clip=None,
                proj_clip=None, activation="tanh", recurrent_activation="sigmoid",
                forget_bias=1.0, name="layer"):
    """A fastlstm ``LSTM`` holding the given parameters in fastlstm layout.

    W (I, 4H), U (Hout, 4H), b (4H,), peepholes (3, H) or None, P (H, Hout) or None.
    """
    W = np.asarray(W)
    U = np.asarray(U)
    if W.ndim != 2 or W.shape[1] % 4 or W.shape[1] == 0:
        raise ValueError(f"{name}: input kernel must be 2-D (input_size, 4*hidden_size), "
                         f"got shape {W.shape}")
    I, H4 = W.shape
    H = H4 // 4
    Hout = P.shape[1] if P is not None else H
    check_shape(U, (Hout, 4 * H), f"{name}: recurrent kernel", "(output_size, 4*hidden_size)")
    if b is not None:          # None: zeros, in the dtype the weights choose
        b = np.asarray(b)
        check_shape(b, (4 * H,), f"{name}: bias", "(4*hidden_size,)")
    if peepholes is not None:
        check_shape(np.asarray(peepholes), (3, H), f"{name}: peepholes", "(3, hidden_size)")
    if P is not None:
        P = np.asarray(P)
        if P.ndim != 2 or P.shape[0] != H:
            raise ValueError(f"{name}: projection kernel must have shape ({H}, proj_size), "
                             f"got {P.shape}")
    dt = pick_dtype(dtype, [W, U, b, P, None if peepholes is None else np.asarray(peepholes)])
    layer = LSTM(I, H, proj_size=None if P is None else P.shape[1],
                 peepholes=peepholes is not None, cell_clip=cell_clip, proj_clip=proj_clip,
                 forget_bias=forget_bias, activation=activation,
                 recurrent_activation=recurrent_activation, dtype=dt, random_state=0)
    for what, arr in (("input kernel", W), ("recurrent kernel", U), ("bias", b),
                      ("peepholes", peepholes), ("projection kernel", P)):
        check_range(arr, dt, f"{name}: {what}")
    layer.W[...] = W
    layer.U[...] = U
    layer.b[...] = 0 if b is None else b
    if peepholes is not None:
        layer.peepholes[...] = peepholes
    if P is not None:
        layer.P[...] = P
    return layer


def check_range(arr, dt, name):
    """Refuse finite values that ``dt`` cannot hold (they would become infinite)."""
    if arr is not None:
        _check_fits(np.asarray(arr), np.dtype(dt), name, "use dtype=np.float64")


def assemble(items):
    """One item -> that item; several -> a MultiLSTM.  Items are LSTM or (fw, bw) pairs."""
    out = [Bidirectional(*it) if isinstance(it, tuple) else it for it in items]
    return out[0] if len(out) == 1 else MultiLSTM(out)


def layers_of(model, name="model"):
    """The layers of a fastlstm model as a list of LSTM / Bidirectional items."""
    if isinstance(model, (LSTM, Bidirectional)):
        return [model]
    if isinstance(model, MultiLSTM):
        return list(model.layers)
    raise TypeError(f"{name} must be a fastlstm LSTM, Bidirectional or MultiLSTM, "
                    f"got {type(model).__name__}")


def directions(item):
    """The LSTM objects of one layer item, forward first."""
    if isinstance(item, Bidirectional):
        return [item.forward_layer, item.backward_layer]
    return [item]


def refuse_reverse(item, target, where="layer"):
    """Raise ValueError for a stand-alone layer built with ``reverse=True``: ``target`` has
    no layer that runs in reverse on its own (only as the backward half of a
    bidirectional one)."""
    if isinstance(item, LSTM) and item.reverse:
        raise ValueError(f"{where} cannot be represented exactly in {target}: it runs in "
                         "reverse on its own (reverse=True), which only ONNX's "
                         "direction='reverse' expresses")


def refuse_unrepresentable(layer, target, *, peepholes=False, projection=False,
                           cell_clip=False, proj_clip=False, activations=("tanh",),
                           recurrent_activations=("sigmoid",), where="layer"):
    """Raise ValueError listing every feature of ``layer`` that ``target`` cannot represent."""
    problems = []
    if layer.use_peepholes and not peepholes:
        problems.append("peepholes")
    if layer.proj_size is not None and not projection:
        problems.append(f"a projection (proj_size={layer.proj_size})")
    if layer.cell_clip is not None and not cell_clip:
        problems.append(f"cell_clip={layer.cell_clip}")
    if layer.proj_size is not None and layer.proj_clip is not None and not proj_clip:
        problems.append(f"proj_clip={layer.proj_clip}")
    if layer.activation not in activations:
        problems.append(f"activation={layer.activation!r} (supported: {', '.join(activations)})")
    if layer.recurrent_activation not in recurrent_activations:
        problems.append(f"recurrent_activation={layer.recurrent_activation!r} "
                        f"(supported: {', '.join(recurrent_activations)})")
    if problems:
        raise ValueError(f"{where} cannot be represented exactly in {target}: it has "
                         + "; ".join(problems))
