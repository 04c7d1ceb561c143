import numpy as np
import pytest

import fastlstm as fl
from fastlstm import _forward, layers
from fastlstm import reference as ref

TOL = {np.dtype(np.float32): dict(rtol=1e-5, atol=2e-6),
       np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13)}


def tol(dtype):
    return TOL[np.dtype(dtype)]


def assert_grads_close(got, want, dtype):
    """Gradients {name: array} against the reference backward's dict ``want`` (``c0`` and
    ``h0`` against its ``state0``), in ``dtype``.  Gradients sum over many terms: the
    tolerances are 10x ``tol(dtype)``, the absolute one scaled by the gradient's size."""
    t = tol(dtype)
    for name, ana in got.items():
        expected = {"c0": want["state0"][0], "h0": want["state0"][1]}.get(name) \
            if name in ("c0", "h0") else want[name]
        assert ana.dtype == np.dtype(dtype), name
        np.testing.assert_allclose(ana, expected, rtol=t["rtol"] * 10,
                                   atol=t["atol"] * 10 * max(1.0, np.abs(expected).max()),
                                   err_msg=name)


def ref_params(layer):
    """A layer's parameters in float64, for the reference."""
    return {k: np.asarray(v, np.float64) for k, v in layer.params.items()}


def ref_options(layer):
    return dict(cell_clip=layer.cell_clip,
                proj_clip=layer.proj_clip if layer.proj_size else None,
                activation=layer.activation,
                recurrent_activation=layer.recurrent_activation)


def randomize(layer, rng, scale=0.5):
    """Non-default values everywhere (bias, peepholes) so every term is exercised."""
    for name, value in layer.params.items():
        value[...] = rng.normal(scale=scale, size=value.shape)
    return layer


def reference_stack(model):
    """``reference.stack_forward`` items for a MultiLSTM."""
    items = []
    for layer in model.layers:
        if isinstance(layer, fl.Bidirectional):
            items.append(("bidirectional",
                          (ref_params(layer.forward_layer), ref_options(layer.forward_layer)),
                          (ref_params(layer.backward_layer), ref_options(layer.backward_layer))))
        else:
            items.append(("lstm", ref_params(layer), dict(ref_options(layer),
                                                          reverse=layer.reverse)))
    return items


EPS = 1e-6  # central-difference step (float64)


def numeric_grad(loss, arr, eps=EPS):
    """Central differences of the scalar ``loss()`` w.r.t. ``arr`` (perturbed in place)."""
    g = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        orig = arr[idx]
        arr[idx] = orig + eps
        lp = loss()
        arr[idx] = orig - eps
        lm = loss()
        arr[idx] = orig
        g[idx] = (lp - lm) / (2 * eps)
    return g


def rel_err(ana, num):
    scale = max(np.abs(num).max(initial=0), np.abs(ana).max(initial=0), 1e-300)
    return np.abs(ana - num).max(initial=0) / scale


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


__all__ = ["EPS", "numeric_grad", "rel_err", "TOL", "tol", "ref_params", "ref_options", "randomize", "reference_stack", "ref"]


@pytest.fixture
def force(monkeypatch):
    """force(path): run every call on one forward kernel path ("blas", "packed-rows",
    "packed-units", "small"; ``layers._FORCE_PATH``, a test hook); the packed kernel's
    instruction set is reset to the best one afterwards."""
    def set_path(path):
        monkeypatch.setattr(layers, "_FORCE_PATH", path)

    yield set_path
    _forward.packed_isa(-1)


def isa_params():
    """The packed kernel's instruction sets this CPU has, as pytest params."""
    best = _forward.packed_isa(-1)
    names = ["baseline", "avx2", "avx512"]
    return [pytest.param(isa, id=names[isa]) for isa in range(best + 1)]


def path_layer(I, H, dtype, seed, **kw):
    """A layer with a random bias (and peepholes) at scale 0.5, for the path tests."""
    layer = fl.LSTM(I, H, dtype=dtype, random_state=seed, **kw)
    rng = np.random.default_rng(seed + 100)
    layer.b[...] = rng.standard_normal(4 * H) * 0.5
    if layer.peepholes is not None:
        layer.peepholes[...] = rng.standard_normal((3, H)) * 0.5
    return layer
