"""The trainers, side by side. Each is one module with ``train(problem, cfg, on_step) -> Result`` that
reads like its tutorial example; this registry names them and is imported lazily, so that choosing the
numpy trainer never pays for importing torch, Lightning or TensorFlow.

Adding a trainer: one file here, one entry in TRAINERS, one yaml in conf/trainer/, one test.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ALL_MODELS = ("sequential", "custom", "dynamic")
ALL_OPTIMS = ("sgd", "sgd_momentum", "adam", "rmsprop", "adagrad")

OnStep = Callable[[int, float], None]


@dataclass
class Result:
    weights: dict[str, np.ndarray]  # final weights in problem.py's naming and orientation
    loop_s: float  # wall time of the training loop alone
    model: Any = None  # the trained torch.nn.Module, for the torch trainers
    grads0: dict[str, np.ndarray] = field(default_factory=dict)  # gradients of the first step


@dataclass(frozen=True)
class TrainerSpec:
    module: str
    models: tuple[str, ...] = ALL_MODELS
    optims: tuple[str, ...] = ALL_OPTIMS
    gpu: bool = True
    why: str = ""  # shown when a combination is refused


HAND_OPTIMS = ("sgd",)
TRAINERS: dict[str, TrainerSpec] = {
    "lightning": TrainerSpec("backproplab.trainers.lightning"),
    "numpy": TrainerSpec("backproplab.trainers.numpy", optims=HAND_OPTIMS, gpu=False),
    "tensor": TrainerSpec("backproplab.trainers.tensor", optims=HAND_OPTIMS),
    "autograd": TrainerSpec("backproplab.trainers.autograd", optims=HAND_OPTIMS),
    "function": TrainerSpec("backproplab.trainers.function", optims=HAND_OPTIMS),
    "tensorflow": TrainerSpec(
        "backproplab.trainers.tensorflow",
        models=("sequential", "custom"),
        optims=HAND_OPTIMS,
        why=" (a static graph has no per-step Python control flow)",
    ),
}


def get_train(name: str) -> Callable[..., Result]:
    return importlib.import_module(TRAINERS[name].module).train
