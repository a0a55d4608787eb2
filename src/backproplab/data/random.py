"""The original edition's problem: standard-normal x (n x d_in) and y (n x d_out), the two-layer net's weights
and the dynamic net's repeat schedule, all drawn from the run's seed."""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from backproplab.problem import Problem, streams

# Weights are kept in the tutorial's orientation, y = x @ w + b:
# w1 (d_in, hidden), wm (hidden, hidden) for the dynamic net's shared middle layer, w2 (hidden, d_out).
LAYERS = {"sequential": ("1", "2"), "custom": ("1", "2"), "dynamic": ("1", "m", "2")}


def make(cfg: DictConfig) -> Problem:
    """Draw data, initial weights and the repeat schedule from independent streams of ``cfg.seed``."""
    data_rng, init_rng, schedule_rng = streams(cfg.seed)
    dtype = np.dtype(cfg.data.dtype)
    x = data_rng.standard_normal((cfg.data.n, cfg.data.d_in)).astype(dtype)
    y = data_rng.standard_normal((cfg.data.n, cfg.data.d_out)).astype(dtype)
    weights = init_weights(cfg, init_rng, dtype)
    repeats = None
    if "max_repeats" in cfg.model:  # the dynamic net
        # the tutorial's random.randint(0, 3) at every forward pass, drawn up front from the seed
        repeats = schedule_rng.integers(0, cfg.model.max_repeats + 1, size=cfg.trainer.max_steps)
    name = f"random-{cfg.data.n}x{cfg.data.d_in}"
    return Problem(x=x, y=y, weights=weights, repeats=repeats, name=name)


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
