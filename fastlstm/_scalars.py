"""Scalar options given as 0-d arrays (what ``np.load`` returns for a stored scalar, as in
``golden/``): the checks see the NumPy scalar inside."""

import numpy as np


def unwrap(value):
    """The item of a 0-d NumPy array, else ``value`` itself."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value[()]
    return value
