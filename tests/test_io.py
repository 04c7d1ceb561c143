"""save / load (.npz, no pickle) and pickling of models."""

import copy
import io
import json
import pickle
import struct
import zipfile

import numpy as np
import pytest
from conftest import reference_stack

import fastlstm as fl
from fastlstm import reference as ref
from fastlstm.io import FORMAT_VERSION


def _randomize(model, seed):
    rng = np.random.default_rng(seed)
    model.flat_params[...] = rng.normal(scale=0.5, size=model.n_params)
    return model


def _models():
    return {
        "lstm_all_options": fl.LSTM(5, 4, proj_size=3, peepholes=True, cell_clip=0.5,
                                    proj_clip=0.3, forget_bias=0.7, activation="relu",
                                    recurrent_activation="hard_sigmoid_keras2"),
        "lstm_f64": fl.LSTM(5, 4, dtype=np.float64, activation="linear", cell_clip=0.0),
        "bidirectional": fl.Bidirectional(fl.LSTM(5, 4, peepholes=True),
                                          fl.LSTM(5, 3, recurrent_activation="hard_sigmoid")),
        "stack": fl.MultiLSTM([fl.Bidirectional(fl.LSTM(5, 3), fl.LSTM(5, 3, proj_size=2)),
                               fl.LSTM(5, 4, peepholes=True, proj_size=2),
                               fl.LSTM(2, 3, activation="sigmoid")]),
        "lstm_reverse": fl.LSTM(5, 4, peepholes=True, reverse=True),
        "stack_with_reverse": fl.MultiLSTM([fl.LSTM(5, 3), fl.LSTM(3, 4, reverse=True)]),
    }


def _outputs(model, X, lengths=None):
    Y, state = model(X, lengths=lengths)
    return [Y] + [a for a in _flatten(state)]


def _flatten(state):
    if isinstance(state, fl.LSTMState):
        return [state.c, state.h]
    return [a for s in state for a in _flatten(s)]


def _same_structure(a, b):
    assert type(a) is type(b)
    assert repr(a) == repr(b)
    assert a.dtype == b.dtype
    assert list(a.params) == list(b.params)


@pytest.mark.parametrize("name", list(_models()))
def test_save_load_round_trip(name, tmp_path):
    model = _randomize(_models()[name], 1)
    path = tmp_path / "model.npz"
    fl.save(model, path)
    again = fl.load(path)
    _same_structure(again, model)
    np.testing.assert_array_equal(again.flat_params, model.flat_params)
    X = np.random.default_rng(2).normal(size=(3, 4, 5))
    for a, b in zip(_outputs(again, X, [4, 1, 0]), _outputs(model, X, [4, 1, 0])):
        np.testing.assert_array_equal(a, b)
    # the loaded parameters are live views into the flat buffer
    first = next(iter(again.params.values()))
    assert np.shares_memory(first, again.flat_params)


def test_file_contents_are_plain_and_documented(tmp_path):
    model = _randomize(_models()["bidirectional"], 3)
    fl.save(model, tmp_path / "m")  # NumPy appends .npz
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
        meta = json.loads(str(f["meta_json"][()]))
        # version 1: no layer runs in reverse (older readers read it)
        assert meta["format"] == "fastlstm" and meta["format_version"] == 1
        assert meta["model"]["type"] == "Bidirectional"
        assert meta["model"]["backward"]["recurrent_activation"] == "hard_sigmoid"
        assert sorted(k for k in f.files if k != "meta_json") == \
            sorted("param/" + k for k in model.params)
        np.testing.assert_array_equal(f["param/fw.peepholes"], model.params["fw.peepholes"])
    # file objects work too, compressed or not
    buf = io.BytesIO()
    fl.save(model, buf, compressed=True)
    buf.seek(0)
    np.testing.assert_array_equal(fl.load(buf).flat_params, model.flat_params)


def test_reverse_layers_are_written_as_version_2(tmp_path):
    model = _randomize(_models()["stack_with_reverse"], 4)
    fl.save(model, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
        meta = json.loads(str(f["meta_json"][()]))
    assert meta["format_version"] == FORMAT_VERSION == 2
    assert "reverse" not in meta["model"]["layers"][0]
    assert meta["model"]["layers"][1]["reverse"] is True
    assert fl.load(tmp_path / "m.npz").layers[1].reverse


def _rewrite(path, out, edit):
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta_json"][()]))
    edit(arrays, meta)
    arrays["meta_json"] = np.array(json.dumps(meta))
    np.savez(out, **arrays)
    return out


@pytest.mark.parametrize("edit, match", [
    (lambda a, m: m.update(format_version=FORMAT_VERSION + 1), "reads versions up to"),
    (lambda a, m: m.update(format="other"), "not a fastlstm model"),
    (lambda a, m: m.update(format_version=True), "invalid format_version"),
    (lambda a, m: a.pop("param/0.W"), "do not match the model description"),
    (lambda a, m: a.update({"param/extra": np.zeros(2)}), "do not match"),
    (lambda a, m: a.update({"param/0.W": np.zeros((5, 3))}), "has shape"),
    (lambda a, m: a.update({"param/0.W": a["param/0.W"].astype(np.float64)}), "dtype"),
    (lambda a, m: m["model"]["layers"][0].update(type="GRU"), "unknown model type"),
    (lambda a, m: m["model"]["layers"][0].update(hidden_size=-1), "invalid LSTM"),
    (lambda a, m: m["model"]["layers"][0].update(activation="elu"), "activation"),
    (lambda a, m: m.pop("model"), r"bad\.npz.*: model: malformed model description"),
    (lambda a, m: m["model"]["layers"][0].update(n_threads=0), "n_threads"),
])
def test_load_rejects_bad_files(edit, match, tmp_path):
    model = fl.MultiLSTM([fl.LSTM(5, 4), fl.LSTM(4, 3)])
    fl.save(model, tmp_path / "good.npz")
    bad = _rewrite(tmp_path / "good.npz", tmp_path / "bad.npz", edit)
    with pytest.raises(ValueError, match=match):
        fl.load(bad)


def test_load_damaged_files_raise_value_error(tmp_path):
    """Whatever the damage, load raises ValueError (a missing file FileNotFoundError)."""
    model = fl.MultiLSTM([fl.LSTM(5, 4, random_state=0), fl.LSTM(4, 3, random_state=1)])
    fl.save(model, tmp_path / "ok.npz")
    fl.save(model, tmp_path / "okz.npz", compressed=True)
    raw = (tmp_path / "ok.npz").read_bytes()
    rawz = bytearray((tmp_path / "okz.npz").read_bytes())
    rawz[len(rawz) // 3:len(rawz) // 3 + 40] = bytes(40)
    member = bytearray(raw)
    at = raw.find(b"\x93NUMPY", raw.find(b"param/0.W.npy"))
    member[at:at + 6] = b"XXXXXX"
    spec = json.dumps(fl.io._spec(model))
    deep = ('{"format": "fastlstm", "format_version": 1, "model": '
            + '{"type": "MultiLSTM", "layers": [' * 5000 + spec + "]}" * 5000 + "}")
    np.savez(tmp_path / "deep.npz", meta_json=np.array(deep))
    for name, data in (("empty", b""), ("truncated", raw[:len(raw) // 2]),
                       ("crc", bytes(rawz)), ("member", bytes(member))):
        (tmp_path / f"{name}.npz").write_bytes(data)
    for name in ("empty", "truncated", "crc", "member", "deep"):
        with pytest.raises(ValueError, match="not a readable fastlstm model file|not a"):
            fl.load(tmp_path / f"{name}.npz")
    with pytest.raises(FileNotFoundError):
        fl.load(tmp_path / "missing.npz")
    # a path without the .npz that save appended
    again = fl.load(str(tmp_path / "ok"))
    np.testing.assert_array_equal(again.flat_params, model.flat_params)


def test_load_checks_parameters_before_building(tmp_path):
    """A description declaring a huge model without its parameters, or with parameters of
    the wrong shapes, is refused before any layer is built (no memory spent on it)."""
    import tracemalloc

    meta = dict(format="fastlstm", format_version=1, model=fl.io._spec(fl.LSTM(3, 2)))
    meta["model"].update(input_size=4000, hidden_size=4000)
    small = {"param/W": np.zeros((3, 8), np.float32), "param/U": np.zeros((2, 8), np.float32),
             "param/b": np.zeros(8, np.float32)}
    for name, params, match in (("declared", {}, "do not match the model description"),
                                ("shapes", small, "has shape")):
        np.savez(tmp_path / f"{name}.npz", meta_json=np.array(json.dumps(meta)), **params)
        tracemalloc.start()
        try:
            with pytest.raises(ValueError, match=match):
                fl.load(tmp_path / f"{name}.npz")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 10 * 2**20           # the model would take 8 * 4000 * 16000 bytes


def _with_member(raw, name, data):
    """A copy of the archive ``raw`` with member ``name`` replaced by ``data``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, data if info.filename == name else src.read(info))
    return out.getvalue()


def test_load_reads_headers_before_data():
    """A parameter whose .npy header declares a huge array, or whose data decompresses to
    one, is refused from its header: no allocation (a 16 Gi-element header raised
    MemoryError; a 256 KiB file decompressed 256 MiB before its shape was checked)."""
    import tracemalloc

    buf = io.BytesIO()
    fl.save(fl.LSTM(2, 2, random_state=0), buf)
    raw = buf.getvalue()
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False,
                                                "shape": (1 << 34,)})
    huge_header = _with_member(raw, "param/W.npy", head.getvalue() + bytes(64))
    big = io.BytesIO()
    np.save(big, np.zeros(1 << 25, np.float32))          # 128 MiB of zeros, deflated small
    bomb = _with_member(raw, "param/W.npy", big.getvalue())
    assert len(bomb) < 1 << 20
    for data in (huge_header, bomb):
        tracemalloc.start()
        try:
            with pytest.raises(ValueError, match="parameter 'W' has shape"):
                fl.load(io.BytesIO(data))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 10 * 2**20


def test_load_reads_into_the_model_without_a_second_copy(tmp_path):
    """load reads each parameter straight into the model's buffer, in pieces: its peak is
    about the model itself (it held every parameter twice, and a zip member's readinto
    reads the whole member into a temporary first); short data is a ValueError."""
    import tracemalloc

    from fastlstm.layers import _UNSET

    model = fl.LSTM(512, 1024, random_state=0)
    fl.save(model, tmp_path / "m.npz", compressed=True)
    peaks = []
    for make in (lambda: fl.LSTM(512, 1024, random_state=_UNSET),   # the model alone
                 lambda: fl.load(tmp_path / "m.npz")):
        tracemalloc.start()
        try:
            again = make()
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    np.testing.assert_array_equal(again.flat_params, model.flat_params)
    size = model.flat_params.nbytes          # 25 MB
    assert peaks[1] - peaks[0] < 0.25 * size, (peaks, size)
    raw = (tmp_path / "m.npz").read_bytes()
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        member = z.read("param/U.npy")
    short = _with_member(raw, "param/U.npy", member[:-100])
    with pytest.raises(ValueError, match="parameter 'U' is truncated"):
        fl.load(io.BytesIO(short))


def test_load_damaged_zip_and_npy_headers_raise_value_error():
    """Damage that zipfile or NumPy report with other exceptions (an unknown compression
    method: NotImplementedError; the encrypted flag: RuntimeError; a .npy header cut
    inside its dict: tokenize.TokenError) is a ValueError too."""
    buf = io.BytesIO()
    fl.save(fl.LSTM(3, 4, random_state=0), buf)
    raw = buf.getvalue()
    cd = raw.rfind(b"PK\x01\x02")            # the last central-directory entry

    def patched(offset, value):
        r = bytearray(raw)
        r[offset:offset + 2] = struct.pack("<H", value)
        return bytes(r)

    hdr = b"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 16"
    cut = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr) + 1) + hdr + b"\n"
    for data in (patched(cd + 10, 99), patched(cd + 8, 1), patched(cd + 6, 99),
                 _with_member(raw, "param/W.npy", cut)):
        with pytest.raises(ValueError):
            fl.load(io.BytesIO(data))


def test_load_damaged_end_record_is_a_value_error(tmp_path):
    """A damaged end-of-archive record makes zipfile seek to a negative offset (OSError
    EINVAL), which load passed on as if the file system had failed; missing files and
    directories still raise the file system's own errors."""
    path = tmp_path / "a.npz"
    fl.save(fl.LSTM(3, 2, random_state=0), path)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x10          # the central directory's offset, in the end record
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="not a readable fastlstm model file"):
        fl.load(bad)
    with pytest.raises(FileNotFoundError):
        fl.load(tmp_path / "missing.npz")
    with pytest.raises(IsADirectoryError):
        fl.load(tmp_path)


def test_load_never_unpickles(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, meta_json=np.array([{"format": "fastlstm"}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        fl.load(path)
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="no meta_json"):
        fl.load(tmp_path / "plain.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single .npy"):
        fl.load(tmp_path / "one.npy")
    with pytest.raises(TypeError, match="LSTM, Bidirectional or MultiLSTM"):
        fl.save(object(), tmp_path / "x.npz")


# ---------------------------------------------------------------------------------------
# pickling


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
@pytest.mark.parametrize("name", list(_models()))
def test_pickle_round_trip(name, how):
    model = _randomize(_models()[name], 4)
    twin = pickle.loads(pickle.dumps(model)) if how == "pickle" else copy.deepcopy(model)
    _same_structure(twin, model)
    X = np.random.default_rng(5).normal(size=(2, 3, 5))
    for a, b in zip(_outputs(twin, X), _outputs(model, X)):
        np.testing.assert_array_equal(a, b)
    # every named parameter, also of inner layers, is again a view into one flat buffer
    for value in twin.params.values():
        assert np.shares_memory(value, twin.flat_params)
    assert not np.shares_memory(twin.flat_params, model.flat_params)
    # writing through the flat buffer changes what the model computes, as in the original
    twin.flat_params[...] = 0
    model.flat_params[...] = 0
    np.testing.assert_array_equal(twin(X)[0], model(X)[0])


@pytest.mark.parametrize("name", list(_models()))
def test_copy_is_independent_and_takes_no_layers(name):
    # copy.copy is copy.deepcopy: the pickle route re-adopted a container's layers,
    # taking them from the original (another container could then take them from the
    # live original, whose optimiser trained a stale copy), and a buffer-sharing copy
    # could not keep the rule that a layer belongs to one container either
    import gc

    for rebind in (False, True):
        model = _models()[name]
        twin = copy.copy(model)
        assert not np.shares_memory(twin.flat_params, model.flat_params)
        X = np.random.default_rng(1).normal(size=(2, 3, model.input_size))
        np.testing.assert_array_equal(twin(X)[0], model(X)[0])
        if rebind:               # model = copy.copy(model): the copy owns its own layers
            model, twin = twin, None
        else:
            twin = None
        gc.collect()
        for child in model._children():
            assert child._owner() is model
            with pytest.raises(ValueError, match="already belongs"):
                fl.MultiLSTM([child])
        for value in model.params.values():    # the buffer still backs every layer
            assert np.shares_memory(value, model.flat_params)
    if isinstance(model, fl.LSTM):
        inside = fl.MultiLSTM([model])
        loose = copy.copy(model)               # a copy of a held layer is its own
        assert loose._owner is None and model._owner() is inside
        assert not np.shares_memory(loose.flat_params, inside.flat_params)


@pytest.mark.parametrize("name", list(_models()))
def test_unpickle_from_read_only_out_of_band_buffers(name):
    """Pickle protocol 5 with out-of-band buffers handed back read-only (bytes, shared
    memory, object stores): the model loads, trains in its own copy (it raised
    "assignment destination is read-only")."""
    model = _models()[name]
    bufs = []
    data = pickle.dumps(model, protocol=5, buffer_callback=bufs.append)
    assert bufs
    again = pickle.loads(data, buffers=[bytes(b.raw()) for b in bufs])
    assert again.flat_params.flags.writeable
    np.testing.assert_array_equal(again.flat_params, model.flat_params)
    X = np.random.default_rng(0).normal(size=(2, 4, model.input_size))
    np.testing.assert_array_equal(again(X)[0], model(X)[0])


def test_bidirectional_halves_keep_their_own_reverse_flag(tmp_path):
    """A Bidirectional's halves keep their own reverse flag through save / load (a
    reversed backward half came back forward: calling it alone ran the other way)."""
    bi = fl.Bidirectional(fl.LSTM(3, 4, random_state=0), fl.LSTM(3, 4, random_state=1))
    bi.backward_layer.reverse = True
    fl.save(bi, tmp_path / "bi.npz")
    again = fl.load(tmp_path / "bi.npz")
    assert again.backward_layer.reverse and not again.forward_layer.reverse
    X = np.random.default_rng(0).normal(size=(2, 5, 3))
    np.testing.assert_array_equal(again.backward_layer(X)[0], bi.backward_layer(X)[0])
    np.testing.assert_array_equal(again(X)[0], bi(X)[0])


def test_pickled_stack_layers_stay_in_the_joint_buffer():
    model = _randomize(_models()["stack"], 6)
    twin = pickle.loads(pickle.dumps(model))
    inner = twin.layers[1]
    assert np.shares_memory(inner.W, twin.flat_params)
    inner.W[...] = 0  # through the layer ...
    assert not twin.params["1.W"].any()  # ... is seen by the stack
    # the kernels use the zeroed weights: the stack agrees with the reference built from
    # the stack's named parameters
    X = np.random.default_rng(7).normal(size=(2, 3, 5))
    want, _ = ref.stack_forward(X, reference_stack(twin))
    np.testing.assert_allclose(twin(X)[0], want, rtol=1e-5, atol=2e-6)


def test_pickle_keeps_training_buffers_consistent():
    model = _randomize(_models()["stack"], 8)
    if not hasattr(model, "backward"):
        pytest.skip("this fastlstm has no training API")
    twin = pickle.loads(pickle.dumps(model))
    X = np.random.default_rng(9).normal(size=(2, 3, 5))
    for m in (model, twin):
        Y, _, cache = m.forward(X)
        m.backward(np.ones_like(Y), cache)
    np.testing.assert_array_equal(twin.flat_grads, model.flat_grads)
    for value in twin.grads.values():
        assert np.shares_memory(value, twin.flat_grads)


def _npy_bytes(arr=None, header=None):
    b = io.BytesIO()
    if arr is not None:
        np.lib.format.write_array(b, arr)
    else:
        np.lib.format.write_array_header_1_0(b, header)
    return b.getvalue()


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_load_refuses_headers_without_their_data_before_building(compression, monkeypatch):
    """A 2 KB file whose headers declare LSTM(1, 200000) and hold no data: a ValueError
    before the model is built (it tried to allocate 596 GiB: MemoryError)."""
    spec = dict(type="LSTM", input_size=1, hidden_size=200000, proj_size=None,
                peepholes=False, cell_clip=None, proj_clip=None, forget_bias=1.0,
                activation="tanh", recurrent_activation="sigmoid", dtype="float32")
    meta = dict(format="fastlstm", format_version=1, fastlstm_version="0.1.0", model=spec)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as z:
        z.writestr("meta_json.npy", _npy_bytes(np.array(json.dumps(meta))))
        for name, shape in {"W": (1, 800000), "U": (200000, 800000), "b": (800000,)}.items():
            z.writestr(f"param/{name}.npy", _npy_bytes(header={
                "descr": "<f4", "fortran_order": False, "shape": shape}))
    assert len(buf.getvalue()) < 4096
    built = []
    monkeypatch.setattr(fl.io, "_build", lambda *a: built.append(a))
    buf.seek(0)
    with pytest.raises(ValueError, match="parameter 'W' is truncated: its header declares"):
        fl.load(buf)
    assert not built


def test_load_reads_highly_compressed_parameters():
    """The size check allows what deflate can really do (all-zero weights)."""
    model = fl.LSTM(200, 400, random_state=0)
    model.W[...] = 0
    model.U[...] = 0
    buf = io.BytesIO()
    fl.save(model, buf, compressed=True)
    assert len(buf.getvalue()) < model.n_params * 4 / 100
    buf.seek(0)
    np.testing.assert_array_equal(fl.load(buf).flat_params, model.flat_params)


def test_unpickle_state_written_with_plain_attributes(monkeypatch):
    """Pickles whose state holds the sizes, options and parts under their public names
    (as before they became checked properties) still load and run."""
    stack = _randomize(_models()["stack"], 11)
    new_getstate = fl.layers._Module.__getstate__

    def old_getstate(self):
        state = new_getstate(self)
        for name in type(self)._PROPERTIES:
            state[name] = state.pop("_" + name)
        if "layers" in state:
            state["layers"] = list(state["layers"])
        return state

    monkeypatch.setattr(fl.layers._Module, "__getstate__", old_getstate)
    data = pickle.dumps(stack)
    monkeypatch.undo()
    assert b"_hidden_size" not in data and b"hidden_size" in data
    old = pickle.loads(data)
    X = np.random.default_rng(12).normal(size=(2, 3, 5))
    np.testing.assert_array_equal(old(X)[0], stack(X)[0])
    assert isinstance(old.layers, tuple)
    assert old.layers[1].proj_size == 2 and old.layers[0].backward_layer.proj_size == 2


def test_load_of_a_file_that_is_not_an_archive_closes_it(tmp_path):
    """np.load left its own handle open when the zip archive failed to open (a
    ResourceWarning when collected); load opens the file itself."""
    import gc
    import warnings
    path = tmp_path / "truncated.npz"
    fl.save(fl.LSTM(3, 4), path)
    path.write_bytes(path.read_bytes()[:200])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="not a readable fastlstm model file"):
            fl.load(path)
        gc.collect()
    assert not [w for w in seen if issubclass(w.category, ResourceWarning)]


def test_n_threads_round_trips(tmp_path):
    # a run-time setting, kept (an optional field: older readers ignore it)
    model = fl.MultiLSTM([fl.LSTM(3, 4, n_threads=1), fl.LSTM(4, 2),
                          fl.Bidirectional(fl.LSTM(2, 2, n_threads=-1), fl.LSTM(2, 2))])
    fl.save(model, tmp_path / "m.npz")
    again = fl.load(tmp_path / "m.npz")
    assert [layer.n_threads for layer in again.layers[:2]] == [1, None]
    assert again.layers[2].forward_layer.n_threads == -1
    assert again.layers[2].backward_layer.n_threads is None
    assert repr(again.layers[0]) == "LSTM(3, 4, n_threads=1)"
