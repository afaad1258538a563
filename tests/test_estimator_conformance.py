"""The estimator conformance suite on the PyTorch Estimator (Keras's and the adapters' run in
test_keras.py and test_adapters.py)."""

from __future__ import annotations

from modelhopper.testing import EstimatorConformance, make_test_estimator
from modelhopper.testing._executor import _dataset


class TestPyTorchEstimator(EstimatorConformance):
    params = {"hidden": 16, "lr": 1e-2}

    def make_estimator(self, params):
        return make_test_estimator(params)

    def dataset(self):
        data = _dataset()
        return data.train.x, data.train.y, data.validation.x, data.validation.y
