"""The problem every trainer solves: seeded data, initial weights and the dynamic net's schedule.

Plain numpy on purpose: each backend converts these same arrays, which is what makes runs comparable
across numpy, torch, Lightning and TensorFlow (and the equivalence check in verify.py possible).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

# Weights are kept in the tutorial's orientation, y = x @ w + b:
# w1 (d_in, hidden), wm (hidden, hidden) for the dynamic net's shared middle layer, w2 (hidden, d_out).
LAYERS = {"sequential": ("1", "2"), "custom": ("1", "2"), "dynamic": ("1", "m", "2")}


@dataclass
class Problem:
    x: np.ndarray
    y: np.ndarray
    weights: dict[str, np.ndarray]  # w1, b1, [wm, bm,] w2, b2 (b* only with model.bias)
    repeats: np.ndarray | None  # dynamic net: middle-layer repeats at each step, else None

    @property
    def dtype(self) -> np.dtype:
        return self.x.dtype


def make_problem(cfg: DictConfig) -> Problem:
    """Draw data, initial weights and the repeat schedule from independent streams of ``cfg.seed``.

    Independent streams mean that changing the model (say, its hidden size) leaves the data unchanged.
    """
    data_rng, init_rng, schedule_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(cfg.seed)).spawn(3)
    )
    dtype = np.dtype(cfg.data.dtype)
    x = data_rng.standard_normal((cfg.data.n, cfg.data.d_in)).astype(dtype)
    y = data_rng.standard_normal((cfg.data.n, cfg.data.d_out)).astype(dtype)
    weights = init_weights(cfg, init_rng, dtype)
    repeats = None
    if cfg.model.name == "dynamic":
        # the tutorial's random.randint(0, 3) at every forward pass, drawn up front from the seed
        repeats = schedule_rng.integers(0, cfg.model.max_repeats + 1, size=cfg.trainer.max_steps)
    return Problem(x=x, y=y, weights=weights, repeats=repeats)


def init_weights(cfg: DictConfig, rng: np.random.Generator, dtype: np.dtype) -> dict[str, np.ndarray]:
    """``init=randn``: the tutorial's standard-normal weights (biases too).
    ``init=default``: torch's nn.Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    h = cfg.model.hidden
    shapes = {"1": (cfg.data.d_in, h), "m": (h, h), "2": (h, cfg.data.d_out)}
    weights = {}
    for layer in LAYERS[cfg.model.name]:
        fan_in, fan_out = shapes[layer]
        names = [("w" + layer, (fan_in, fan_out))]
        if cfg.model.bias:
            names.append(("b" + layer, (fan_out,)))
        for name, shape in names:
            if cfg.model.init == "randn":
                w = rng.standard_normal(shape)
            else:
                bound = 1.0 / np.sqrt(fan_in)
                w = rng.uniform(-bound, bound, size=shape)
            weights[name] = w.astype(dtype)
    return weights
