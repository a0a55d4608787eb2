"""The problem every trainer solves: seeded data, initial weights and a dynamic model's per-step schedule.

A problem family is a data option: ``conf/data/<name>.yaml`` names its module (``backproplab.data.<name>``),
whose ``make(cfg)`` returns a :class:`Problem`. Plain numpy on purpose: each backend converts these same
arrays, which is what makes runs comparable across numpy, torch, Lightning and TensorFlow (and the
equivalence check in equivalence.py possible).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig


@dataclass
class Problem:
    x: np.ndarray
    y: np.ndarray
    weights: dict[str, np.ndarray]  # initial weights, named as the model's data module says
    repeats: np.ndarray | None  # a dynamic model's choice at each step (repeats, extra terms), else None
    name: str = ""  # what it trains on, as MLflow's dataset name: "random-64x1000", "sine-2000"
    # the fitted function as a formula ("y = 0.01 + 0.85 x + ...") and as curves on the data's x, one per
    # shape the model can take; only where a model is a formula worth reading (the sine edition)
    formula: Callable[[dict[str, np.ndarray]], str] | None = None
    curves: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None

    @property
    def dtype(self) -> np.dtype:
        return self.x.dtype


def streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent generators for data, initial weights and the schedule, all from one seed: changing the
    model (say, its hidden size) leaves the data unchanged."""
    data, init, schedule = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3))
    return data, init, schedule


def make_problem(cfg: DictConfig) -> Problem:
    """The problem of ``cfg.data``, built by the module its yaml names."""
    return importlib.import_module(cfg.data.module).make(cfg)
