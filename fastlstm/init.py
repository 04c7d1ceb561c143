"""Parameter initialisers (SPEC.md Part A, "Default initialisation").

- ``W`` (I, 4H): Glorot-uniform, U(±sqrt(6 / (I + 4H))), as Keras.
- ``U`` (Hout, 4H): orthogonal over the whole (Hout, 4H) matrix, as Keras'
  ``Orthogonal`` initialiser does for ``recurrent_kernel``: orthonormal rows when
  Hout <= 4H (always without a projection), orthonormal columns when a projection makes
  Hout > 4H; gain 1.
- ``b`` (4H,): zeros, with the forget-gate block set to ``forget_bias``.
- ``peepholes`` (3, H): zeros.
- ``P`` (H, Hout): Glorot-uniform.

All draws come from one ``numpy.random.Generator`` made from ``random_state`` (None, an
int seed, a ``Generator`` or a legacy ``RandomState``), so a seed reproduces a layer.
"""

import numbers

import numpy as np

from . import _threads

__all__ = ["check_random_state", "glorot_uniform", "orthogonal"]


def check_random_state(random_state):
    """Turn ``random_state`` into an object with ``uniform`` and ``standard_normal``."""
    if random_state is None or isinstance(random_state, (numbers.Integral, np.integer)):
        if isinstance(random_state, bool):
            raise TypeError("random_state must be None, an int, a numpy Generator or RandomState")
        if random_state is not None and random_state < 0:
            raise ValueError(f"random_state must be a non-negative int, got {random_state}")
        return np.random.default_rng(random_state)
    if isinstance(random_state, (np.random.Generator, np.random.RandomState)):
        return random_state
    raise TypeError(
        "random_state must be None, an int, a numpy Generator or RandomState, "
        f"got {type(random_state).__name__}"
    )


def glorot_uniform(shape, rng, dtype):
    """U(±sqrt(6 / (fan_in + fan_out))) for a 2-D ``shape = (fan_in, fan_out)``."""
    limit = np.sqrt(6.0 / (shape[0] + shape[1]))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def orthogonal(shape, rng, dtype):
    """A (rows, cols) matrix with orthonormal rows (rows <= cols) or columns, gain 1."""
    rows, cols = shape
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    # on one BLAS thread: the factorisation's bits depend on BLAS's thread count, and a
    # seeded model must be the same under any OMP_NUM_THREADS / OPENBLAS_NUM_THREADS
    with _threads.blas_single_thread(openmp=False):
        q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))  # make the decomposition unique (Keras does the same)
    if rows < cols:
        q = q.T
    return q.astype(dtype)
