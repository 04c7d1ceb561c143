"""Save and load models as ``.npz`` files (no pickle: loading cannot run code).

Format version 2 (a model with a ``reverse=True`` layer; every other model is written as
version 1, which version 2 only extends, so that older readers still read it).  The
archive holds:

- ``meta_json``: a 0-d unicode array with a JSON object
  ``{"format": "fastlstm", "format_version": 1, "fastlstm_version": ..., "model": SPEC}``
  where ``SPEC`` describes the structure:
  ``{"type": "LSTM", "input_size", "hidden_size", "proj_size", "peepholes", "cell_clip",
  "proj_clip", "forget_bias", "activation", "recurrent_activation", "dtype"}``, an
  optional ``"n_threads"`` (absent: None; a run-time setting, which readers that do not
  know it ignore) and, in version 2, ``"reverse"`` (absent: False),
  ``{"type": "Bidirectional", "forward": SPEC, "backward": SPEC}`` or
  ``{"type": "MultiLSTM", "layers": [SPEC, ...]}``;
- ``param/<name>`` for every entry of ``model.params`` (e.g. ``param/W``,
  ``param/fw.U``, ``param/1.bw.b``), in the model's dtype and fastlstm layout (SPEC.md
  Part A).

``load`` reads with ``allow_pickle=False``, checks every name, shape and dtype, and
refuses newer format versions.
"""

import json
import math
import os
import tokenize
import zipfile
import zlib

import numpy as np

from ._version import __version__
from .layers import _UNSET, LSTM, Bidirectional, MultiLSTM

# what a damaged or foreign file raises while it is read (besides ValueError): zipfile
# raises NotImplementedError for an unknown compression method and RuntimeError for an
# encrypted member, NumPy's header parser tokenize.TokenError or SyntaxError
_READ_ERRORS = (EOFError, OSError, KeyError, RecursionError, zipfile.BadZipFile, zlib.error,
                NotImplementedError, RuntimeError, tokenize.TokenError, SyntaxError)
_MAX_META = 1 << 22   # characters of meta_json: far more than any model description

__all__ = ["save", "load", "FORMAT_VERSION"]

FORMAT_VERSION = 2
_PREFIX = "param/"


def _spec(model):
    """The description of ``model`` (a Bidirectional's halves keep their own ``reverse``
    flag, which the Bidirectional overrides but a call of the half alone uses)."""
    if isinstance(model, LSTM):
        return dict(type="LSTM", input_size=model.input_size, hidden_size=model.hidden_size,
                    proj_size=model.proj_size, peepholes=model.use_peepholes,
                    cell_clip=model.cell_clip, proj_clip=model.proj_clip,
                    forget_bias=model.forget_bias, activation=model.activation,
                    recurrent_activation=model.recurrent_activation, dtype=model.dtype.name,
                    **({"reverse": True} if model.reverse else {}),
                    **({"n_threads": model.n_threads} if model.n_threads is not None else {}))
    if isinstance(model, Bidirectional):
        return dict(type="Bidirectional", forward=_spec(model.forward_layer),
                    backward=_spec(model.backward_layer))
    if isinstance(model, MultiLSTM):
        return dict(type="MultiLSTM", layers=[_spec(layer) for layer in model.layers])
    raise TypeError(f"model must be a fastlstm LSTM, Bidirectional or MultiLSTM, "
                    f"got {type(model).__name__}")


def _runs_reverse(spec):
    """Whether a description holds a layer with ``"reverse"``."""
    if spec["type"] == "MultiLSTM":
        return any(_runs_reverse(s) for s in spec["layers"])
    if spec["type"] == "Bidirectional":
        return _runs_reverse(spec["forward"]) or _runs_reverse(spec["backward"])
    return bool(spec.get("reverse", False))


def save(model, path, *, compressed=False):
    """Write ``model`` to ``path`` (a path or a binary file; ``.npz`` is appended to a
    path without it, as NumPy does).  ``compressed=True`` uses zip deflate."""
    spec = _spec(model)
    # version 1 unless a layer runs in reverse (a reader of version 1 would run it forward)
    version = 2 if _runs_reverse(spec) else 1
    meta = dict(format="fastlstm", format_version=version, fastlstm_version=__version__,
                model=spec)
    arrays = {_PREFIX + name: np.ascontiguousarray(value)
              for name, value in model.params.items()}
    arrays["meta_json"] = np.array(json.dumps(meta))
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)


_LSTM_KEYS = {"type", "input_size", "hidden_size", "proj_size", "peepholes", "cell_clip",
              "proj_clip", "forget_bias", "activation", "recurrent_activation", "dtype"}


def _build(spec, where="model"):
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"{where}: malformed model description")
    kind = spec["type"]
    try:
        if kind == "LSTM":
            missing = _LSTM_KEYS - set(spec)
            if missing:
                raise ValueError(f"missing fields {sorted(missing)}")
            if spec["dtype"] not in ("float32", "float64"):
                raise ValueError(f"dtype must be float32 or float64, got {spec['dtype']!r}")
            return LSTM(spec["input_size"], spec["hidden_size"], proj_size=spec["proj_size"],
                        peepholes=spec["peepholes"], cell_clip=spec["cell_clip"],
                        proj_clip=spec["proj_clip"], forget_bias=spec["forget_bias"],
                        activation=spec["activation"],
                        recurrent_activation=spec["recurrent_activation"],
                        dtype=np.dtype(spec["dtype"]), random_state=_UNSET,
                        reverse=spec.get("reverse", False),
                        n_threads=spec.get("n_threads"))
        if kind == "Bidirectional":
            # the halves' own flags are set after pairing them (Bidirectional refuses a
            # reversed forward half when it is built; a call of that half alone uses it)
            halves = [_build(dict(spec[k], reverse=False) if isinstance(spec[k], dict)
                             else spec[k], f"{where}.{k}") for k in ("forward", "backward")]
            bi = Bidirectional(*halves)
            for layer, k in zip(halves, ("forward", "backward")):
                layer.reverse = spec[k].get("reverse", False)
            return bi
        if kind == "MultiLSTM":
            layers = spec["layers"]
            if not isinstance(layers, list):
                raise ValueError("layers must be a list")
            return MultiLSTM([_build(s, f"{where}.layers[{k}]") for k, s in enumerate(layers)])
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{where}: invalid {kind} description: {exc}") from exc
    raise ValueError(f"{where}: unknown model type {kind!r}")


def _param_shapes(spec):
    """{name: shape} of the parameters a description declares (as ``model.params``), or
    None when the description is malformed (``_build`` then says how)."""
    try:
        kind = spec["type"]
        if kind == "LSTM":
            I, H, P = spec["input_size"], spec["hidden_size"], spec["proj_size"]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                       for v in (I, H) + ((P,) if P is not None else ())):
                return None
            Ho = H if P is None else P
            out = {"W": (I, 4 * H), "U": (Ho, 4 * H), "b": (4 * H,)}
            if spec["peepholes"] is True:
                out["peepholes"] = (3, H)
            if P is not None:
                out["P"] = (H, Ho)
            return out
        if kind == "Bidirectional":
            parts = [_param_shapes(spec["forward"]), _param_shapes(spec["backward"])]
            if None in parts:
                return None
            return {f"{d}.{k}": v for d, part in zip(("fw", "bw"), parts)
                    for k, v in part.items()}
        if kind == "MultiLSTM":
            parts = [_param_shapes(s) for s in spec["layers"]]
            if None in parts or not parts:
                return None
            return {f"{j}.{k}": v for j, part in enumerate(parts) for k, v in part.items()}
    except (KeyError, TypeError):
        pass
    return None


# errors of the file system itself, passed on as they are; any other OSError while
# reading (a damaged archive makes zipfile seek to a negative offset: EINVAL) means the
# file is not a readable model
_FS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def load(path):
    """Read a model written by ``save`` (a path, with or without the ``.npz`` that ``save``
    appends, or a binary file).  Raises ValueError for files that are not fastlstm models
    (also damaged ones), newer format versions, or parameters of the wrong name, shape or
    dtype; the stored parameters are checked against the model's description before the
    model is built.  A missing file is a FileNotFoundError."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if isinstance(path, str) and not os.path.exists(path) and os.path.exists(path + ".npz"):
        path += ".npz"              # as save wrote it
    try:
        return _load(path)
    except _READ_ERRORS as exc:
        if isinstance(exc, _FS_ERRORS):
            raise                   # the file system's own errors (missing, permissions)
        raise ValueError(f"{path!r} is not a readable fastlstm model file: "
                         f"{type(exc).__name__}: {exc}") from exc


def _npy_header(fp, key, path):
    """(shape, fortran_order, dtype) of an open archive member, its data not read yet."""
    fmt = np.lib.format
    version = fmt.read_magic(fp)
    if version == (1, 0):
        header = fmt.read_array_header_1_0(fp)
    elif version == (2, 0):
        header = fmt.read_array_header_2_0(fp)
    else:
        raise ValueError(f"{path!r}: {key} has .npy format version {version}, which "
                         "fastlstm does not write")
    if header[2].hasobject:
        raise ValueError(f"{path!r}: {key} holds Python objects (would need pickle)")
    return header


def _header(archive, key, path):
    """(shape, dtype) of an archive member, before any of its data is read: a small file
    declaring (or decompressing to) a huge array costs nothing."""
    with archive.zip.open(key + ".npy") as fp:
        shape, _, dtype = _npy_header(fp, key, path)
    return shape, dtype


# deflate's largest expansion: 1032 bytes out per byte in (RFC 1951's longest match codes)
_DEFLATE_MAX_RATIO = 1032


def _check_member_size(info, need, name, path):
    """Refuse, before the model is built, a parameter whose archive member cannot hold the
    ``need`` bytes its header declares (a truncated or crafted file declaring a huge model
    would otherwise have it allocated first)."""
    most = info.file_size
    if info.compress_type == zipfile.ZIP_STORED:
        most = min(most, info.compress_size)
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        most = min(most, info.compress_size * _DEFLATE_MAX_RATIO)
    if most < need:
        raise ValueError(f"{path!r}: parameter {name!r} is truncated: its header declares "
                         f"{need} bytes of data, the file holds at most {most}")


def _read_into(archive, key, target, name, path):
    """Fill ``target`` with a member's data, read straight into it (no second copy of
    the model while it loads)."""
    with archive.zip.open(key + ".npy") as fp:
        shape, fortran, dtype = _npy_header(fp, key, path)
        if dtype != target.dtype:
            raise ValueError(f"{path!r}: parameter {name!r} has dtype {dtype}, "
                             f"expected {target.dtype}")
        if fortran or not target.flags.c_contiguous or shape != target.shape:
            target[...] = archive[key]
            return
        want, got = target.nbytes, 0
        dest = memoryview(target.reshape(-1).view(np.uint8))
        while got < want:          # in pieces: a zip member's readinto reads it all first
            piece = fp.read(min(want - got, 1 << 20))
            if not piece:
                break
            dest[got:got + len(piece)] = piece
            got += len(piece)
        if got != want:
            raise ValueError(f"{path!r}: parameter {name!r} is truncated ({got} of {want} "
                             "bytes)")


def _load(path):
    if isinstance(path, (str, bytes)):
        # opened here, so that it is closed also when np.load fails on it (a file that is
        # not a zip archive: np.load leaves its own handle open then)
        with open(path, "rb") as fh:
            return _load_from(fh, path)
    return _load_from(path, path)


def _load_from(fh, path):
    try:
        archive = np.load(fh, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{path!r} is not a fastlstm .npz file (NumPy could not read it "
                         f"without unpickling: {exc})") from exc
    if not hasattr(archive, "files"):
        raise ValueError(f"{path!r} is a single .npy array, not a fastlstm .npz model")
    with archive:
        if "meta_json" not in archive.files:
            raise ValueError(f"{path!r} has no meta_json entry: not a fastlstm model file")
        head = _header(archive, "meta_json", path)
        if head[0] != () or head[1].kind != "U" or head[1].itemsize > 4 * _MAX_META:
            raise ValueError(f"{path!r}: meta_json is not a 0-d string of at most "
                             f"{_MAX_META} characters (got shape {head[0]}, dtype {head[1]})")
        raw = archive["meta_json"]
        try:
            meta = json.loads(str(raw[()]))
        except (ValueError, TypeError, IndexError) as exc:
            raise ValueError(f"{path!r}: meta_json is not valid JSON: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != "fastlstm":
            raise ValueError(f"{path!r} is not a fastlstm model file")
        version = meta.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"{path!r}: invalid format_version {version!r}")
        if version > FORMAT_VERSION:
            raise ValueError(f"{path!r} has format version {version}; this fastlstm "
                             f"({__version__}) reads versions up to {FORMAT_VERSION}")
        spec = meta.get("model")
        shapes = _param_shapes(spec)
        if shapes is None:          # malformed: _build says how
            try:
                _build(spec)
            except ValueError as exc:
                raise ValueError(f"{path!r}: {exc}") from exc
            raise ValueError(f"{path!r}: malformed model description")
        stored = {k[len(_PREFIX):] for k in archive.files if k.startswith(_PREFIX)}
        if stored != set(shapes):
            raise ValueError(f"{path!r}: parameters {sorted(stored)} do not match the model "
                             f"description, which needs {sorted(shapes)}")
        for name, shape in shapes.items():   # headers first: nothing large is read
            got, dtype = _header(archive, _PREFIX + name, path)
            if got != shape:
                raise ValueError(f"{path!r}: parameter {name!r} has shape {got}, "
                                 f"expected {shape}")
            _check_member_size(archive.zip.getinfo(_PREFIX + name + ".npy"),
                               math.prod(shape) * dtype.itemsize, name, path)
        model = _build(spec)
        for name, target in model.params.items():   # read straight into the model
            _read_into(archive, _PREFIX + name, target, name, path)
    return model
