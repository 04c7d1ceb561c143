"""fastlstm: fast LSTM inference and training on CPU, no deep-learning framework needed."""

from ._threads import get_n_threads, set_n_threads, show_config
from ._version import __version__
from .layers import LSTM, Bidirectional, LSTMState, MultiLSTM, freeze
from .interop import (from_keras, from_onnx, from_tf1, from_tf1_checkpoint, from_torch,
                      to_keras_weights, to_onnx, to_tf1_checkpoint, to_torch)
from .io import load, save
from . import optim, readout
from ._training import TrainingCache
from .readout import Dense

__all__ = [
    "LSTM",
    "Bidirectional",
    "LSTMState",
    "MultiLSTM",
    "freeze",
    "get_n_threads",
    "set_n_threads",
    "show_config",
    "from_keras",
    "from_onnx",
    "from_tf1",
    "from_tf1_checkpoint",
    "from_torch",
    "to_keras_weights",
    "to_onnx",
    "to_tf1_checkpoint",
    "to_torch",
    "save",
    "load",
    "Dense",
    "TrainingCache",
    "optim",
    "readout",
    "__version__",
]

_ESTIMATORS = ("LSTMRegressor", "LSTMClassifier", "LSTMEncoder")


def __getattr__(name):
    # the scikit-learn estimators load on first use: scikit-learn is an optional extra
    # (pip install fastlstm[sklearn]), so `import fastlstm` works without it
    if name in _ESTIMATORS:
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'fastlstm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_ESTIMATORS))
