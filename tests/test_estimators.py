"""scikit-learn estimators: the common checks, the API round-trips, training behaviour."""

import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastlstm.estimators import LSTMClassifier, LSTMEncoder, LSTMRegressor  # noqa: E402

# Small networks and budgets keep the ~50 common checks per estimator fast.
FAST = dict(hidden_sizes=(4,), max_iter=5, random_state=0)

_FEATURES_ARE_STEPS = ("2-D X is (n_samples, n_timesteps): n_features_in_ is 1 feature per "
                       "step, and fewer or more columns are shorter or longer sequences, "
                       "which are valid input")


def _expected_failed_checks(estimator):
    failed = {
        "check_n_features_in": _FEATURES_ARE_STEPS,
        "check_n_features_in_after_fitting": _FEATURES_ARE_STEPS,
    }
    if isinstance(estimator, (LSTMRegressor, LSTMClassifier)):
        failed["check_estimators_partial_fit_n_features"] = _FEATURES_ARE_STEPS
    if isinstance(estimator, LSTMRegressor):
        failed["check_regressors_train"] = (
            "poor score: the checks' instance trains 4 units for 5 epochs, too little for "
            "R2 > 0.5 on that data; test_regressor_learns_noisy_sine checks learning")
    if isinstance(estimator, LSTMClassifier):
        # the accuracy part of this check passes; it then expects predict(X.T) to fail
        failed["check_classifiers_train"] = (
            _FEATURES_ARE_STEPS + " (X.T is 2 sequences of 200 steps); the rest of the "
            "check is repeated in test_classifier_outputs_like_check_classifiers_train")
    if isinstance(estimator, LSTMEncoder):
        failed["check_transformer_general"] = _FEATURES_ARE_STEPS
    if isinstance(estimator, LSTMEncoder) and estimator.objective == "reservoir":
        failed["check_transformer_n_iter"] = (
            "the default objective='reservoir' trains nothing, so n_iter_ is 0 by design")
    return failed


@parametrize_with_checks(
    [LSTMRegressor(**FAST), LSTMClassifier(**FAST), LSTMEncoder(**FAST),
     LSTMEncoder(objective="regression", **FAST)],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


# the assertion each expected failure stops at (source text of the failing line)
_FAILS_AT = {
    "check_n_features_in": "assert estimator.n_features_in_ == X.shape[1]",
    "check_n_features_in_after_fitting": "assert estimator.n_features_in_ == X.shape[1]",
    "check_estimators_partial_fit_n_features": "with raises(",
    "check_regressors_train": "assert regressor.score(X, y_) > 0.5",
    "check_classifiers_train": 'with raises(ValueError, err_msg=msg.format(name, "predict")):',
    "check_transformer_general": "with raises(",
    "check_transformer_n_iter": "assert estimator.n_iter_ >= 1",
}


@pytest.mark.parametrize("estimator", [LSTMRegressor(**FAST), LSTMClassifier(**FAST),
                                       LSTMEncoder(**FAST)], ids=lambda e: type(e).__name__)
def test_expected_failures_fail_where_stated(estimator):
    # every expected failure is an assertion at the stated line, never a crash elsewhere
    import traceback

    from sklearn.utils import estimator_checks

    for name in _expected_failed_checks(estimator):
        check = getattr(estimator_checks, name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(AssertionError) as info:
                check(type(estimator).__name__, estimator)
        frames = [f for f in traceback.extract_tb(info.value.__traceback__)
                  if f.filename.endswith("estimator_checks.py")]
        assert frames and _FAILS_AT[name] in frames[-1].line, (name, frames[-1].line)


# ---------------------------------------------------------------------------------------
# data


def _sequences(n, T, F, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, T, F)).astype(dtype)


def _fit_quiet(est, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(*args, **kwargs)


# ---------------------------------------------------------------------------------------
# input: 2-D / 3-D, n_features_in_, lengths and NaN padding


def test_2d_is_univariate_3d():
    X = _sequences(30, 7, 1)[:, :, 0]
    y = X.sum(axis=1)
    a = _fit_quiet(LSTMRegressor(**FAST), X, y)
    b = _fit_quiet(LSTMRegressor(**FAST), X[:, :, None], y)
    assert a.n_features_in_ == b.n_features_in_ == 1
    np.testing.assert_array_equal(a.predict(X), b.predict(X[:, :, None]))
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    # sequences of another length are valid input
    assert a.predict(X[:, :3]).shape == (30,)
    assert a.predict(np.hstack([X, X])).shape == (30,)


def test_n_features_in_is_per_step_and_checked():
    X = _sequences(20, 5, 3)
    est = _fit_quiet(LSTMClassifier(**FAST), X, np.arange(20) % 2)
    assert est.n_features_in_ == 3
    with pytest.raises(ValueError, match="2 features per time step.*expecting 3"):
        est.predict(X[:, :, :2])
    with pytest.raises(ValueError, match="expecting 3"):
        est.predict(X[:, :, 0])                      # 2-D: 1 feature per step
    with pytest.raises(ValueError, match="2D"):
        est.predict(X[:, 0, 0])
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        est.predict(X[:, :, :, None])


def _reference_features(est, X, lengths):
    """Pooled features of the fitted stack, computed by the NumPy reference."""
    from fastlstm import reference
    from fastlstm.layers import Bidirectional

    layers = []
    for layer in est.model_.layers:
        if isinstance(layer, Bidirectional):
            layers.append(("bidirectional", (layer.forward_layer.params, None),
                           (layer.backward_layer.params, None)))
        else:
            layers.append(("lstm", layer.params, None))
    Y, states = reference.stack_forward(X, layers, lengths=lengths)
    if est.pooling == "mean":
        return Y.sum(axis=1) / lengths[:, None]
    top = states[-1]
    return np.hstack([top[0][1], top[1][1]]) if est.bidirectional else top[1]


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_predictions_against_numpy_reference(pooling, bidirectional):
    X = _sequences(25, 6, 2, seed=1)
    lengths = np.random.default_rng(2).integers(1, 7, 25)
    y = np.random.default_rng(3).standard_normal((25, 2))
    est = _fit_quiet(LSTMRegressor(hidden_sizes=(3, 4), bidirectional=bidirectional,
                                   pooling=pooling, dtype="float64", max_iter=2,
                                   random_state=0), X, y, lengths=lengths)
    F = _reference_features(est, X, lengths)
    W, b = est.readout_.params["W"], est.readout_.params["b"]
    expected = (F @ W + b) * est._y_scale + est._y_mean
    np.testing.assert_allclose(est.predict(X, lengths=lengths), expected, rtol=1e-10,
                               atol=1e-12)
    enc = _fit_quiet(LSTMEncoder(hidden_sizes=(3, 4), bidirectional=bidirectional,
                                 pooling=pooling, dtype="float64", random_state=0),
                     X, lengths=lengths)
    np.testing.assert_allclose(enc.transform(X, lengths=lengths),
                               _reference_features(enc, X, lengths), rtol=1e-10, atol=1e-12)


def test_nan_padding_equals_lengths_and_leaves_input_alone():
    X = _sequences(40, 8, 2, seed=4)
    lengths = np.random.default_rng(5).integers(1, 9, 40)
    pad = np.arange(8)[None, :] >= lengths[:, None]
    X_nan = X.copy()
    X_nan[pad] = np.nan
    X_junk = X.copy()
    X_junk[pad] = np.inf                              # past the lengths: ignored
    y = np.arange(40) % 3
    before = X_nan.copy()
    a = _fit_quiet(LSTMClassifier(**FAST), X_nan, y)
    b = _fit_quiet(LSTMClassifier(**FAST), X_junk, y, lengths=lengths)
    np.testing.assert_array_equal(X_nan, before)
    np.testing.assert_array_equal(a.predict_proba(X_nan), b.predict_proba(X_junk, lengths=lengths))
    # each sample alone, truncated to its length, gives the same probabilities
    single = np.vstack([a.predict_proba(X[i:i + 1, :lengths[i]]) for i in range(40)])
    np.testing.assert_allclose(a.predict_proba(X_nan), single, rtol=1e-5, atol=1e-6)


def test_padding_beyond_float32_range_is_ignored_without_a_warning():
    # float64 X for a float32 network: a padded step past float32's range is not data
    # (no overflow warning from the cast, the same results as zero padding)
    X = _sequences(20, 6, 2, seed=6)
    y = X[:, -2:, 0].sum(axis=1)
    lengths = np.r_[5, [6] * 19]
    est = _fit_quiet(LSTMRegressor(**FAST), X, y, lengths=lengths)
    X_big = X.copy()
    X_big[0, 5, 0] = 1e39
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = est.predict(X_big, lengths=lengths)
        _fit_quiet(LSTMRegressor(**FAST), X_big, y, lengths=lengths)
    np.testing.assert_array_equal(p, est.predict(X, lengths=lengths))


@pytest.mark.parametrize("where, match", [
    ((0, 0, slice(None)), "step 0 is NaN but step 1 is not"),
    ((1, 7, 0), "both NaN and finite"),
    ((2, slice(None), slice(None)), "every step of sample 2"),
])
def test_nan_errors(where, match):
    X = _sequences(10, 8, 2)
    X[where] = np.nan
    with pytest.raises(ValueError, match=match):
        LSTMRegressor(**FAST).fit(X, np.zeros(10))


def test_lengths_errors_and_infinity():
    X = _sequences(10, 8, 2)
    est = LSTMRegressor(**FAST)
    with pytest.raises(ValueError, match="lengths must be in"):
        est.fit(X, np.zeros(10), lengths=np.zeros(10, int))
    with pytest.raises(ValueError, match=r"lengths must have shape \(10,\)"):
        est.fit(X, np.zeros(10), lengths=np.ones(9, int))
    with pytest.raises(ValueError, match="lengths must be integers") as info:
        est.fit(X, np.zeros(10), lengths=np.ones(10))
    assert isinstance(info.value, TypeError)     # as the layers raise it (SPEC.md Part A)
    X[3, 2, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        est.fit(X, np.zeros(10))
    with pytest.raises(ValueError, match="within the valid steps"):
        est.fit(X, np.zeros(10), lengths=np.full(10, 8))


# ---------------------------------------------------------------------------------------
# training maths: gradients against central finite differences (float64)


@pytest.mark.parametrize("cls", [LSTMRegressor, LSTMClassifier])
@pytest.mark.parametrize("pooling, bidirectional", [("last", False), ("last", True),
                                                     ("mean", False), ("mean", True)])
def test_loss_gradients_against_finite_differences(cls, pooling, bidirectional):
    from fastlstm.estimators import _batch_input

    rng = np.random.default_rng(6)
    X = rng.standard_normal((7, 6, 2))
    L = np.array([6, 3, 1, 6, 5, 2, 4])
    y = rng.standard_normal((7, 2)) if cls is LSTMRegressor else np.array([0, 1, 2, 1, 0, 2, 2])
    est = _fit_quiet(cls(hidden_sizes=(3, 4), bidirectional=bidirectional, pooling=pooling,
                         dtype="float64", max_iter=1, alpha=0.1, random_state=0),
                     X, y, lengths=L)
    t = est._encode_targets(y, 7, False)
    Xb, Lb = _batch_input(X, slice(None), L, np.float64)
    est._loss_grads(Xb, Lb, t)
    grads = [est.model_.flat_grads.copy(), est.readout_.flat_grads.copy()]
    for module, g in zip((est.model_, est.readout_), grads):
        p = module.flat_params
        picks = rng.choice(p.size, min(p.size, 16), replace=False)
        fd = np.empty(picks.size)
        for k, i in enumerate(picks):
            old = p[i]
            p[i] = old + 1e-5
            up = est._loss_grads(Xb, Lb, t)
            p[i] = old - 1e-5
            down = est._loss_grads(Xb, Lb, t)
            p[i] = old
            fd[k] = (up - down) / 2e-5
        np.testing.assert_allclose(g[picks], fd, rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------------------------------
# scikit-learn API round-trips


@pytest.fixture(scope="module")
def small_fitted():
    X = _sequences(60, 9, 2, seed=7)
    X[:10, 6:] = np.nan                                   # some padded sequences
    y = np.nan_to_num(X[:, :, 0]).sum(axis=1)
    return X, y, {
        "regressor": _fit_quiet(LSTMRegressor(hidden_sizes=(5, 3), max_iter=3,
                                              random_state=0), X, y),
        "classifier": _fit_quiet(LSTMClassifier(hidden_sizes=(4,), bidirectional=True,
                                                max_iter=3, random_state=0), X, y > 0),
        "encoder": _fit_quiet(LSTMEncoder(hidden_sizes=(4,), objective="classification",
                                          pooling="mean", max_iter=3, random_state=0),
                              X, y > 0),
        "reservoir": _fit_quiet(LSTMEncoder(hidden_sizes=(6,), random_state=0), X),
    }


def _outputs(est, X):
    return [getattr(est, m)(X) for m in ("predict", "predict_proba", "transform")
            if hasattr(est, m)]


@pytest.mark.parametrize("name", ["regressor", "classifier", "encoder", "reservoir"])
def test_pickle_and_deepcopy_round_trip(small_fitted, name):
    import copy
    import pickle

    X, y, fitted = small_fitted
    est = fitted[name]
    for other in (pickle.loads(pickle.dumps(est)), copy.deepcopy(est)):
        for a, b in zip(_outputs(est, X), _outputs(other, X)):
            np.testing.assert_array_equal(a, b)
        assert other.get_params() == est.get_params()
        assert other.loss_curve_ == est.loss_curve_


@pytest.mark.parametrize("name", ["regressor", "classifier"])
def test_unpickled_estimator_keeps_training_state(small_fitted, name):
    # the loaded parameters stay live (the kernels and the optimiser share them) and the
    # optimiser state travels: one more epoch gives the same result on both
    import pickle

    X, y, fitted = small_fitted
    t = y if name == "regressor" else y > 0
    a = pickle.loads(pickle.dumps(fitted[name]))
    b = pickle.loads(pickle.dumps(a))
    a.partial_fit(X, t)
    b.partial_fit(X, t)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    assert not np.array_equal(a.predict(X), fitted[name].predict(X)) or name == "classifier"


def test_pickle_with_sgd(small_fitted):
    # the optimiser's state travels whatever it holds (plain SGD holds no buffers)
    import pickle

    X, y, _ = small_fitted
    est = _fit_quiet(LSTMRegressor(hidden_sizes=(4,), max_iter=2, optimizer="sgd",
                                   random_state=0), X, y)
    a = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(a.predict(X), est.predict(X))
    est.partial_fit(X, y)
    a.partial_fit(X, y)
    np.testing.assert_array_equal(a.predict(X), est.predict(X))


@pytest.mark.parametrize("first, then", [("adam", "sgd"), ("sgd", "adam")])
def test_pickle_after_the_optimizer_parameter_changed(small_fitted, first, then):
    # the saved optimiser state is the one in use, whatever ``optimizer`` names now: it
    # loads into an optimiser of its own kind, and training goes on as it would have
    import copy
    import pickle

    X, y, _ = small_fitted
    est = _fit_quiet(LSTMRegressor(hidden_sizes=(4,), max_iter=2, optimizer=first,
                                   random_state=0), X, y)
    est.set_params(optimizer=then)
    for other in (pickle.loads(pickle.dumps(est)), copy.deepcopy(est)):
        assert type(other._optimizer) is type(est._optimizer)
        np.testing.assert_array_equal(other.predict(X), est.predict(X))
    a = pickle.loads(pickle.dumps(est))
    est.partial_fit(X, y)
    a.partial_fit(X, y)
    np.testing.assert_array_equal(a.predict(X), est.predict(X))


@pytest.mark.parametrize("cls", [LSTMRegressor, LSTMClassifier, LSTMEncoder])
def test_docstrings_document_every_parameter(cls):
    # the class docstrings were expressions (a string + the shared part), which Python
    # does not store: help() showed nothing
    doc = cls.__doc__ or ""
    assert "Parameters" in doc and "Attributes" in doc
    missing = [name for name in cls().get_params() if f"{name} :" not in doc]
    assert not missing


def test_clone_and_params_round_trip(small_fitted):
    from sklearn.base import clone

    est = small_fitted[2]["regressor"]
    c = clone(est)
    assert not hasattr(c, "model_")
    assert c.get_params() == est.get_params()
    c.set_params(hidden_sizes=[7], learning_rate=0.01)
    assert c.get_params()["hidden_sizes"] == [7]
    assert "LSTMRegressor(hidden_sizes=(5, 3), max_iter=3, random_state=0)" in repr(est)


def test_readonly_memmap_and_float32_inputs(tmp_path, small_fitted):
    X, y, fitted = small_fitted
    path = tmp_path / "X.npy"
    np.save(path, X)
    Xm = np.load(path, mmap_mode="r")
    assert not Xm.flags.writeable
    for name in ("regressor", "classifier", "encoder"):
        for a, b in zip(_outputs(fitted[name], X), _outputs(fitted[name], Xm)):
            np.testing.assert_array_equal(a, b)
    est = _fit_quiet(LSTMRegressor(**FAST), Xm, y)
    ref = _fit_quiet(LSTMRegressor(**FAST), X, y)
    np.testing.assert_array_equal(est.predict(Xm), ref.predict(X))
    # float32 input to a float32 network: the same numbers, the same results
    X32 = X.astype(np.float32)
    np.testing.assert_array_equal(ref.predict(X32), ref.predict(X32.astype(np.float64)))
    for dtype in ("float64", np.float64, np.dtype("float64")):
        enc = _fit_quiet(LSTMEncoder(hidden_sizes=(3,), dtype=dtype, random_state=0), X32)
        assert enc.transform(X32).dtype == np.float64
    assert fitted["reservoir"].transform(X).dtype == np.float32


def test_encoder_feature_names_in_pipelines_and_column_transformers():
    # a previous step names the columns of 2-D X (time steps), not n_features_in_ features
    pd = pytest.importorskip("pandas")
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = _sequences(20, 5, 1, seed=3)[:, :, 0]
    pipe = make_pipeline(StandardScaler(), LSTMEncoder(hidden_sizes=(2,), random_state=0))
    names = pipe.fit(X).get_feature_names_out()
    assert names.dtype == object and list(names) == ["lstmencoder0", "lstmencoder1"]
    df = pd.DataFrame(X, columns=[f"t{i}" for i in range(5)]).assign(other=1.0)
    ct = ColumnTransformer([("enc", LSTMEncoder(hidden_sizes=(2,), random_state=0),
                             [f"t{i}" for i in range(5)])], remainder="passthrough")
    out = ct.set_output(transform="pandas").fit_transform(df)
    assert list(out.columns) == ["enc__lstmencoder0", "enc__lstmencoder1", "remainder__other"]
    np.testing.assert_array_equal(out.iloc[:, :2].to_numpy(),
                                  ct.named_transformers_["enc"].transform(df.iloc[:, :5]))
    enc = ct.named_transformers_["enc"]
    with pytest.raises(ValueError, match="input_features should have length equal.*5"):
        enc.get_feature_names_out(["t0", "t1"])
    # 3-D X: one name per feature
    enc3 = LSTMEncoder(hidden_sizes=(3,), random_state=0).fit(_sequences(6, 4, 2, seed=1))
    assert len(enc3.get_feature_names_out(["a", "b"])) == 3
    with pytest.raises(ValueError, match="input_features should have length equal"):
        enc3.get_feature_names_out(["a", "b", "c", "d"])


def test_pipeline_cross_val_score_and_grid_search():
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X = _sequences(80, 10, 1, seed=8)[:, :, 0]
    lengths = np.random.default_rng(9).integers(3, 11, 80)
    X[np.arange(10)[None, :] >= lengths[:, None]] = np.nan        # variable lengths
    y = np.nansum(X, axis=1)
    scale = FunctionTransformer(lambda Z: Z / 2.0)
    pipe = make_pipeline(scale, LSTMEncoder(hidden_sizes=(8,), random_state=0), Ridge())
    pipe.fit(X, y)
    assert pipe.predict(X).shape == (80,)

    reg = LSTMRegressor(hidden_sizes=(4,), max_iter=3, random_state=0)
    cv = KFold(3, shuffle=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(make_pipeline(scale, reg), X, y, cv=cv)
        assert scores.shape == (3,) and np.isfinite(scores).all()
        grid = {"hidden_sizes": [(3,), (5,)], "learning_rate": [1e-3, 1e-2]}
        serial = GridSearchCV(reg, grid, cv=2).fit(X, y)
        parallel = GridSearchCV(reg, grid, cv=2, n_jobs=2).fit(X, y)   # joblib processes
    # training is deterministic, in other processes too
    np.testing.assert_array_equal(serial.cv_results_["mean_test_score"],
                                  parallel.cv_results_["mean_test_score"])
    assert parallel.best_params_ == serial.best_params_
    np.testing.assert_array_equal(parallel.predict(X), serial.predict(X))


# ---------------------------------------------------------------------------------------
# training behaviour


def test_reproducible_for_fixed_random_state_and_threads():
    X = _sequences(64, 12, 2, seed=10, dtype=np.float32)
    y = X[:, -2:, 0].sum(axis=1)

    def run(seed, n_threads):
        est = _fit_quiet(LSTMRegressor(hidden_sizes=(24,), max_iter=2, random_state=seed,
                                       n_threads=n_threads), X, y)
        return est.loss_curve_, est.predict(X)

    a, b = run(0, 2), run(0, 2)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    c = run(0, 1)                                 # the kernels give the same bits at 1 thread
    assert c[0] == a[0]
    np.testing.assert_array_equal(c[1], a[1])
    d = run(1, 2)
    assert d[0] != a[0]


def test_partial_fit_is_one_epoch_of_fit():
    X = _sequences(50, 6, 2, seed=11)
    y = np.arange(50) % 3
    full = _fit_quiet(LSTMClassifier(hidden_sizes=(4,), max_iter=1, random_state=0), X, y)
    inc = LSTMClassifier(hidden_sizes=(4,), random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        inc.partial_fit(X, y)
    inc.partial_fit(X, y, classes=[0, 1, 2])
    np.testing.assert_array_equal(full.predict_proba(X), inc.predict_proba(X))
    assert inc.n_iter_ == 1 and inc.t_ == 50
    inc.partial_fit(X[:20], y[:20])
    assert inc.n_iter_ == 2 and inc.t_ == 70 and len(inc.loss_curve_) == 2
    with pytest.raises(ValueError, match="not in classes_"):
        inc.partial_fit(X, y + 1)
    reg = LSTMRegressor(hidden_sizes=(4,), random_state=0, learning_rate=0.01)
    losses = [reg.partial_fit(X, y.astype(float)).loss_curve_[-1] for _ in range(8)]
    assert losses[-1] < losses[0]


def test_warm_start_continues():
    X = _sequences(40, 6, 1, seed=12)
    y = X[:, :, 0].sum(axis=1)
    est = _fit_quiet(LSTMRegressor(hidden_sizes=(4,), max_iter=4, tol=0, random_state=0,
                                   learning_rate=0.01), X, y)
    weights = est.model_.flat_params.copy()
    cold = _fit_quiet(LSTMRegressor(hidden_sizes=(4,), max_iter=4, tol=0, random_state=0,
                                    learning_rate=0.01), X, y)
    est.set_params(warm_start=True, max_iter=3)
    _fit_quiet(est, X, y)
    assert est.n_iter_ == 7 and len(est.loss_curve_) == 7
    assert est.loss_curve_[4] < cold.loss_curve_[0]           # starts from trained weights
    assert not np.array_equal(est.model_.flat_params, weights)
    est.set_params(hidden_sizes=(5,))
    with pytest.raises(ValueError, match="hidden_sizes"):
        est.fit(X, y)
    est.set_params(hidden_sizes=(4,), warm_start=False)
    _fit_quiet(est, X, y)
    assert est.n_iter_ == 3                                   # a fresh fit


def test_warm_start_keeps_a_reservoir():
    # a reservoir refit with warm_start keeps its weights (even unseeded); without, it draws
    X = _sequences(10, 5, 2, seed=3)
    enc = LSTMEncoder(hidden_sizes=(4,), warm_start=True).fit(X)
    weights = enc.model_.flat_params.copy()
    enc.fit(_sequences(7, 3, 2, seed=4))
    np.testing.assert_array_equal(enc.model_.flat_params, weights)
    with pytest.raises(ValueError, match="features per time step"):
        enc.fit(_sequences(7, 3, 3, seed=4))
    enc.set_params(warm_start=False).fit(X)
    assert not np.array_equal(enc.model_.flat_params, weights)


def test_small_data_messages():
    X = _sequences(6, 4, 1, seed=5)
    y = X[:, :, 0].sum(axis=1)
    with pytest.warns(UserWarning, match="batch_size=50 is larger than the 6 training"):
        _fit_quiet(LSTMRegressor(hidden_sizes=(2,), max_iter=1, batch_size=50,
                                 random_state=0), X, y)
    with pytest.raises(ValueError, match=r"only one class: 0\.0$"):
        LSTMClassifier(hidden_sizes=(2,), max_iter=1).fit(X, np.zeros(6))


def test_stopping_rules_and_curves():
    X = _sequences(60, 6, 1, seed=13)
    y = X[:, :, 0].sum(axis=1)
    # without early stopping: the training loss must improve by tol (MLPRegressor's rule:
    # epoch 1 improves on inf, then n_iter_no_change + 1 epochs without improvement)
    est = LSTMRegressor(hidden_sizes=(4,), max_iter=50, tol=1e9, n_iter_no_change=2,
                        random_state=0).fit(X, y)
    assert est.n_iter_ == 4 == len(est.loss_curve_)
    assert est.best_loss_ == min(est.loss_curve_)
    assert est.validation_scores_ is None and est.best_validation_score_ is None
    assert est.t_ == 4 * 60
    # early stopping: held-out R², best weights kept
    est = LSTMRegressor(hidden_sizes=(4,), max_iter=50, tol=1e9, n_iter_no_change=3,
                        early_stopping=True, validation_fraction=0.25,
                        random_state=0).fit(X, y)
    assert est.n_iter_ == 5 == len(est.validation_scores_) == len(est.loss_curve_)
    assert est.best_validation_score_ == max(est.validation_scores_)
    assert est.best_loss_ is None
    assert est.t_ == 5 * 45
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        LSTMRegressor(hidden_sizes=(4,), max_iter=2, tol=0, random_state=0).fit(X, y)


def test_early_stopping_restores_best_epoch():
    X = _sequences(60, 6, 1, seed=14)
    y = X[:, :, 0].sum(axis=1)
    kw = dict(hidden_sizes=(4,), early_stopping=True, validation_fraction=0.25, tol=0,
              n_iter_no_change=50, learning_rate=0.05, random_state=0)
    est = _fit_quiet(LSTMRegressor(max_iter=12, **kw), X, y)
    best = int(np.argmax(est.validation_scores_)) + 1
    again = _fit_quiet(LSTMRegressor(max_iter=best, **kw), X, y)
    np.testing.assert_array_equal(est.predict(X), again.predict(X))


def test_warm_early_stopping_keeps_the_best_weights_so_far():
    """A warm-started fit with early stopping whose epochs never beat the best score so
    far keeps the weights that scored it (as MLPClassifier keeps _best_coefs); the last
    epoch's weights were kept while best_validation_score_ still reported the old best."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 7, 2))
    y = (X[:, -2:, 0].sum(1) > 0).astype(int)
    clf = _fit_quiet(LSTMClassifier(hidden_sizes=(6,), max_iter=20, random_state=0,
                                    early_stopping=True, n_iter_no_change=3,
                                    learning_rate=0.01), X, y)
    best, weights = clf.best_validation_score_, clf.model_.flat_params.copy()
    clf.set_params(warm_start=True, learning_rate=5.0, max_iter=5)
    _fit_quiet(clf, X, y)
    assert max(clf.validation_scores_[-5:]) <= best       # no epoch beat it
    assert clf.best_validation_score_ == best
    np.testing.assert_array_equal(clf.model_.flat_params, weights)


@pytest.mark.parametrize("cls", [LSTMClassifier, LSTMRegressor])
def test_early_stopping_refuses_a_validation_set_of_one(cls):
    """One held-out sample gives no R² (NaN every epoch: stopping never triggered);
    refused before training, as MLPRegressor does."""
    X = _sequences(10, 4, 1, seed=17)
    y = np.arange(10) % 2
    est = cls(hidden_sizes=(3,), early_stopping=True, validation_fraction=0.1)
    with pytest.raises(ValueError, match="validation set is too small.*holds out 1"):
        est.fit(X, y)
    assert not hasattr(est, "model_")
    _fit_quiet(cls(hidden_sizes=(3,), early_stopping=True, validation_fraction=0.2,
                   max_iter=2), X, y)


def test_fit_does_not_depend_on_blas_threads():
    """Training holds BLAS to one thread, the readout's products included: a fit under
    threadpool_limits(1) (as in joblib workers of GridSearchCV(n_jobs=2)) gives the same
    bits as one with BLAS's own thread count (the readout's gradient differed)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    X = rng.normal(size=(512, 5, 8)).astype(np.float32)
    y = rng.integers(0, 20, 512)

    def fit():
        clf = _fit_quiet(LSTMClassifier(hidden_sizes=(256,), batch_size=256, max_iter=2,
                                        random_state=0), X, y)
        return np.concatenate([clf.model_.flat_params, clf.readout_.flat_params])

    with threadpool_limits(limits=2, user_api="blas"):
        free = fit()
    with threadpool_limits(limits=1, user_api="blas"):
        limited = fit()
    np.testing.assert_array_equal(free, limited)


def test_verbose_prints_one_line_per_epoch(capsys):
    X = _sequences(20, 5, 1, seed=15)
    _fit_quiet(LSTMClassifier(hidden_sizes=(3,), max_iter=3, tol=0, verbose=1,
                              early_stopping=True, validation_fraction=0.3, random_state=0),
               X, np.arange(20) % 2)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Epoch")]
    assert len(lines) == 3
    assert all("loss = " in ln and "validation score = " in ln and " s" in ln for ln in lines)
    assert lines[0].startswith("Epoch 1,") and lines[2].startswith("Epoch 3,")


def test_regressor_learns_noisy_sine():
    # next value of a sine with random phase and frequency, from 20 noisy steps
    rng = np.random.default_rng(16)
    n, T = 400, 20
    phase = rng.uniform(0, 2 * np.pi, n)
    freq = rng.uniform(0.15, 0.35, n)
    t = np.arange(T + 1)
    clean = np.sin(freq[:, None] * t[None, :] + phase[:, None])
    X = (clean[:, :T] + 0.05 * rng.standard_normal((n, T)))[:, :, None]
    y = clean[:, T]
    est = _fit_quiet(LSTMRegressor(hidden_sizes=(16,), max_iter=60, learning_rate=0.01,
                                   random_state=0), X[:300], y[:300])
    assert est.score(X[300:], y[300:]) > 0.9


def test_classifier_separates_two_sequence_classes():
    # rising vs falling noisy ramps of random length (NaN padded)
    rng = np.random.default_rng(17)
    n, T = 300, 15
    label = rng.integers(0, 2, n)
    slope = np.where(label == 1, 1.0, -1.0) * rng.uniform(0.05, 0.2, n)
    X = slope[:, None] * np.arange(T)[None, :] + 0.2 * rng.standard_normal((n, T))
    lengths = rng.integers(5, T + 1, n)
    X[np.arange(T)[None, :] >= lengths[:, None]] = np.nan
    names = np.array(["falling", "rising"])[label]
    est = _fit_quiet(LSTMClassifier(hidden_sizes=(8,), max_iter=30, learning_rate=0.01,
                                    random_state=0), X[:200], names[:200])
    assert list(est.classes_) == ["falling", "rising"]
    assert est.score(X[200:], names[200:]) > 0.95


@pytest.mark.parametrize("n_classes", [2, 3])
def test_classifier_outputs_like_check_classifiers_train(n_classes):
    # what check_classifiers_train asserts after its predict(X.T) step (expected failure)
    X = _sequences(60, 5, 2, seed=18)
    y = np.array(["a", "b", "c"])[np.arange(60) % n_classes]
    est = _fit_quiet(LSTMClassifier(**FAST), X, y)
    proba = est.predict_proba(X)
    assert proba.shape == (60, n_classes)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(est.classes_[np.argmax(proba, axis=1)], est.predict(X))
    np.testing.assert_allclose(est.predict_log_proba(X), np.log(proba), rtol=1e-12)
    assert est.predict(X).shape == (60,)
    assert est.score(X, y) == np.mean(est.predict(X) == y)


def test_encoder_modes():
    X = _sequences(40, 7, 2, seed=19)
    y = X[:, :, 0].sum(axis=1)
    a = LSTMEncoder(hidden_sizes=(5,), random_state=3).fit(X)
    b = LSTMEncoder(hidden_sizes=(5,), random_state=3).fit(X[:5], y[:5])   # y ignored
    np.testing.assert_array_equal(a.transform(X), b.transform(X))
    assert a.n_iter_ == 0 and a.readout_ is None
    assert list(a.get_feature_names_out()) == [f"lstmencoder{i}" for i in range(5)]
    np.testing.assert_array_equal(a.fit_transform(X), a.transform(X))
    trained = _fit_quiet(LSTMEncoder(hidden_sizes=(5,), objective="regression", max_iter=3,
                                     random_state=3), X, y)
    assert trained.n_iter_ == 3
    assert not np.array_equal(trained.transform(X), a.transform(X))
    bi = LSTMEncoder(hidden_sizes=(5, 2), bidirectional=True, random_state=0).fit(X)
    assert bi.transform(X).shape == (40, 4)
    with pytest.raises(ValueError, match="requires y"):
        LSTMEncoder(objective="classification").fit(X)


@pytest.mark.parametrize("params, match", [
    ({"hidden_sizes": (0,)}, "hidden_sizes"),
    ({"hidden_sizes": ()}, "hidden_sizes"),
    ({"dtype": "float16"}, "dtype"),
    ({"dtype": np.int32}, "dtype"),
    ({"n_threads": 0}, "n_threads"),
    ({"optimizer": "rmsprop"}, "optimizer"),
    ({"pooling": "max"}, "pooling"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"validation_fraction": 1.0}, "validation_fraction"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_hyper_parameters_raise_in_fit(params, match):
    est = LSTMRegressor(**params)                      # __init__ only stores them
    with pytest.raises((ValueError, TypeError), match=match):
        est.fit(np.zeros((4, 3)), np.zeros(4))


def test_import_fastlstm_without_scikit_learn():
    import subprocess
    import sys

    code = ("import sys; sys.modules['sklearn'] = None\n"
            "import fastlstm\n"
            "assert fastlstm.LSTM\n"
            "assert 'LSTMRegressor' in dir(fastlstm)\n"
            "try:\n"
            "    from fastlstm import LSTMRegressor\n"
            "except ImportError as exc:\n"
            "    print('ImportError', exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    # the message names the package and the extra that installs it
    assert out.stdout.startswith("ImportError") and "needs scikit-learn" in out.stdout
    assert "fastlstm[sklearn]" in out.stdout


def test_estimators_exported_from_package():
    import fastlstm

    assert fastlstm.LSTMRegressor is LSTMRegressor
    assert fastlstm.LSTMClassifier is LSTMClassifier
    assert fastlstm.LSTMEncoder is LSTMEncoder


def test_failed_refit_keeps_the_fitted_model():
    """A refit refused by its checks (y's length, the early-stopping split) left the
    estimator half-reset: the old model gone, predictions from an untrained network, or
    n_features_in_ disagreeing with the network."""
    X = _sequences(60, 6, 2, seed=3)
    y = np.arange(60) % 3
    clf = _fit_quiet(LSTMClassifier(hidden_sizes=(4,), max_iter=2, random_state=0), X, y)
    before = (clf.predict_proba(X), clf.classes_.copy(), clf.n_iter_)
    clf.set_params(early_stopping=True)
    with pytest.raises(ValueError, match="early_stopping=True cannot hold out"):
        clf.fit(X[:20], np.array(["a"] * 19 + ["b"]))
    np.testing.assert_array_equal(clf.predict_proba(X), before[0])
    np.testing.assert_array_equal(clf.classes_, before[1])
    assert clf.n_iter_ == before[2]
    reg = _fit_quiet(LSTMRegressor(hidden_sizes=(4,), max_iter=2, random_state=0), X,
                     y.astype(float))
    want = reg.predict(X)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        reg.fit(_sequences(60, 6, 3), np.zeros(59))
    assert reg.n_features_in_ == 2
    np.testing.assert_array_equal(reg.predict(X), want)
    enc = LSTMEncoder(hidden_sizes=(4,), random_state=0).fit(X)
    with pytest.raises(ValueError, match="lengths must be in"):
        enc.fit(_sequences(60, 6, 3), lengths=np.zeros(60, int))
    assert enc.n_features_in_ == 2 and enc.transform(X).shape == (60, 4)


def test_values_beyond_float32_are_refused_for_a_float32_network():
    """float64 X with a finite 1e39 turned into inf in the float32 network: NaN losses,
    NaN predictions afterwards."""
    X = _sequences(30, 5, 2, seed=4)
    y = X[:, :, 0].sum(axis=1)
    X[3, 2, 1] = 1e39
    with pytest.raises(ValueError, match="beyond the range of dtype=float32"):
        LSTMRegressor(hidden_sizes=(3,), max_iter=1).fit(X, y)
    reg = _fit_quiet(LSTMRegressor(hidden_sizes=(3,), max_iter=1, dtype="float64",
                                   random_state=0), X, y)
    assert np.isfinite(reg.loss_curve_).all()


def test_regressor_targets_near_the_float64_limit():
    """Targets of ~1e200: their standard deviation overflowed, every prediction was -inf.
    Scaling targets is linear, so predictions are the ones for y / 1e200, times 1e200."""
    X = _sequences(40, 5, 2, seed=5)
    y = X[:, :, 0].sum(axis=1)
    small = _fit_quiet(LSTMRegressor(hidden_sizes=(3,), max_iter=2, random_state=0), X, y)
    huge = _fit_quiet(LSTMRegressor(hidden_sizes=(3,), max_iter=2, random_state=0), X,
                      y * 1e200)
    np.testing.assert_allclose(huge.predict(X) / 1e200, small.predict(X), rtol=1e-4,
                               atol=1e-6)


def test_float32_range_check_reads_x_in_blocks():
    """The check of float64 X against float32's range copied the whole of X (abs, and
    the valid steps with lengths): prediction memory is bounded by the batches again."""
    import tracemalloc
    X = _sequences(2000, 50, 8, seed=6)                      # 6.4 MB of float64
    reg = _fit_quiet(LSTMRegressor(hidden_sizes=(4,), max_iter=1, random_state=0),
                     X[:64], X[:64, 0, 0])
    lengths = np.full(2000, 50)
    lengths[::2] = 30
    for kw in ({}, {"lengths": lengths}):
        reg.predict(X[:300], **{k: v[:300] for k, v in kw.items()})
        tracemalloc.start()
        reg.predict(X, **kw)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < X.nbytes / 2, (kw.keys(), peak)


def test_refused_refit_keeps_the_layers_thread_count():
    X = _sequences(30, 5, 2, seed=7)
    y = np.arange(30) % 2
    clf = _fit_quiet(LSTMClassifier(hidden_sizes=(3,), max_iter=1, random_state=0,
                                    n_threads=1), X, y)
    clf.set_params(n_threads=2, warm_start=True, early_stopping=True, validation_fraction=0.01)
    with pytest.raises(ValueError, match="validation set is too small"):
        clf.fit(X, y)
    assert {layer.n_threads for layer in clf.model_.layers} == {1}   # as fitted


def test_log_proba_of_confident_predictions_is_not_rounded_to_zero():
    # log p of the likely class, -log1p(e^-40) = -4.2e-18, came out as 0
    logp = LSTMClassifier._log_proba(np.array([[0.0, -40.0], [3.0, 3.0]], np.float32))
    np.testing.assert_allclose(logp, [[-np.log1p(np.exp(-40.0)), -40.0 - np.log1p(np.exp(-40.0))],
                                      [-np.log(2.0), -np.log(2.0)]], rtol=1e-15)


def test_tiny_target_spreads_are_standardised_and_constant_targets_are_not():
    # a floor of 1e-12 on the spread left targets of spread ~1e-13 unscaled (training R2
    # of -4.5e22); now only a spread within the rounding of the mean counts as constant
    X = _sequences(40, 6, 2, seed=9)
    y = X[:, -2:, 0].sum(axis=1)
    base = _fit_quiet(LSTMRegressor(**FAST), X, y)
    for factor in (1e-11, 1e-13, 1e-200):
        est = _fit_quiet(LSTMRegressor(**FAST), X, y * factor)
        np.testing.assert_allclose(est.predict(X) / factor, base.predict(X), rtol=1e-6)
    for value in (0.0, 0.1, 1e6):
        est = _fit_quiet(LSTMRegressor(**FAST), X, np.full(40, value))
        assert est._y_scale[0] == 1.0 and np.isfinite(est.predict(X)).all()


@pytest.mark.parametrize("Est", [LSTMRegressor, LSTMClassifier, LSTMEncoder])
def test_fit_warnings_point_at_the_callers_line(Est):
    # scikit-learn's fit wrapper (_fit_context) sits between the caller and fit: a fixed
    # stacklevel pointed into sklearn/base.py
    import inspect

    X = _sequences(20, 6, 2, seed=3)
    y = (X[:, -1, 0] > 0).astype(int) if Est is LSTMClassifier else X[:, -1, 0]
    kw = dict(hidden_sizes=(3,), max_iter=1, batch_size=1000, random_state=0)
    if Est is LSTMEncoder:
        kw["objective"] = "regression"
    for method in ("fit", "partial_fit"):
        est = Est(**kw)
        if not hasattr(est, method):
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            line = inspect.currentframe().f_lineno + 1
            getattr(est, method)(X, y, **({"classes": [0, 1]} if method == "partial_fit"
                                          and Est is LSTMClassifier else {}))
        kinds = {type(w.message) for w in caught}
        assert UserWarning in kinds and (method == "partial_fit" or ConvergenceWarning in kinds)
        for w in caught:
            assert (w.filename, w.lineno) == (__file__, line), (method, str(w.message))


def test_masked_X_is_refused_not_read_under_the_mask():
    X = _sequences(20, 6, 2, seed=4)
    y = X[:, -1, 0]
    est = _fit_quiet(LSTMRegressor(**FAST), X, y)
    junk = X.copy()
    junk[:, 4:] = 1e6
    masked = np.ma.masked_array(junk, mask=np.broadcast_to(
        np.arange(6)[None, :, None] >= 4, X.shape))
    with pytest.raises(TypeError, match="masked array with masked entries"):
        est.predict(masked)
    with pytest.raises(TypeError, match="masked array with masked entries"):
        LSTMRegressor(**FAST).fit(masked, y)
    # a masked array without masked entries is plain data
    np.testing.assert_array_equal(est.predict(np.ma.masked_array(X)), est.predict(X))


def test_masked_lengths_are_refused_not_read_under_the_mask():
    # as the layers refuse them; the estimators read the value under the mask
    X = _sequences(20, 6, 2, seed=4)
    y = X[:, -1, 0]
    est = _fit_quiet(LSTMRegressor(**FAST), X, y)
    L = np.ma.masked_array(np.full(20, 6), mask=np.arange(20) == 3)
    with pytest.raises(TypeError, match="lengths is a masked array with masked entries"):
        est.predict(X, lengths=L)
    with pytest.raises(TypeError, match="lengths is a masked array with masked entries"):
        LSTMRegressor(**FAST).fit(X, y, lengths=L)
    np.testing.assert_array_equal(est.predict(X, lengths=np.ma.masked_array(np.full(20, 6))),
                                  est.predict(X))


def test_partial_fit_checks_parameters_set_since_the_first_call():
    """scikit-learn checks the constraint table on fit and on a first partial_fit only: a
    batch_size of -5 set later ran empty epochs (counted, with a loss of 0), an unknown
    optimizer silently became SGD."""
    from sklearn.utils._param_validation import InvalidParameterError
    X = _sequences(20, 6, 2, seed=5)
    y = X[:, -1, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = LSTMRegressor(**FAST).partial_fit(X, y)
    for bad in (dict(batch_size=-5), dict(batch_size=0), dict(optimizer="rmsprop"),
                dict(alpha=-1.0)):
        est.set_params(**bad)
        with pytest.raises(InvalidParameterError, match=next(iter(bad))):
            est.partial_fit(X, y)
        assert est.n_iter_ == 1
        est.set_params(**{k: LSTMRegressor().get_params()[k] for k in bad})


def test_missing_string_labels_are_a_value_error():
    # np.unique could not sort a NaN among strings: an unclear TypeError
    y = np.array(["a", np.nan, "b", "a"], dtype=object)
    with pytest.raises(ValueError, match="contains NaN"):
        LSTMClassifier(**FAST).fit(np.ones((4, 3)), y)


def test_list_input_beyond_float32_gets_the_range_error():
    # a nested list was cast straight to float32 (inf: "contains infinity", with an
    # overflow warning), where an array gets the range error
    X = _sequences(8, 3, 1, seed=6)[:, :, 0]
    est = _fit_quiet(LSTMRegressor(**FAST), X, X[:, -1])
    for lengths in (None, [3]):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            with pytest.raises(ValueError, match="beyond the range of dtype=float32"):
                est.predict([[0.0, 1e39, 0.0]], lengths=lengths)
    assert est.predict([[0.0, 1.0, 1e39]], lengths=[2]).shape == (1,)


def test_dataframe_column_names_are_checked_as_time_steps():
    pd = pytest.importorskip("pandas")
    import inspect

    X = _sequences(30, 6, 1, seed=5)[:, :, 0]
    y = X[:, -1]
    names = [f"t{k}" for k in range(6)]
    df = pd.DataFrame(X, columns=names)
    est = _fit_quiet(LSTMRegressor(**FAST), df, y)
    assert isinstance(est.feature_names_in_, np.ndarray)
    assert est.feature_names_in_.dtype == object and list(est.feature_names_in_) == names
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = est.predict(df)
        est.predict(df.iloc[:, :4])              # a shorter sequence: the same names
        est.predict(df.assign(t6=df["t5"]))      # a longer one
    for bad in (df[names[::-1]], df.rename(columns={"t2": "x"})):
        with pytest.raises(ValueError, match="feature names should match"):
            est.predict(bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        np.testing.assert_array_equal(est.predict(X), p)
    [w] = [w for w in caught if "valid feature names" in str(w.message)]
    assert (w.filename, w.lineno) == (__file__, line)
    # refit on an array: no names, and a DataFrame then warns the other way
    _fit_quiet(est, X, y)
    assert not hasattr(est, "feature_names_in_")
    with pytest.warns(UserWarning, match="fitted without feature names"):
        est.predict(df)


@pytest.mark.parametrize("Est", [LSTMRegressor, LSTMClassifier, LSTMEncoder])
def test_partial_fit_refuses_early_stopping_as_mlp_does(Est):
    X = _sequences(20, 5, 2, seed=6)
    y = np.arange(20) % 2
    kw = dict(hidden_sizes=(3,), random_state=0, early_stopping=True)
    if Est is LSTMEncoder:
        kw["objective"] = "classification"
    est = Est(**kw)
    extra = {} if Est is LSTMRegressor else {"classes": [0, 1]}
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        est.partial_fit(X, y, **extra)
    assert not hasattr(est, "model_")


def test_lengths_travel_with_metadata_routing():
    # documented: with scikit-learn's metadata routing on, lengths reach fit and score
    from sklearn import config_context
    from sklearn.base import clone
    from sklearn.model_selection import KFold, cross_validate

    rng = np.random.default_rng(11)
    X = rng.standard_normal((36, 6, 2))
    L = rng.integers(2, 7, 36)
    y = X[np.arange(36), L - 1, 0]
    cv = KFold(3)
    with config_context(enable_metadata_routing=True):
        est = LSTMRegressor(**FAST).set_fit_request(lengths=True)
        est.set_score_request(lengths=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            got = cross_validate(est, X, y, cv=cv, params={"lengths": L})["test_score"]
    want = []
    for train, test in cv.split(X):
        fitted = _fit_quiet(clone(LSTMRegressor(**FAST)), X[train], y[train],
                            lengths=L[train])
        want.append(fitted.score(X[test], y[test], lengths=L[test]))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_predicting_uses_the_fitted_dtype_not_the_parameter():
    """set_params(dtype=...) after fit is for the next fit: predict, transform and their
    input checks follow the fitted network's dtype."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 5, 2))
    y = X[:, -1, 0]
    big = X.copy()
    big[0, 0, 0] = 1e39                         # beyond float32's range
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        r32 = LSTMRegressor(hidden_sizes=(3,), max_iter=2, random_state=0).fit(X, y)
        r64 = LSTMRegressor(hidden_sizes=(3,), max_iter=2, random_state=0,
                            dtype="float64").fit(X, y)
        enc = LSTMEncoder(hidden_sizes=(3,), random_state=0).fit(X)
    before = r32.predict(X)
    r32.set_params(dtype="float64")
    np.testing.assert_array_equal(r32.predict(X), before)
    with pytest.raises(ValueError, match="beyond the range of dtype=float32"):
        r32.predict(big)
    r32.set_params(dtype="float16")             # invalid, but only for a refit
    np.testing.assert_array_equal(r32.predict(X), before)
    ok = r64.predict(big)
    r64.set_params(dtype="float32")
    np.testing.assert_array_equal(r64.predict(big), ok)
    enc.set_params(dtype="float64")
    assert enc.transform(X).dtype == np.float32
    assert enc.__sklearn_tags__().transformer_tags.preserves_dtype == ["float32"]
    with pytest.raises(ValueError, match="dtype"):
        r32.fit(X, y)                           # the refit checks the parameter


def test_encoder_refit_with_another_objective_forgets_the_old_targets():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((24, 4, 2))
    labels = np.array(["a", "b", "c"])[rng.integers(0, 3, 24)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        enc = LSTMEncoder(hidden_sizes=(3,), objective="classification", max_iter=2,
                          random_state=0).fit(X, labels)
        assert list(enc.classes_) == ["a", "b", "c"]
        enc.set_params(objective="regression").fit(X, X[:, -1, :])
        assert not hasattr(enc, "classes_") and enc.n_outputs_ == 2
        enc.set_params(objective="reservoir").fit(X)
    assert not hasattr(enc, "classes_") and not hasattr(enc, "n_outputs_")


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="long double is float64 here")
def test_long_double_input_beyond_float32_gets_the_range_message():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((10, 3, 1)).astype(np.longdouble)
    X[0, 0, 0] = 1e39
    with pytest.raises(ValueError, match="beyond the range of dtype=float32"):
        LSTMRegressor(hidden_sizes=(3,), max_iter=1, random_state=0).fit(X, X[:, -1, 0])


def test_object_dataframe_beyond_float32_gets_the_range_message():
    """An object-dtype DataFrame went to check_array, which cast it straight to float32:
    "X contains infinity" for a finite 1e300, as nested lists and object arrays once did.
    Its pd.NA padding still reads as NaN."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(3)
    X = rng.standard_normal((10, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = LSTMRegressor(hidden_sizes=(2,), max_iter=1, random_state=0).fit(X, X[:, 0])
    big = X.astype(object)
    big[0, 0] = 1e300
    with pytest.raises(ValueError, match="holds values up to 1e\\+300, beyond the range"):
        est.predict(pd.DataFrame(big))
    padded = X.astype(object)
    padded[1, 2:] = pd.NA
    want = X.copy()
    want[1, 2:] = np.nan
    np.testing.assert_array_equal(est.predict(pd.DataFrame(padded)), est.predict(want))


@pytest.mark.parametrize("incremental", [False, True])
def test_a_diverged_fit_is_an_error(incremental):
    """As scikit-learn's MLP: a fit whose loss becomes non-finite raises (it used to go
    on for every epoch and leave NaN weights behind ConvergenceWarnings)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 5, 2))
    y = X[:, -1, 0] * 100
    est = LSTMRegressor(hidden_sizes=(4,), max_iter=20, optimizer="sgd", learning_rate=1e4,
                        clip_norm=None, random_state=0)
    with pytest.raises(ValueError, match="the training diverged"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if incremental:
                for _ in range(20):
                    est.partial_fit(X, y)
            else:
                est.fit(X, y)
    assert not np.isfinite(est.loss_curve_[-1]) and len(est.loss_curve_) < 20
