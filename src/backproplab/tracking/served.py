"""The model a run of a trainer without a torch module logs (numpy, tensor, autograd, function, tensorflow, tf2,
jax): its final weights and the model's forward pass in numpy (backproplab.forward).

MLflow's models-from-code: ``tracking/logged_model.py`` logs this file as the model's code, the weights
(``weights.npz``: the run's one copy of them) as its artifact and the model's name, served depth and dtype as its
``model_config``; MLflow runs the file when it loads the model. Loading needs numpy, MLflow and backproplab
(``--env-manager local``), never torch, TensorFlow or JAX. A dynamic model predicts at its deepest path
(backproplab.forward.served_repeats): deterministic.
"""

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

from backproplab.forward import forward


class NumpyForward(PythonModel):
    """x (n x D_in, or the sine edition's n values) -> y, in the run's dtype."""

    def load_context(self, context: Any) -> None:
        with np.load(context.artifacts["weights"]) as arrays:
            self.weights = {name: arrays[name] for name in arrays.files}
        self.config = dict(context.model_config)

    # np.ndarray: a hint MLflow infers no schema from (its tensor signature is logged_model.py's); no
    # `from __future__ import annotations` here, as MLflow reads the hint itself
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        x = np.asarray(model_input, dtype=self.config["dtype"])
        return forward(self.config["model"], self.weights, x, int(self.config["repeats"]))


mlflow.models.set_model(NumpyForward())
