"""Exact weight conversion between fastlstm and TF1, Keras, PyTorch and ONNX (SPEC.md §8).

Every converter either reproduces the other framework's results (up to float rounding) or
raises ValueError naming what cannot be represented.  torch and onnx are imported only
inside the functions that need them.
"""

from .keras import from_keras, keras_config, keras_masked_outputs, to_keras_weights
from .onnx import from_onnx, onnx_state, to_onnx
from .tf1 import from_tf1, from_tf1_checkpoint, to_tf1, to_tf1_checkpoint
from .torch import from_torch, to_torch, to_torch_state_dict

__all__ = [
    "from_keras",
    "from_onnx",
    "from_tf1",
    "from_tf1_checkpoint",
    "from_torch",
    "keras_config",
    "keras_masked_outputs",
    "onnx_state",
    "to_keras_weights",
    "to_onnx",
    "to_tf1",
    "to_tf1_checkpoint",
    "to_torch",
    "to_torch_state_dict",
]
