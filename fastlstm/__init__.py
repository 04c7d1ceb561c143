"""fastlstm: fast LSTM inference and training on CPU, no deep-learning framework needed."""

from ._threads import get_n_threads, set_n_threads, show_config
from ._version import __version__
from .layers import LSTM, Bidirectional, LSTMState, MultiLSTM

__all__ = [
    "LSTM",
    "Bidirectional",
    "LSTMState",
    "MultiLSTM",
    "get_n_threads",
    "set_n_threads",
    "show_config",
    "__version__",
]
