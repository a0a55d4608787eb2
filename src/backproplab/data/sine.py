"""The current edition's problem: y = sin(x) on x = linspace(-pi, pi, n), fitted by a formula with a handful
of parameters (conf/model/poly3.yaml, legendre3, poly_nn, poly_dynamic).

Each of those models' yaml names its parameters (``params``), how they start (``init``, ``start``) and how its
fit reads (``formula``); this module draws them from the run's seed and evaluates the fit on x for the record
(``curves``: backproplab.forward's numpy passes, the same math as the trainers').
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
from omegaconf import DictConfig, OmegaConf

from backproplab.forward import SINE
from backproplab.problem import Problem, streams

Weights = dict[str, np.ndarray]


def make(cfg: DictConfig) -> Problem:
    _, init_rng, schedule_rng = streams(cfg.seed)
    dtype = np.dtype(cfg.data.dtype)
    x64 = np.linspace(-np.pi, np.pi, cfg.data.n)
    x, y = x64.astype(dtype), np.sin(x64).astype(dtype)
    weights = init_weights(cfg.model, init_rng, dtype)
    repeats = None
    if "max_extra_terms" in cfg.model:  # the dynamic model: how many of e x^4, e x^5, ... at each step
        # the tutorial's random.randint(4, 6) at every forward pass (terms 4 .. k-1), drawn up front from the seed
        repeats = schedule_rng.integers(0, cfg.model.max_extra_terms + 1, size=cfg.trainer.max_steps)
    form = SINE[cfg.model.name]
    shapes = int(cfg.model.get("max_extra_terms", -1)) + 1  # 0: not dynamic
    template = str(cfg.model.formula)
    for exp in range(4, 4 + int(cfg.model.get("max_extra_terms", 0))):  # the terms a step may add, marked "?"
        template += f" + {{e:.4g}} x^{exp} ?"
    return Problem(
        x=x,
        y=y,
        weights=weights,
        repeats=repeats,
        name=f"sine-{cfg.data.n}",
        formula=partial(formula, template),
        curves=partial(curves, form, x, shapes),
    )


def init_weights(model: DictConfig, rng: np.random.Generator, dtype: np.dtype) -> Weights:
    """``randn``: standard normal (the tutorial's ``torch.randn(())``); ``fixed``: ``model.start``;
    ``default``: torch's nn.Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in being the first dimension of
    the model's weight matrix (1 for a model of scalars)."""
    shapes = {name: tuple(shape) for name, shape in OmegaConf.to_container(model.params).items()}
    fan_in = next((s[0] for s in shapes.values() if len(s) == 2), 1)
    weights = {}
    for name, shape in shapes.items():
        if model.init == "fixed":
            w = np.full(shape, float(model.start[name]))
        elif model.init == "randn":
            w = rng.standard_normal(shape)
        else:
            w = rng.uniform(-1 / np.sqrt(fan_in), 1 / np.sqrt(fan_in), size=shape)
        weights[name] = np.asarray(w, dtype=dtype)
    return weights


def formula(template: str, weights: Weights) -> str:
    """The fit as the tutorial prints it: ``y = 0.0012 + 0.8563 x + ...`` (``model.formula`` filled in)."""
    text = template.format(**{name: np.asarray(w).tolist() for name, w in weights.items()})
    return text.replace("+ -", "- ")


def curves(form: Callable[..., np.ndarray], x: np.ndarray, shapes: int, weights: Weights) -> dict[str, np.ndarray]:
    """The fitted function on x: one curve, or one per shape of the dynamic model (0, 1, 2 extra terms)."""
    w = {name: np.asarray(v, np.float64) for name, v in weights.items()}
    x = np.asarray(x, np.float64)
    if shapes == 0:
        return {"fit": form(w, x)}
    return {f"{k} extra term{'s' * (k != 1)}": form(w, x, k) for k in range(shapes)}
