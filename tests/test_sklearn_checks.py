"""scikit-learn's own estimator checks on both estimators (sklearn.utils.estimator_checks).

The checked instances are scikit-learn's own test settings for its MLPs
(``max_iter=100``), on the NumPy reference backend; every check runs.
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from gpubackprop.sklearn import MLPClassifier, MLPRegressor

#: scikit-learn checks its own MLPs with max_iter=100.
CHECKED = [MLPClassifier(max_iter=100, device="numpy"), MLPRegressor(max_iter=100, device="numpy")]


@parametrize_with_checks(CHECKED)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
