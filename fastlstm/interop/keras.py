"""Keras ``LSTM`` <-> fastlstm (SPEC.md §6, §8).

fastlstm's parameter layout *is* the Keras layout: ``kernel`` (I, 4H) = ``W``,
``recurrent_kernel`` (H, 4H) = ``U``, ``bias`` (4H,) = ``b``, gate blocks (i, f, c, o).
What needs care:

- ``hard_sigmoid`` is ``clip(0.2x + 0.5, 0, 1)`` in Keras 2 (and tf.keras before TF 2.16)
  but ``relu6(x + 3) / 6 = clip(x/6 + 0.5, 0, 1)`` in Keras 3.  fastlstm names them
  ``"hard_sigmoid_keras2"`` and ``"hard_sigmoid"``.  Keras' own function object tells
  which it is by the package that defines it (a Keras 2 layer may be given Keras 3's
  function, and the other way round); the name alone is read by the Keras version of the
  package that defined the layer, or, from a weights list, by ``keras_version``.
- A subclass of a Keras LSTM (or RNN, or LSTMCell) that overrides ``call`` is refused: its
  outputs may differ from the weights' LSTM maths.
- Keras orders states ``[h, c]``; fastlstm ``LSTMState(c, h)``.
- With a mask, Keras repeats the previous output on padded steps where fastlstm writes 0
  (states agree): ``keras_masked_outputs`` converts fastlstm's outputs to Keras' rule.
- ``go_backwards`` returns outputs in reversed time order; it is refused.
- Call options are not weights: a Keras 2 ``time_major=True`` layer takes (T, N, I) inputs
  (call the fastlstm layer with ``time_major=True``), a ``stateful=True`` layer carries its
  states from call to call (fastlstm models keep none: pass them as ``initial_state``).
  ``from_keras`` warns about both.
"""

import importlib
import sys
import warnings

import numpy as np

from ._common import (as_array, build_layer, check_shape, directions, function_name, layers_of,
                      refuse_reverse, refuse_unrepresentable)
from ..layers import ACTIVATIONS, Bidirectional, LSTM

__all__ = ["from_keras", "to_keras_weights", "keras_config", "keras_masked_outputs"]

_KERAS_ACTIVATIONS = {"tanh": "tanh", "relu": "relu", "sigmoid": "sigmoid", "linear": "linear"}


def _fn_name(fn, what, layer=False):
    if fn is None:
        return "linear"
    if isinstance(fn, str):
        return fn
    return function_name(fn, what, advice=(
        f"convert the layer's get_weights() with {what}= that name ('tanh', ...): a layer "
        "object brings its own") if layer else None)


def _major(version):
    """The major number of a version string ("3.15.0" -> 3), or None."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def _keras_major(layer):
    """2 or 3 from the Keras package that defined ``layer``'s class or, for a subclass
    defined elsewhere, the nearest Keras class it derives from; None when unknown."""
    tops = [cls.__module__.split(".")[0] for cls in type(layer).__mro__]
    top = next((t for t in tops if t in ("keras", "tf_keras", "tensorflow")), None)
    if top is None:
        return None
    if top == "tf_keras":
        return 2
    if any(cls.__module__.startswith("tensorflow.python.keras") for cls in type(layer).__mro__):
        # the Keras 2 code bundled in TensorFlow (tf.keras of TF 1.x; still shipped, as a
        # private module, beside Keras 3 in TF 2.16+)
        return 2
    if top == "tensorflow":
        try:
            import tensorflow as tf
            version = tf.keras.__version__ if hasattr(tf.keras, "__version__") else "2"
        except Exception:  # pragma: no cover - depends on the installed tensorflow
            return None
        return _major(version)
    try:
        version = importlib.import_module(top).__version__
    except Exception:
        return None
    return _major(version)


def _hard_sigmoid_by_value(fn):
    """2 or 3 when the function computes Keras 2's (0.2x + 0.5) or Keras 3's (x/6 + 0.5)
    hard sigmoid on a few points, ValueError when it computes something else, None when
    it cannot be called on a NumPy array here (a graph-mode TensorFlow function)."""
    x = np.array([-1.0, 1.0, 2.0], np.float32)
    try:
        y = np.asarray(fn(x), dtype=np.float64).reshape(-1)
    except Exception:           # noqa: BLE001 - symbolic tensors, backend errors
        return None
    if y.shape != x.shape:
        return None
    for version, want in ((2, 0.2 * x + 0.5), (3, x / 6 + 0.5)):
        if np.allclose(y, want, rtol=0, atol=1e-6):
            return version
    raise ValueError(f"recurrent_activation={fn!r} is called hard_sigmoid but computes "
                     f"neither Keras 2's nor Keras 3's hard sigmoid ({y.tolist()} at "
                     f"{x.tolist()})")


def _function_keras_major(fn):
    """2 or 3 for a function object of a Keras package: for ``hard_sigmoid`` (whose formula
    changed in Keras 3) what it computes; otherwise ``tf_keras``, TensorFlow's bundled
    Keras and Keras 3's legacy API (``tf.keras.backend``): 2, ``keras``: the installed
    version.  None for other functions."""
    if fn is None or isinstance(fn, str):
        return None
    module = getattr(fn, "__module__", None)
    if not isinstance(module, str):
        return None
    top = module.split(".")[0]
    if top not in ("keras", "tf_keras", "tensorflow"):
        return None
    if getattr(fn, "__name__", None) == "hard_sigmoid":
        version = _hard_sigmoid_by_value(fn)
        if version is not None:
            return version
    if top == "tf_keras" or module.startswith(("tensorflow.python.keras", "keras.src.legacy")):
        return 2
    if top == "keras":
        # the function's own package is imported (the function came from it)
        return _major(getattr(sys.modules.get("keras"), "__version__", None))
    return None


# methods a subclass of a Keras layer may define without changing what it computes
_HARMLESS = frozenset(("build", "get_config", "from_config", "get_build_config",
                       "build_from_config", "compute_output_shape", "compute_output_spec",
                       "compute_mask", "save_own_variables", "load_own_variables",
                       "reset_states", "reset_state"))


def _check_keras_methods(obj, what):
    """TypeError when ``obj``'s class derives from a Keras LSTM / LSTMCell / RNN /
    Bidirectional class but overrides one of its methods (``call``, ``inner_loop``, the
    cell's gate computations, ...) other than construction and configuration: such a
    layer may compute something else from the same weights (classes outside Keras are not
    checked)."""
    mro = type(obj).__mro__
    for i, cls in enumerate(mro):
        top = cls.__module__.split(".")[0] if isinstance(cls.__module__, str) else ""
        if top in ("keras", "tf_keras", "tensorflow") and \
                ("LSTM" in cls.__name__ or cls.__name__ in ("RNN", "Bidirectional")):
            for sub in mro[:i]:         # the classes defined on top of Keras'
                for attr, value in vars(sub).items():
                    if (attr.startswith("__") and attr != "__call__") or attr in _HARMLESS:
                        continue
                    if not callable(getattr(cls, attr, None)):
                        continue        # a method of the subclass's own, not an override
                    if callable(value) or isinstance(value, (staticmethod, classmethod)):
                        raise TypeError(
                            f"{what}: {type(obj).__name__} subclasses Keras' "
                            f"{cls.__name__} but overrides {attr}, so its outputs may "
                            "differ: convert its get_weights() if the LSTM maths is "
                            "unchanged")
            return


def _recurrent_name(name, keras_version):
    if name == "hard_sigmoid":
        if keras_version not in (2, 3):
            raise ValueError(
                "recurrent_activation='hard_sigmoid' differs between Keras 2 (0.2x + 0.5) and "
                "Keras 3 (x/6 + 0.5): pass keras_version=2 or 3, or name the function "
                "'hard_sigmoid_keras2' (Keras 2) / 'hard_sigmoid_keras3' (Keras 3)")
        return "hard_sigmoid_keras2" if keras_version == 2 else "hard_sigmoid"
    if name == "hard_sigmoid_keras3":
        return "hard_sigmoid"
    if name in ("sigmoid", "hard_sigmoid_keras2"):
        return name
    raise ValueError(f"recurrent_activation={name!r} cannot be represented exactly in fastlstm "
                     "(supported: sigmoid, hard_sigmoid of Keras 2 or 3)")


def _activation_name(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} cannot be represented exactly in fastlstm "
                         f"(supported: {', '.join(ACTIVATIONS)})")
    return name


def _from_weights(weights, activation, recurrent_activation, keras_version, dtype, name,
                  layer=False):
    weights = list(weights)
    if len(weights) not in (2, 3):
        raise ValueError(f"{name}: expected [kernel, recurrent_kernel, bias] (or without bias), "
                         f"got a list of {len(weights)} arrays")
    kernel = as_array(weights[0], "kernel")
    rec = as_array(weights[1], "recurrent_kernel")
    if kernel.ndim != 2 or kernel.shape[1] % 4 or not kernel.shape[1]:
        raise ValueError(f"{name}: kernel must have shape (input_size, 4*units), "
                         f"got {kernel.shape}")
    H = kernel.shape[1] // 4
    check_shape(rec, (H, 4 * H), f"{name}: recurrent_kernel", "(units, 4*units)")
    bias = None
    if len(weights) == 3:
        bias = as_array(weights[2], "bias")
        if bias.shape == (8 * H,):  # CuDNN layout: input and recurrent biases, summed
            bias = bias[:4 * H] + bias[4 * H:]
        check_shape(bias, (4 * H,), f"{name}: bias", "(4*units,)")
    own = _function_keras_major(recurrent_activation)   # Keras' function knows its version
    return build_layer(kernel, rec, bias, dtype=dtype,
                       activation=_activation_name(_fn_name(activation, "activation", layer)),
                       recurrent_activation=_recurrent_name(
                           _fn_name(recurrent_activation, "recurrent_activation", layer),
                           own if own is not None else keras_version),
                       name=name)


def _from_layer(layer, keras_version, dtype):
    if hasattr(layer, "forward_layer") and hasattr(layer, "backward_layer"):
        if _keras_class(type(layer), ("Bidirectional",)) != "Bidirectional":
            raise TypeError(f"expected a Keras Bidirectional, got {type(layer).__name__}, a "
                            "class of its own with forward and backward layers: it may "
                            "combine them otherwise; convert its layers one by one")
        _check_keras_methods(layer, f"Keras Bidirectional {getattr(layer, 'name', '')!r}")
        mode = getattr(layer, "merge_mode", "concat")
        if mode != "concat":
            raise ValueError(f"Bidirectional merge_mode={mode!r} cannot be represented: fastlstm "
                             "concatenates [forward | backward]")
        fw = _single(layer.forward_layer, keras_version, dtype, warn=False)
        bw_layer = layer.backward_layer
        if not getattr(bw_layer, "go_backwards", False):
            raise ValueError("the backward layer of a Keras Bidirectional must have "
                             "go_backwards=True")
        bw = _single(bw_layer, keras_version, dtype, allow_backwards=True, warn=False)
        title = f"Keras Bidirectional {getattr(layer, 'name', '')!r}"
        if fw.dtype != bw.dtype:
            raise ValueError(f"the halves of {title} hold {np.dtype(fw.dtype).name} and "
                             f"{np.dtype(bw.dtype).name} weights: a fastlstm Bidirectional "
                             "has one dtype; pass dtype= to import both in it")
        _warn_call_options(layer.forward_layer, title, 3)      # once for both halves
        if _compute_dtype(layer) != _compute_dtype(layer.forward_layer):
            # the wrapper casts the input to its own compute dtype first
            _warn_policy(layer, title, 3)
            outer = _compute_dtype(layer)
            if outer in ("float32", "float64") and np.dtype(outer).itemsize < np.dtype(
                    fw.dtype).itemsize:
                warnings.warn(f"{title} computes in {outer} around {np.dtype(fw.dtype).name} "
                              f"layers: Keras casts the input (and Keras 3 the outputs) to "
                              f"{outer}, so its results differ from the {np.dtype(fw.dtype).name}"
                              f" import by {outer} rounding; build the wrapper with "
                              f"dtype={np.dtype(fw.dtype).name!r} too", UserWarning,
                              stacklevel=3)
        if getattr(layer.forward_layer, "unroll", False) is True or \
                getattr(bw_layer, "unroll", False) is True:
            warnings.warn(f"{title} is unrolled (unroll=True): called with a mask, Keras "
                          "on TensorFlow (Keras 3.15 and tf_keras 2.21 at least) zeroes its "
                          "backward half on the valid steps instead of the masked ones (its "
                          "unrolled path applies the mask in the wrong time order); fastlstm "
                          "computes what the layer computes with unroll=False. Without a "
                          "mask both agree",
                          UserWarning, stacklevel=3)
        if _compute_dtype(bw_layer) != _compute_dtype(layer.forward_layer):
            # (Keras lets the halves' dtype policies differ; their other call options not)
            _warn_policy(bw_layer, f"the backward layer of Keras Bidirectional "
                                   f"{getattr(layer, 'name', '')!r}", 3)
        return Bidirectional(fw, bw)
    return _single(layer, keras_version, dtype)


def _compute_dtype(layer):
    return getattr(getattr(layer, "dtype_policy", None), "compute_dtype", None) or \
        getattr(layer, "compute_dtype", None)


def _warn_policy(layer, name, stacklevel):
    policy = _compute_dtype(layer)
    if isinstance(policy, str) and policy in ("float16", "bfloat16"):
        warnings.warn(f"{name} computes in {policy} (a mixed-precision dtype policy); "
                      "fastlstm computes in float32 or float64, so outputs differ from "
                      f"Keras' by {policy} rounding", UserWarning, stacklevel=stacklevel + 1)


def _warn_call_options(layer, name, stacklevel):
    """What a Keras layer does at call time that its weights do not say (stacklevel + 1:
    the caller of from_keras, counted from the warning)."""
    if getattr(layer, "time_major", False) is True:
        warnings.warn(f"{name} is time-major (time_major=True, inputs (T, N, I)): call the "
                      "fastlstm layer with time_major=True for the same outputs",
                      UserWarning, stacklevel=stacklevel + 1)
    _warn_policy(layer, name, stacklevel + 1)
    if getattr(layer, "stateful", False) is True:
        warnings.warn(f"{name} is stateful: the states it carries between calls are not "
                      "weights and are not imported; pass them to the fastlstm layer as "
                      "initial_state (Keras' [h, c] as LSTMState(c, h))",
                      UserWarning, stacklevel=stacklevel + 1)


def _keras_class(cls, names=()):
    """The name of the first class of ``cls``'s MRO that a Keras package defines and that
    names an LSTM (or is one of ``names``): a subclass of keras.layers.LSTM may be called
    anything, while a class of another package (a layer of the user's own holding an
    LSTM, a hand-written cell) gets None, whatever it is called."""
    for c in getattr(cls, "__mro__", ()):
        top = c.__module__.split(".")[0] if isinstance(c.__module__, str) else ""
        if top in ("keras", "tf_keras", "tensorflow") and ("LSTM" in c.__name__
                                                             or c.__name__ in names):
            return c.__name__
    return None


def _single(layer, keras_version, dtype, allow_backwards=False, warn=True):
    kind = _keras_class(type(layer), ("RNN",))
    cell = getattr(layer, "cell", None)
    # keras.layers.RNN(LSTMCell(units)) (or a subclass of RNN) computes what LSTM(units)
    # does
    rnn = kind == "RNN"
    wrapped = rnn and _keras_class(type(cell)) is not None
    if not (wrapped or (kind is not None and "LSTM" in kind)) or \
            not hasattr(layer, "get_weights"):
        hint = ""
        if rnn and type(cell).__name__ == "StackedRNNCells":
            hint = (" over several cells: convert each cell (from_keras(cell)) and stack them "
                    "in fastlstm.MultiLSTM")
        elif rnn:
            own = _keras_class(type(cell), (type(cell).__name__,)) is None
            hint = (f" over a {type(cell).__name__}, not Keras' LSTMCell"
                    + (" (a cell of your own may compute anything)" if own else ""))
        elif kind is None and "LSTM" in type(layer).__name__:
            hint = (" (a class of its own, not derived from Keras' LSTM, LSTMCell or RNN: it "
                    "may compute anything; convert its LSTM, or the weights of one that "
                    "computes Keras' LSTM)")
        raise TypeError(f"expected a Keras LSTM layer, got {type(layer).__name__}{hint}")
    if getattr(layer, "go_backwards", False) and not allow_backwards:
        raise ValueError("go_backwards=True returns outputs in reversed time order, which "
                         "fastlstm does not produce; wrap the layer in Bidirectional or reverse "
                         "the input yourself")
    name = f"Keras layer {getattr(layer, 'name', type(layer).__name__)!r}"
    _check_keras_methods(layer, name)
    if getattr(layer, "cell", None) is not None:
        _check_keras_methods(layer.cell, name)
    weights = layer.get_weights()
    if not weights:
        raise ValueError(f"the Keras layer {getattr(layer, 'name', type(layer).__name__)!r} "
                         "is not built yet "
                         "(call it once or build it with an input shape)")
    cell = getattr(layer, "cell", layer)
    act = getattr(cell, "activation", getattr(layer, "activation", "tanh"))
    rec = getattr(cell, "recurrent_activation",
                  getattr(layer, "recurrent_activation", "sigmoid"))
    if kind.startswith("CuDNN"):
        act, rec = "tanh", "sigmoid"
    version = keras_version if keras_version is not None else _keras_major(layer)
    if warn:
        _warn_call_options(layer, name, 4)
        if getattr(layer, "zero_output_for_mask", False) is True and \
                getattr(layer, "return_sequences", False) is True:
            warnings.warn(f"{name} has zero_output_for_mask=True: with a mask it writes 0 on "
                          "masked steps, as fastlstm does with lengths, so use fastlstm's "
                          "outputs as they are (not keras_masked_outputs)", UserWarning,
                          stacklevel=4)
    return _from_weights(weights, act, rec, version, dtype, name, layer=True)


def from_keras(layer, *, activation="tanh", recurrent_activation="sigmoid", keras_version=None,
               dtype=None):
    """A fastlstm layer with the same outputs and final states as a Keras ``LSTM``.

    layer : a ``keras.layers.LSTM``, ``LSTMCell`` or ``RNN(LSTMCell(...))`` (or
        ``Bidirectional(...)`` of one, ``merge_mode="concat"``) object, or its
        ``get_weights()`` list ``[kernel (I, 4H), recurrent_kernel (H, 4H), bias (4H,)]``
        (bias may be left out; an (8H,) CuDNN bias is summed).
    activation, recurrent_activation : used only with a weights list (a layer object brings
        its own).  Names or functions: activation in tanh / relu / sigmoid / linear;
        recurrent_activation in sigmoid / hard_sigmoid / hard_sigmoid_keras2 /
        hard_sigmoid_keras3.
    keras_version : 2 or 3.  Needed to read the name ``"hard_sigmoid"``, whose formula
        changed in Keras 3; read from the Keras package of the layer's class (or of its
        nearest Keras base class) when a layer object is given.  Keras' own function
        object is read by the package that defines it instead (``tf_keras``: 2).
    dtype : float32 / float64; default float64 for float64 weights, else float32.

    Returns ``LSTM`` (or ``Bidirectional``).  Anything fastlstm cannot compute exactly is
    a ValueError.
    """
    if keras_version is not None and (isinstance(keras_version, bool)
                                      or keras_version not in (2, 3)):
        raise ValueError(f"keras_version must be None, 2 or 3, got {keras_version!r}")
    if isinstance(layer, (list, tuple)):
        return _from_weights(layer, activation, recurrent_activation, keras_version, dtype,
                             "weights")
    return _from_layer(layer, keras_version, dtype)


def to_keras_weights(model):
    """The ``set_weights`` list for the equivalent Keras layer(s).

    ``LSTM`` -> ``[kernel, recurrent_kernel, bias]``; ``Bidirectional`` -> the forward
    list followed by the backward list (Keras ``Bidirectional`` order); ``MultiLSTM`` ->
    one such list per layer (for a stack of Keras layers with ``return_sequences=True``).
    Refuses peepholes, projections and clips (Keras has none).  Build the Keras layer with
    the options from ``keras_config``.
    """
    items = layers_of(model)
    out = []
    for k, item in enumerate(items):
        refuse_reverse(item, "Keras LSTM (its go_backwards returns the outputs reversed)",
                       f"layer {k}")
        ws = []
        for d, layer in enumerate(directions(item)):
            refuse_unrepresentable(layer, "Keras LSTM", activations=tuple(_KERAS_ACTIVATIONS),
                                   recurrent_activations=tuple(RECURRENT_NAMES),
                                   where=f"layer {k}" + (" (backward)" if d else ""))
            ws += [layer.W.copy(), layer.U.copy(), layer.b.copy()]
        out.append(ws)
    return out[0] if isinstance(model, (LSTM, Bidirectional)) else out


RECURRENT_NAMES = {"sigmoid": {2: "sigmoid", 3: "sigmoid"},
                   "hard_sigmoid": {3: "hard_sigmoid"},
                   "hard_sigmoid_keras2": {2: "hard_sigmoid"}}


def keras_config(layer, keras_version=3):
    """Keyword arguments for ``keras.layers.LSTM`` matching one fastlstm ``LSTM``.

    ``recurrent_activation`` is named for ``keras_version`` (2 or 3); a hard sigmoid of the
    other version has no Keras name there and is refused.  ``dtype`` is the layer's
    (float32 or float64), so that Keras computes in it.
    """
    if not isinstance(layer, LSTM):
        raise TypeError(f"layer must be a fastlstm LSTM, got {type(layer).__name__}")
    if keras_version not in (2, 3):
        raise ValueError(f"keras_version must be 2 or 3, got {keras_version!r}")
    refuse_unrepresentable(layer, "Keras LSTM", activations=tuple(_KERAS_ACTIVATIONS),
                           recurrent_activations=tuple(RECURRENT_NAMES))
    refuse_reverse(layer, "Keras LSTM (its go_backwards returns the outputs reversed)")
    rec = RECURRENT_NAMES[layer.recurrent_activation].get(keras_version)
    if rec is None:
        raise ValueError(f"recurrent_activation={layer.recurrent_activation!r} has no "
                         f"Keras {keras_version} equivalent")
    return dict(units=layer.hidden_size, activation=_KERAS_ACTIVATIONS[layer.activation],
                recurrent_activation=rec, use_bias=True, return_sequences=True,
                return_state=True, dtype=np.dtype(layer.dtype).name)


def keras_masked_outputs(Y, lengths):
    """fastlstm outputs -> what a masked Keras ``LSTM(return_sequences=True)`` returns.

    Y (N, T, F) batch-major; lengths (N,).  On padded steps (t >= lengths[n]) Keras
    repeats the last valid output (0 when lengths[n] == 0) where fastlstm writes 0.  Only
    right-padded masks (a valid prefix per row) are covered.  Not for a Keras
    ``Bidirectional``'s outputs: it writes 0 on masked steps, as fastlstm does.  Returns a
    new array.
    """
    Y = as_array(Y, "Y")
    if Y.ndim != 3:
        raise ValueError(f"Y must be 3-D (batch, time, features), got shape {Y.shape}")
    N, T = Y.shape[:2]
    L = np.asarray(lengths)
    if L.shape != (N,) or L.dtype.kind not in "iu":
        raise ValueError(f"lengths must be ({N},) integers, got {L.shape} {L.dtype}")
    if N and (L.min() < 0 or L.max() > T):
        raise ValueError(f"lengths must be in [0, T={T}]")
    out = Y.copy()
    for n in range(N):
        if 0 < L[n] < T:
            out[n, L[n]:] = Y[n, L[n] - 1]
    return out
