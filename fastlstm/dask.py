"""Batch inference on Dask arrays (optional extra ``dask``: ``pip install fastlstm[dask]``).

``predict_dask(model_or_estimator, X)`` maps a fitted fastlstm estimator (or a bare
``LSTM`` / ``Bidirectional`` / ``MultiLSTM``) over a Dask array chunked along the sample
axis and returns a lazy Dask array.  Each task runs the model on its chunk with
``n_threads`` OpenMP threads (1 by default: Dask already runs one task per worker thread)
and BLAS held to one thread, so that workers never oversubscribe their cores.

Estimators predict in fixed batches of samples (``_inference_batch_size``); the sample
chunks are aligned to those batches, so the result is bit-identical to
``estimator.predict(X.compute())``.  A bare model computes each chunk as one batch, so its
result equals ``model(chunk)`` for every chunk (and the whole-array call up to the last
bit of floating point).
"""

import numpy as np

from . import _threads
from .layers import (LSTM, Bidirectional, MultiLSTM, _LengthsDtypeError, _refuse_masked,
                     _widen_narrow_floats)

__all__ = ["predict_dask"]

_METHODS = ("predict", "predict_proba", "predict_log_proba", "transform")


def _import_dask_array():
    try:
        import dask.array as da
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("fastlstm.dask needs dask: pip install 'fastlstm[dask]' "
                          "(or: pip install 'dask[array]' distributed)") from exc
    return da


def _with_threads(module, n_threads):
    """A shallow copy of ``module`` whose LSTM layers use ``n_threads``; the parameters
    are shared, the original is not touched (safe with Dask's threaded scheduler)."""
    if isinstance(module, LSTM) and module.frozen:
        module._prepacked()         # packed once, on the model: its copies share the pack
    new = object.__new__(type(module))
    for key, value in module._attributes().items():    # (not __dict__: see layers._STATE)
        object.__setattr__(new, key, value)
    if isinstance(module, MultiLSTM):
        new._layers = tuple(_with_threads(layer, n_threads) for layer in module.layers)
    elif isinstance(module, Bidirectional):
        new._forward_layer = _with_threads(module.forward_layer, n_threads)
        new._backward_layer = _with_threads(module.backward_layer, n_threads)
    else:
        new.n_threads = n_threads
    return new


def _model_block(block, lengths, model, n_threads):
    model = _with_threads(model, n_threads)
    L = None if lengths is None else np.asarray(lengths).reshape(-1)
    if n_threads == 1:
        with _threads.blas_single_thread(openmp=False):
            return model(block, lengths=L)[0]
    return model(block, lengths=L)[0]


def _estimator_block(block, lengths, estimator, method, n_threads):
    L = None if lengths is None else np.asarray(lengths).reshape(-1)
    return estimator._predict_chunk(block, n_threads, method, lengths=L)


def _aligned_chunks(chunks, batch):
    """Sample-axis chunks whose boundaries are multiples of ``batch`` (the last may end
    anywhere): the old boundaries rounded down, empty chunks dropped."""
    n = int(sum(chunks))
    bounds = np.cumsum(chunks)[:-1]
    bounds = np.unique((bounds // batch) * batch)
    bounds = bounds[(bounds > 0) & (bounds < n)]
    edges = np.concatenate([[0], bounds, [n]])
    return tuple(int(c) for c in np.diff(edges))


def predict_dask(model_or_estimator, X, *, method=None, lengths=None, n_threads=1):
    """Lazy batch inference over a Dask array chunked along the samples.

    Parameters
    ----------
    model_or_estimator : fitted LSTMRegressor / LSTMClassifier / LSTMEncoder, or a
        fastlstm ``LSTM`` / ``Bidirectional`` / ``MultiLSTM``
    X : dask array (n_samples, n_timesteps, n_features), or (n_samples, n_timesteps)
        univariate sequences for an estimator.  A NumPy array is wrapped with
        ``dask.array.from_array``.  Chunks along the time and feature axes are merged:
        each task holds whole sequences.
    method : str or None
        Estimators only: "predict" (default), "predict_proba", "predict_log_proba" or
        "transform" (the default for ``LSTMEncoder``).
    lengths : None or array (n_samples,) of ints, NumPy or Dask
        Valid steps per sample (estimators also read trailing all-NaN steps as padding).
    n_threads : int, default=1
        OpenMP threads per task; BLAS runs on one thread when this is 1.  Raise it only
        when each Dask worker thread has several cores of its own.

    Returns
    -------
    dask array, lazy: for an estimator the method's result, (n_samples,) or
    (n_samples, k); for a model its output sequences (n_samples, n_timesteps, Hout).
    """
    da = _import_dask_array()
    _threads.check_n_threads(n_threads)
    if n_threads is None or n_threads < 1:
        raise ValueError(f"n_threads must be a positive int for Dask tasks, got {n_threads!r}")
    if not isinstance(X, da.Array):
        if isinstance(X, np.ma.MaskedArray) and np.ma.is_masked(X):
            raise TypeError("X is a masked array with masked entries, and a mask is not "
                            "read: fill them (np.ma.filled) and pass lengths= for padded "
                            "steps")
        X = _widen_narrow_floats(np.asarray(X))
        if X.dtype.kind not in "biuf":      # before dask's chunking, which would fail first
            raise TypeError(f"X must hold real numbers, got dtype {X.dtype}")
        # (dask's automatic chunking divides by the size of a sample: none without steps)
        X = da.from_array(X, chunks=X.shape if X.size == 0 else "auto")
    if X.ndim not in (2, 3):
        raise ValueError(f"X must be 2-D (n_samples, n_timesteps) or 3-D "
                         f"(n_samples, n_timesteps, n_features), got shape {X.shape}")
    if any(np.isnan(c) for c in X.shape):
        raise ValueError("X must have known chunk sizes (call X.compute_chunk_sizes())")
    X = _widen_narrow_floats(X)
    if X.dtype.kind not in "biuf":
        raise TypeError(f"X must hold real numbers, got dtype {X.dtype}")
    is_model = isinstance(model_or_estimator, (LSTM, Bidirectional, MultiLSTM))
    if not is_model and not hasattr(model_or_estimator, "_predict_chunk"):
        raise TypeError("model_or_estimator must be a fitted fastlstm estimator or an LSTM / "
                        f"Bidirectional / MultiLSTM, got {type(model_or_estimator).__name__}")

    X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
    n, T = X.shape[:2]
    if is_model:
        if method is not None:
            raise ValueError("method applies to estimators only; a model returns its "
                             "output sequences")
        model = model_or_estimator
        if X.ndim != 3 or X.shape[2] != model.input_size:
            raise ValueError(f"X must be 3-D (n_samples, n_timesteps, {model.input_size}) "
                             f"for this model, got shape {X.shape}")
    else:
        est = model_or_estimator
        from sklearn.utils.validation import check_is_fitted
        check_is_fitted(est)
        if method is None:
            method = "transform" if not hasattr(est, "predict") else "predict"
        if method not in _METHODS or not hasattr(est, method):
            raise ValueError(f"method must be one of the estimator's "
                             f"{[m for m in _METHODS if hasattr(est, m)]}, got {method!r}")
        X = X.rechunk({0: _aligned_chunks(X.chunks[0], est._inference_batch_size(T))})

    Ld = None
    if lengths is not None:
        if not isinstance(lengths, da.Array):
            _refuse_masked(lengths, "lengths", "give every row's length")
            lengths = np.asarray(lengths)
        if lengths.shape != (n,):       # before rechunking to X's samples, which needs it
            raise ValueError(f"lengths must have shape ({n},), got {lengths.shape}")
        if lengths.dtype.kind not in "iu" and not (n == 0 and lengths.dtype.kind == "f"):
            # (an empty list, for an empty batch, is an empty float array)
            raise _LengthsDtypeError(f"lengths must be integers, got dtype {lengths.dtype}")
        low = 0 if is_model else 1      # estimators take samples of at least one step
        if not isinstance(lengths, da.Array) and n and (lengths.min() < low
                                                        or lengths.max() > T):
            # known now: refused before any task runs, as the tasks would refuse it
            raise ValueError(f"lengths must be in [{low}, {T}] (n_timesteps), got values "
                             f"from {lengths.min()} to {lengths.max()}")
        if isinstance(lengths, da.Array):
            Ld = lengths.rechunk({0: X.chunks[0]})
        else:
            Ld = da.from_array(lengths, chunks=(X.chunks[0],))
        Ld = Ld.reshape((n,) + (1,) * (X.ndim - 1)).rechunk(
            (X.chunks[0],) + ((1,),) * (X.ndim - 1))

    if is_model:
        Hout = model.output_size
        return da.map_blocks(
            _model_block, X, Ld, model=model, n_threads=n_threads,
            chunks=(X.chunks[0], (T,), (Hout,)), dtype=model.dtype,
            meta=np.empty((0, 0, 0), model.dtype))

    # the output's trailing shape and dtype, from one tiny sample
    probe = np.zeros((1,) + X.shape[1:], X.dtype)
    out = est._predict_chunk(probe, 1, method)
    meta = np.empty((0,) * out.ndim, out.dtype)
    if out.ndim == 1:
        return da.map_blocks(
            _estimator_block, X, Ld, estimator=est, method=method, n_threads=n_threads,
            drop_axis=list(range(1, X.ndim)), chunks=(X.chunks[0],), dtype=out.dtype,
            meta=meta)
    chunks = (X.chunks[0], (out.shape[1],))
    drop = [2] if X.ndim == 3 else []
    return da.map_blocks(
        _estimator_block, X, Ld, estimator=est, method=method, n_threads=n_threads,
        drop_axis=drop, chunks=chunks, dtype=out.dtype, meta=meta)
