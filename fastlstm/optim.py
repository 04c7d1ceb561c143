"""Optimisers over flat parameter buffers: SGD (momentum, Nesterov), Adam, AdamW, and
global gradient-norm clipping.

Every fastlstm model keeps its parameters in one flat buffer (``flat_params``) and its
gradients in another (``flat_grads``), so an optimiser step is one vectorised NumPy
update per model, whatever the number of layers.  An optimiser takes a model, or a list
of models (e.g. ``[rnn, readout]``), or ``(params, grads)`` pairs of 1-D arrays; it keeps
its state (momentum, moments) in arrays of the same dtype.

The update rules are PyTorch's (``torch.optim.SGD``, ``Adam``, ``AdamW``), so
hyper-parameters carry over; ``weight_decay`` in ``SGD`` and ``Adam`` is the classic L2
term added to the gradient, in ``AdamW`` it is decoupled (``p -= lr * wd * p``).
"""

import copy
import math
import numbers

import numpy as np

from ._scalars import unwrap

__all__ = ["SGD", "Adam", "AdamW", "clip_grad_norm"]


def _pairs(params, models=None):
    """[(param, grad)] 1-D float arrays from a model, a list of models or of pairs; the
    model each pair came from (None for a pair) is appended to ``models``."""
    if hasattr(params, "flat_params") or (isinstance(params, tuple) and len(params) == 2
                                          and isinstance(params[0], np.ndarray)):
        params = [params]
    try:
        items = list(params)
    except TypeError:
        raise TypeError("params must be a model (with flat_params and flat_grads), a list "
                        f"of models, or (params, grads) pairs of arrays; got "
                        f"{type(params).__name__}") from None
    if not items:
        raise ValueError("params is empty: give at least one model or (params, grads) pair")
    out = []
    for k, item in enumerate(items):
        if hasattr(item, "flat_params") and hasattr(item, "flat_grads"):
            if getattr(item, "frozen", False) is True:
                raise ValueError(f"params[{k}] is a frozen model (fastlstm.freeze): its "
                                 "parameters are read-only; train the model it was frozen "
                                 "from")
            p, g = item.flat_params, item.flat_grads
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            p, g = item
        else:
            raise TypeError(f"params[{k}] must be a model or a (params, grads) pair, "
                            f"got {type(item).__name__}")
        for name, a in (("params", p), ("grads", g)):
            if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind != "f" \
                    or not a.flags.c_contiguous or not a.flags.writeable:
                raise TypeError(f"params[{k}]: {name} must be a writable, contiguous 1-D "
                                f"float array")
        if p.shape != g.shape or p.dtype != g.dtype:
            raise ValueError(f"params[{k}]: params {p.shape} {p.dtype} and grads {g.shape} "
                             f"{g.dtype} must have the same shape and dtype")
        for j, (p0, g0) in enumerate(out):
            if np.may_share_memory(p, p0) or np.may_share_memory(g, g0):
                raise ValueError(f"params[{k}] and params[{j}] share parameters (the same "
                                 "model twice, or a layer and a model holding it): they "
                                 "would be updated twice per step")
        out.append((p, g))
        if models is not None:
            models.append(item if hasattr(item, "flat_params") else None)
    return out


def _check_number(value, name, low=0.0, low_inclusive=True, high=None):
    value = unwrap(value)   # a stored scalar (np.load)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if value < low or (not low_inclusive and value == low) or (high is not None and value >= high):
        rng = f"{'[' if low_inclusive else '('}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name} must be in {rng}, got {value}")
    return value


def clip_grad_norm(params, max_norm):
    """Scale all gradients in place so that their global L2 norm is at most ``max_norm``.

    params: as for the optimisers.  Returns the norm before clipping (as PyTorch's
    ``clip_grad_norm_``; the scale is ``max_norm / (norm + 1e-6)`` when it is below 1).
    A non-finite norm is returned as is and leaves the gradients unchanged.
    ``max_norm=inf`` only measures the norm (as torch).
    """
    if not (isinstance(unwrap(max_norm), numbers.Real) and unwrap(max_norm) == np.inf):
        max_norm = _check_number(max_norm, "max_norm")
    pairs = _pairs(params)
    with np.errstate(over="ignore", under="ignore"):
        total = float(np.sqrt(sum(float(np.dot(g, g)) for _, g in pairs)))
    if (not np.isfinite(total) or total < 1e-15) and \
            all(np.isfinite(g).all() for _, g in pairs):
        # finite gradients whose sum of squares overflowed (float32 from a norm of ~1.8e19
        # on) or lost precision to underflow (float32 squares below ~1e-38): the same sum
        # on gradients scaled by their largest magnitude
        top = max(float(np.abs(g).max(initial=0.0)) for _, g in pairs)
        if top > 0:
            total = top * float(np.sqrt(sum(float(np.dot(h, h)) for h in
                                            (g.astype(np.float64) / top for _, g in pairs))))
    if np.isfinite(total) and max_norm < total + 1e-6:
        # scale = max_norm / (total + 1e-6) as mantissa * 2^exponent: near the ends of
        # the range the scale itself is below the normal numbers (of float32 or even of
        # float64) and would round to a subnormal or 0
        m, e = math.frexp(total + 1e-6)
        mantissa, exponent = math.frexp(max_norm / m)
        exponent -= e
        scale = math.ldexp(mantissa, exponent)
        for _, g in pairs:
            if scale >= np.finfo(g.dtype).tiny:
                g *= g.dtype.type(scale)          # as torch: one multiplication
            else:
                g *= g.dtype.type(mantissa)       # then the power of two, exactly
                np.ldexp(g, exponent, out=g)
    return total


def _check_bool(value, name):
    value = unwrap(value)
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _check_betas(betas):
    betas = unwrap(betas)
    if isinstance(betas, np.ndarray):
        betas = betas.tolist()
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair of floats in [0, 1), got {betas!r}")
    return (_check_number(betas[0], "betas[0]", high=1.0),
            _check_number(betas[1], "betas[1]", high=1.0))


class _Optimizer:
    _hyper = ()
    # hyper-parameter checks, run whenever one is set (a learning-rate schedule assigns
    # lr between steps), as in the constructor
    _checks = {"lr": lambda v: _check_number(v, "lr")}

    def __init__(self, params, lr):
        self._models = []
        self._pairs = _pairs(params, self._models)
        self.lr = lr
        self.n_steps = 0

    def __setattr__(self, name, value):
        check = type(self)._checks.get(name)
        object.__setattr__(self, name, value if check is None else check(value))

    def _live(self):
        """The (param, grad) pairs, following a model whose buffers have moved since the
        optimiser was made (a layer put into a MultiLSTM or Bidirectional afterwards
        trains inside the container's buffers)."""
        for k, model in enumerate(self._models):
            if model is None:
                continue
            p, g = model.flat_params, model.flat_grads
            old = self._pairs[k][0]
            if p is not old or g is not self._pairs[k][1]:
                if p.shape != old.shape or p.dtype != old.dtype:
                    raise ValueError(f"params[{k}]: the model's parameters changed from "
                                     f"{old.shape} {old.dtype} to {p.shape} {p.dtype}; make "
                                     "a new optimiser")
                self._pairs[k] = (p, g)
        return self._pairs

    def zero_grad(self):
        """Set every gradient buffer to 0."""
        for _, g in self._live():
            g[...] = 0

    def _slots(self):
        return {}

    def state_dict(self):
        """A dict of copies: hyper-parameters, step count and per-buffer state arrays."""
        return {
            "optimizer": type(self).__name__,
            "hyper": {name: getattr(self, name) for name in ("lr",) + self._hyper},
            "n_steps": self.n_steps,
            "state": {name: [a.copy() for a in arrays] for name, arrays in self._slots().items()},
        }

    def load_state_dict(self, state):
        """Restore what ``state_dict`` returned (the same kind of optimiser on buffers of
        the same shapes and dtypes)."""
        if not isinstance(state, dict) or state.get("optimizer") != type(self).__name__:
            got = state.get("optimizer") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state must be a {type(self).__name__} state_dict, got {got!r}")
        n_steps = unwrap(state.get("n_steps"))       # a 0-d array too (np.load)
        for key, value, kind in (("hyper", state.get("hyper"), dict),
                                 ("n_steps", n_steps, (numbers.Integral, np.integer)),
                                 ("state", state.get("state"), dict)):
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"state[{key!r}] is missing or not "
                                 + ("an int" if key == "n_steps" else "a dict"))
        if n_steps < 0:
            raise ValueError(f"state['n_steps'] must be >= 0, got {n_steps}")
        unknown = set(state["hyper"]) - set(("lr",) + self._hyper)
        if unknown:
            raise ValueError(f"state['hyper'] holds {sorted(unknown)}, which "
                             f"{type(self).__name__} does not have")
        for name, saved in state["state"].items():
            if not isinstance(saved, (list, tuple)) or not all(
                    isinstance(a, np.ndarray) and a.dtype.kind in "biuf" for a in saved):
                raise TypeError(f"state[{name!r}] must be a list of real arrays, one per "
                                "buffer")
            if name == "exp_avg_sq" and not all(np.all(a >= 0) for a in saved):
                raise ValueError("state['exp_avg_sq'] must hold non-negative numbers "
                                 "(squared-gradient averages); it holds negative or NaN "
                                 "values")
            # a slot is empty when the saved hyper-parameters do not use it (SGD without
            # momentum has no momentum buffers), else it holds one array per buffer
            if len(saved) not in (0, len(self._pairs)):
                raise ValueError(f"state[{name!r}] has {len(saved)} buffers, this optimiser "
                                 f"has {len(self._pairs)}")
            for k, ((p, _), src) in enumerate(zip(self._pairs, saved)):
                if np.shape(src) != p.shape:
                    raise ValueError(f"state[{name!r}][{k}] has shape {np.shape(src)}, "
                                     f"expected {p.shape}")
        # built aside and adopted only when complete: a refused state changes nothing
        new = copy.copy(self)
        for name, value in state["hyper"].items():
            setattr(new, name, tuple(value) if isinstance(value, list) else value)
        new._check_hyper()
        new.n_steps = int(n_steps)
        new._alloc()
        slots = new._slots()
        if set(state["state"]) != set(slots):
            raise ValueError(f"state holds {sorted(state['state'])}, expected {sorted(slots)}")
        for name, arrays in slots.items():
            # a buffer saved empty is one never stepped (momentum set after the last
            # step): zeros, as allocated; a saved buffer the hyper-parameters do not use
            # now (momentum switched off for a while) is kept, as the optimiser that saved
            # it kept it, for when they use it again
            saved = state["state"][name]
            if saved and not arrays:
                arrays.extend(np.array(src, dtype=p.dtype)
                              for (p, _), src in zip(new._pairs, saved))
            elif saved:
                for dst, src in zip(arrays, saved):
                    dst[...] = src
        self.__dict__.update(new.__dict__)

    def _check_hyper(self):
        """Checks between hyper-parameters (each is checked alone when set)."""

    def __repr__(self):
        hyper = ", ".join(f"{n}={getattr(self, n)!r}" for n in ("lr",) + self._hyper)
        return f"{type(self).__name__}({hyper})"


class SGD(_Optimizer):
    """Stochastic gradient descent, optionally with momentum / Nesterov momentum.

    Per step (``torch.optim.SGD`` with dampening 0): ``d = g + weight_decay * p``;
    with momentum ``buf = momentum * buf + d`` and ``d = buf`` (or ``d + momentum * buf``
    with ``nesterov``); ``p -= lr * d``.
    """

    _hyper = ("momentum", "nesterov", "weight_decay")
    _checks = dict(_Optimizer._checks,
                   momentum=lambda v: _check_number(v, "momentum", high=1.0),
                   nesterov=lambda v: _check_bool(v, "nesterov"),
                   weight_decay=lambda v: _check_number(v, "weight_decay"))

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr)
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self._check_hyper()
        self._alloc()

    def _check_hyper(self):
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")

    def _alloc(self):
        """Zeroed state and scratch buffers for the current hyper-parameters."""
        self._buf = [np.zeros_like(p) for p, _ in self._pairs] if self.momentum else []
        self._decayed = [np.empty_like(p) for p, _ in self._pairs] if self.weight_decay else []
        self._look = [np.empty_like(p) for p, _ in self._pairs] if self.nesterov else []

    def _grow(self):
        """Buffers for hyper-parameters set after construction (a momentum buffer starts
        at zero, as torch's does on its first step)."""
        n = len(self._pairs)
        if self.momentum and len(self._buf) != n:
            self._buf = [np.zeros_like(p) for p, _ in self._pairs]
        if self.weight_decay and len(self._decayed) != n:
            self._decayed = [np.empty_like(p) for p, _ in self._pairs]
        if self.nesterov and len(self._look) != n:
            self._look = [np.empty_like(p) for p, _ in self._pairs]

    def _slots(self):
        return {"momentum_buffer": self._buf}

    def step(self):
        """One update of every parameter from its current gradient."""
        self._check_hyper()
        self._grow()
        for k, (p, g) in enumerate(self._live()):
            dt = p.dtype.type
            d = g
            if self.weight_decay:
                d = self._decayed[k]
                np.multiply(p, dt(self.weight_decay), out=d)
                d += g
            if self.momentum:
                buf = self._buf[k]
                buf *= dt(self.momentum)
                buf += d
                if self.nesterov:
                    look = self._look[k]
                    np.multiply(buf, dt(self.momentum), out=look)
                    look += d
                    d = look
                else:
                    d = buf
            p -= dt(self.lr) * d
        self.n_steps += 1


class Adam(_Optimizer):
    """Adam (``torch.optim.Adam``); ``weight_decay`` is an L2 term added to the gradient.

    Per step t: ``g += weight_decay * p``; ``m = b1 m + (1 - b1) g``;
    ``v = b2 v + (1 - b2) g^2``; ``p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)``.
    With ``decoupled_weight_decay=True`` it is AdamW: ``p -= lr * weight_decay * p`` first,
    and the gradient is left alone.
    """

    _hyper = ("betas", "eps", "weight_decay", "decoupled_weight_decay")
    _checks = dict(_Optimizer._checks, betas=_check_betas,
                   eps=lambda v: _check_number(v, "eps"),
                   weight_decay=lambda v: _check_number(v, "weight_decay"),
                   decoupled_weight_decay=lambda v: _check_bool(v, "decoupled_weight_decay"))

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False):
        super().__init__(params, lr)
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.decoupled_weight_decay = decoupled_weight_decay
        self._alloc()

    def _alloc(self):
        """Zeroed state and scratch buffers for the current hyper-parameters."""
        self._m = [np.zeros_like(p) for p, _ in self._pairs]
        self._v = [np.zeros_like(p) for p, _ in self._pairs]
        self._tmp = [np.empty_like(p) for p, _ in self._pairs]
        self._tmp2 = [np.empty_like(p) for p, _ in self._pairs] if self.weight_decay else []

    def _slots(self):
        return {"exp_avg": self._m, "exp_avg_sq": self._v}

    def step(self):
        """One update of every parameter from its current gradient."""
        if self.weight_decay and len(self._tmp2) != len(self._pairs):   # set after building
            self._tmp2 = [np.empty_like(p) for p, _ in self._pairs]
        pairs = self._live()            # may refuse: before anything changes
        self.n_steps += 1
        b1, b2 = self.betas
        t = self.n_steps
        bc1 = 1.0 - b1 ** t
        bc2_sqrt = np.sqrt(1.0 - b2 ** t)
        for k, (p, g) in enumerate(pairs):
            dt = p.dtype.type
            m, v, tmp = self._m[k], self._v[k], self._tmp[k]
            if self.weight_decay:
                if self.decoupled_weight_decay:
                    p *= dt(1.0 - self.lr * self.weight_decay)
                else:
                    g2 = self._tmp2[k]
                    np.multiply(p, dt(self.weight_decay), out=g2)
                    g2 += g
                    g = g2
            m *= dt(b1)
            np.multiply(g, dt(1.0 - b1), out=tmp)
            m += tmp
            v *= dt(b2)
            np.multiply(g, g, out=tmp)
            tmp *= dt(1.0 - b2)
            v += tmp
            np.sqrt(v, out=tmp)
            tmp *= dt(1.0 / bc2_sqrt)
            tmp += dt(self.eps)
            np.divide(m, tmp, out=tmp)
            tmp *= dt(self.lr / bc1)
            p -= tmp


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW``; default weight_decay 0.01)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled_weight_decay=True)

    def __repr__(self):        # the arguments AdamW takes (decoupled decay is its own)
        hyper = ", ".join(f"{n}={getattr(self, n)!r}" for n in ("lr",) + self._hyper
                          if n != "decoupled_weight_decay")
        return f"AdamW({hyper})"
