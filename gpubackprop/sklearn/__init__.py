"""scikit-learn's MLP estimators, trained on gpubackprop's backends (GPU when there is one).

Swap ``from sklearn.neural_network import MLPClassifier`` for
``from gpubackprop.sklearn import MLPClassifier``; see README.md, "For
scikit-learn users".
"""

from .estimators import MLPClassifier, MLPRegressor

__all__ = ["MLPClassifier", "MLPRegressor"]
