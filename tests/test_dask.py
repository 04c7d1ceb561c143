"""fastlstm.dask: lazy batch inference over Dask arrays, on a real two-process cluster."""

import os
import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
pytest.importorskip("sklearn")

import fastlstm  # noqa: E402
from fastlstm.dask import _aligned_chunks, _with_threads, predict_dask  # noqa: E402
from fastlstm.estimators import LSTMClassifier, LSTMEncoder, LSTMRegressor  # noqa: E402

N, T, F = 1500, 12, 3


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, T, F)).astype(np.float32)
    lengths = rng.integers(1, T + 1, N)
    X[np.arange(T)[None, :] >= lengths[:, None]] = np.nan      # trailing NaN padding
    y = np.nan_to_num(X[:, :, 0]).sum(axis=1)
    return X, y


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "regressor": LSTMRegressor(hidden_sizes=(6,), max_iter=2, random_state=0).fit(X, y),
            "classifier": LSTMClassifier(hidden_sizes=(5,), bidirectional=True, max_iter=2,
                                         random_state=0).fit(X, np.digitize(y, [-1, 1])),
            "encoder": LSTMEncoder(hidden_sizes=(4, 3), pooling="mean",
                                   random_state=0).fit(X),
        }


@pytest.fixture(scope="module")
def client():
    environ = dict(os.environ)  # the nanny writes its worker settings into os.environ
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, worker_dashboard_address=None, silence_logs=40)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        os.environ.clear()
        os.environ.update(environ)


CASES = [("regressor", "predict"), ("classifier", "predict"),
         ("classifier", "predict_proba"), ("classifier", "predict_log_proba"),
         ("encoder", "transform")]


@pytest.mark.parametrize("name, method", CASES)
def test_cluster_matches_in_process_exactly(client, data, fitted, name, method):
    X, _ = data
    est = fitted[name]
    dX = da.from_array(X, chunks=(400, T, F))
    out = predict_dask(est, dX, method=method)
    assert isinstance(out, da.Array)
    assert out.numblocks[0] > 1
    expected = getattr(est, method)(X)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    got = client.compute(out).result()
    np.testing.assert_array_equal(got, expected)


def test_cluster_2d_input_and_explicit_lengths(client):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((700, 9))
    lengths = rng.integers(1, 10, 700)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = LSTMRegressor(hidden_sizes=(4,), max_iter=2, dtype="float64",
                            random_state=0).fit(X, X[:, 0])
    got = client.compute(predict_dask(est, da.from_array(X, chunks=150),
                                      lengths=lengths)).result()
    np.testing.assert_array_equal(got, est.predict(X, lengths=lengths))


def test_cluster_bare_model_equals_each_chunk(client, data):
    X = np.nan_to_num(data[0])
    model = fastlstm.MultiLSTM([fastlstm.LSTM(F, 5, random_state=1),
                                fastlstm.Bidirectional(fastlstm.LSTM(5, 4, random_state=2),
                                                       fastlstm.LSTM(5, 4, random_state=3))])
    dX = da.from_array(X, chunks=(500, T, F))
    got = client.compute(predict_dask(model, dX)).result()
    assert got.shape == (N, T, 8)
    for s in range(0, N, 500):
        np.testing.assert_array_equal(got[s:s + 500], model(X[s:s + 500])[0])
    np.testing.assert_allclose(got, model(X)[0], rtol=1e-5, atol=1e-6)


def test_workers_run_single_threaded(client):
    # the tasks' kernels run with n_threads=1 copies; the workers' BLAS is held to 1 thread
    def probe():
        from threadpoolctl import threadpool_info
        return fastlstm.get_n_threads(), [i["num_threads"] for i in threadpool_info()
                                          if i["user_api"] == "blas"]

    for n_omp, blas in client.run(probe).values():
        assert n_omp == 1
        assert all(b == 1 for b in blas)


# --- in-process pieces (threaded scheduler): no cluster needed ------------------------


class _Recording(fastlstm.LSTM):
    """An LSTM that records its thread count and the BLAS threads at each call."""

    seen = []

    def __call__(self, X, *args, **kwargs):
        from threadpoolctl import threadpool_info

        blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        self.seen.append((self.n_threads, max(blas, default=1)))
        return super().__call__(X, *args, **kwargs)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_tasks_use_their_thread_count(data, n_threads):
    X = np.nan_to_num(data[0])
    model = _Recording(F, 3, n_threads=-1, random_state=0)
    _Recording.seen = []
    out = predict_dask(model, da.from_array(X, chunks=(300, T, F)), n_threads=n_threads)
    out.compute(scheduler="threads")
    assert len(_Recording.seen) == 5
    assert all(nt == n_threads for nt, _ in _Recording.seen)
    assert model.n_threads == -1                                  # the model is untouched


def test_tasks_hold_blas_to_one_thread(data):
    # threadpoolctl >= 3.8 lets only one "controlling" thread change a pthreads OpenBLAS
    # limit: a limit the main thread set must not stop Dask's threads from setting theirs
    import threadpoolctl

    from fastlstm import _threads

    if not any(i["internal_api"] == "openblas" and i.get("threading_layer") == "pthreads"
               for i in threadpoolctl.threadpool_info()):
        pytest.skip("needs a pthreads OpenBLAS")
    if _threads.usable_cores() < 2:
        pytest.skip("needs 2 cores")
    X = np.nan_to_num(data[0])
    clear = getattr(threadpoolctl.OpenBLASController, "clear_controlling_thread",
                    lambda force: None)
    clear(force=True)
    # this thread sets BLAS to 2 threads, then holds it to 1 once, as predict does
    limiter = threadpoolctl.threadpool_limits(limits=2, user_api="blas")
    try:
        with _threads.blas_single_thread(openmp=False):
            pass
        model = _Recording(F, 3, random_state=0)
        _Recording.seen = []
        predict_dask(model, da.from_array(X, chunks=(300, T, F))).compute(scheduler="threads")
    finally:
        limiter.restore_original_limits()
        clear(force=True)
    assert len(_Recording.seen) == 5
    assert all(blas == 1 for _, blas in _Recording.seen), _Recording.seen


def test_with_threads_copies_without_touching_the_model():
    model = fastlstm.MultiLSTM([fastlstm.LSTM(2, 3, n_threads=2),
                                fastlstm.Bidirectional(fastlstm.LSTM(3, 2, n_threads=2),
                                                       fastlstm.LSTM(3, 2, n_threads=2))])
    copy = _with_threads(model, 1)
    layers = [copy.layers[0], copy.layers[1].forward_layer, copy.layers[1].backward_layer]
    assert all(layer.n_threads == 1 for layer in layers)
    originals = [model.layers[0], model.layers[1].forward_layer, model.layers[1].backward_layer]
    assert all(layer.n_threads == 2 for layer in originals)
    assert copy.flat_params is model.flat_params
    X = np.random.default_rng(0).standard_normal((5, 4, 2))
    np.testing.assert_array_equal(copy(X)[0], model(X)[0])


@pytest.mark.parametrize("chunks, batch, expected", [
    ((300, 300, 300, 100), 256, (256, 256, 256, 232)),
    ((100, 100, 100), 256, (300,)),
    ((512, 512), 256, (512, 512)),
    ((10, 600, 10), 256, (512, 108)),
])
def test_aligned_chunks(chunks, batch, expected):
    assert _aligned_chunks(chunks, batch) == expected


def test_lazy_until_computed(data, fitted):
    import dask

    X, _ = data
    loads = []

    def load(s):
        loads.append(s)
        return X[s:s + 500]

    dX = da.concatenate([da.from_delayed(dask.delayed(load)(s), (500, T, F), X.dtype)
                         for s in range(0, N, 500)])
    out = predict_dask(fitted["regressor"], dX)
    assert loads == []                       # building the graph read no data
    np.testing.assert_array_equal(out.compute(scheduler="threads"),
                                  fitted["regressor"].predict(X))
    assert sorted(loads) == [0, 500, 1000]


def test_argument_errors(data, fitted):
    X, _ = data
    dX = da.from_array(X, chunks=(500, T, F))
    with pytest.raises(ValueError, match="method"):
        predict_dask(fitted["regressor"], dX, method="predict_proba")
    with pytest.raises(ValueError, match="n_threads"):
        predict_dask(fitted["regressor"], dX, n_threads=-1)
    with pytest.raises(TypeError, match="model_or_estimator"):
        predict_dask(object(), dX)
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        predict_dask(fitted["regressor"], da.zeros((4, 3, 2, 1)))
    model = fastlstm.LSTM(F + 1, 2)
    with pytest.raises(ValueError, match="3-D"):
        predict_dask(model, dX)
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError):
        predict_dask(LSTMRegressor(), dX)
    n = X.shape[0]
    for lengths in (np.full(n - 1, T), da.from_array(np.full(n - 1, T)), np.full((n, 1), T)):
        with pytest.raises(ValueError, match=rf"lengths must have shape \({n},\)"):
            predict_dask(fitted["regressor"], dX, lengths=lengths)
    # lengths known now are checked now (they failed only inside compute()), as is X's
    # dtype (its message showed a probe array of zeros)
    for est, low in ((fitted["regressor"], 1), (fastlstm.LSTM(F, 2), 0)):
        for bad, match in ((np.full(n, T + 1), rf"lengths must be in \[{low}, {T}\]"),
                           (np.full(n, low - 1), rf"lengths must be in \[{low}, {T}\]"),
                           (np.full(n, 2.5), "lengths must be integers"),
                           (da.from_array(np.full(n, 2.5)), "lengths must be integers")):
            with pytest.raises(ValueError, match=match):
                predict_dask(est, dX, lengths=bad)
        with pytest.raises(TypeError, match="X must hold real numbers, got dtype complex"):
            predict_dask(est, dX.astype(np.complex64))
    empty = fastlstm.LSTM(F, 2)
    assert predict_dask(empty, np.zeros((0, T, F)), lengths=[]).compute().shape == (0, T, 2)
    # a NumPy X is checked before dask wraps it (its automatic chunking raised
    # NotImplementedError for object arrays), and a mask is not dropped
    for est in (fitted["regressor"], fastlstm.LSTM(F, 2)):
        with pytest.raises(TypeError, match="X must hold real numbers, got dtype object"):
            predict_dask(est, X.astype(object))
        last_step = np.broadcast_to(np.arange(T)[None, :, None] == T - 1, X.shape)
        masked = np.ma.masked_array(X, mask=last_step)
        with pytest.raises(TypeError, match="masked array"):
            predict_dask(est, masked)


def test_dask_ml_parallel_post_fit_recipe(data, fitted):
    # the recipe of docs/scaling.md: 3-D sequences flattened for dask-ml, restored in a
    # pipeline; explicit predict_meta / predict_proba_meta
    wrappers = pytest.importorskip("dask_ml.wrappers")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y = data
    labels = np.digitize(y, [-1, 1])

    def unflatten(Z):
        return np.asarray(Z).reshape(len(Z), T, F)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = wrappers.ParallelPostFit(
            make_pipeline(FunctionTransformer(unflatten),
                          LSTMClassifier(hidden_sizes=(5,), bidirectional=True, max_iter=2,
                                         random_state=0)),
            predict_meta=np.empty((0,), dtype=np.int64),
            predict_proba_meta=np.empty((0, 0), dtype=np.float64),
        ).fit(X.reshape(N, T * F), labels)
    dX = da.from_array(X, chunks=(512, T, F)).reshape(N, T * F)   # multiples of 256
    got = wrapped.predict(dX).compute(scheduler="threads")
    np.testing.assert_array_equal(got, fitted["classifier"].predict(X))
    proba = wrapped.predict_proba(dX).compute(scheduler="threads")
    np.testing.assert_array_equal(proba, fitted["classifier"].predict_proba(X))


def test_numpy_input_without_time_steps():
    """A NumPy X with T = 0 (valid for the model): dask's automatic chunking divided by
    the size of a sample (ZeroDivisionError from 512 samples on)."""
    model = fastlstm.LSTM(3, 4, random_state=0)
    X = np.zeros((700, 0, 3), np.float32)
    got = predict_dask(model, X).compute()
    assert got.shape == (700, 0, 4) and got.shape == model(X)[0].shape


def test_masked_lengths_are_refused():
    # the layers and estimators refuse them; predict_dask read the value under the mask
    m = fastlstm.LSTM(2, 3, random_state=0)
    X = np.ones((2, 4, 2), np.float32)
    L = np.ma.masked_array([4, 1], mask=[False, True])
    with pytest.raises(TypeError, match="lengths is a masked array with masked entries"):
        predict_dask(m, X, lengths=L)


def test_narrow_float_input_is_read_as_float32():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    m = fastlstm.LSTM(2, 3, random_state=0)
    X = np.random.default_rng(1).normal(size=(4, 5, 2)).astype(ml_dtypes.bfloat16)
    want = m(X.astype(np.float32))[0]
    np.testing.assert_array_equal(predict_dask(m, X).compute(), want)
    np.testing.assert_array_equal(predict_dask(m, da.from_array(X, chunks=2)).compute(), want)


def test_frozen_model_packs_once_on_the_model(data, monkeypatch):
    """A frozen model's per-block copies share its pack, made on the model itself (not
    one per block and per compute), and give the frozen model's own results."""
    from fastlstm import _forward

    X = np.nan_to_num(data[0])
    plain = fastlstm.LSTM(F, 20, random_state=0)
    frozen = fastlstm.freeze(plain)
    packs = []
    real = _forward.pack_weights
    monkeypatch.setattr(_forward, "pack_weights", lambda *a: packs.append(1) or real(*a))
    for _ in range(2):
        out = predict_dask(frozen, da.from_array(X, chunks=(100, T, F)), n_threads=1)
        np.testing.assert_array_equal(out.compute(scheduler="synchronous"), plain(X)[0])
    assert len(packs) == 1 and frozen._pack is not None
