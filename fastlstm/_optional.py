"""Imports of optional packages with an error that says which extra brings them."""

import importlib

# module -> (what pip calls it, the fastlstm extra that installs it)
_PACKAGES = {"onnx": ("onnx", "onnx"), "torch": ("torch", "torch"),
             "sklearn": ("scikit-learn", "sklearn")}


def need(module, what):
    """Import ``module`` for ``what`` (e.g. "to_onnx"), or raise an ImportError naming the
    package and the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pip_name, extra = _PACKAGES[module]
        if getattr(exc, "name", None) not in (module, None) or \
                not isinstance(exc, ModuleNotFoundError):
            raise ImportError(f"{what} needs {pip_name}, which is installed but failed to "
                              f"import: {exc}") from exc
        raise ImportError(f"{what} needs {pip_name}, which is not installed: pip install "
                          f"'fastlstm[{extra}]' (or: pip install {pip_name})") from exc
