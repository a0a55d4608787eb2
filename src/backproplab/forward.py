"""Every model's forward pass in numpy, on the weights in problem.py's naming and orientation: what a run's
logged model computes when MLflow loads or serves it (tracking/served.py), and what the sine edition's fit curves
are drawn with (data/sine.py).

Numpy only, on purpose: a served model needs neither torch, TensorFlow nor JAX, whichever trainer made it.

A dynamic model draws its depth at each training step. Served, it is deterministic: it takes its deepest path,
``served_repeats`` (the dynamic net's middle layer ``max_repeats`` times; the sine edition's every extra term), so
that every weight it trained is used and the same x always gives the same y. ``model.eval()`` gives the torch
models (backproplab.models) the same rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Weights = dict[str, np.ndarray]


def served_repeats(model: Any) -> int:
    """A dynamic model's repeat count at inference (its deepest path); 0 for the others. ``model``: cfg.model."""
    return int(model.get("max_repeats", model.get("max_extra_terms", 0)))


def two_layer(w: Weights, x: np.ndarray, repeats: int = 0) -> np.ndarray:
    """The original edition's net, y = relu(x w1 + b1) w2 + b2; the dynamic net reuses (wm, bm) ``repeats``
    times in the middle. Without model.bias there is no b: it adds nothing."""
    h = np.maximum(x @ w["w1"] + w.get("b1", 0.0), 0)
    for _ in range(repeats):
        h = np.maximum(h @ w["wm"] + w.get("bm", 0.0), 0)
    return h @ w["w2"] + w.get("b2", 0.0)


def poly3(w: Weights, x: np.ndarray) -> np.ndarray:
    return w["a"] + w["b"] * x + w["c"] * x**2 + w["d"] * x**3


def legendre3(w: Weights, x: np.ndarray) -> np.ndarray:
    z = w["c"] + w["d"] * x
    return w["a"] + w["b"] * 0.5 * (5 * z**3 - 3 * z)


def poly_nn(w: Weights, x: np.ndarray) -> np.ndarray:
    features = np.stack([x, x**2, x**3], axis=-1)  # (x, x^2, x^3) -> Linear(3, 1) -> Flatten(0, 1)
    return (features @ w["w1"] + w["b1"])[:, 0]


def poly_dynamic(w: Weights, x: np.ndarray, extra: int) -> np.ndarray:
    y = poly3(w, x)
    for exp in range(4, 4 + extra):  # every extra term shares e
        y = y + w["e"] * x**exp
    return y


# the sine edition's forms by model name (a dynamic one takes its count of extra terms)
SINE: dict[str, Callable[..., np.ndarray]] = {
    "poly3": poly3, "legendre3": legendre3, "poly_nn": poly_nn, "poly_dynamic": poly_dynamic,
}


def forward(model: str, w: Weights, x: np.ndarray, repeats: int = 0) -> np.ndarray:
    """Model ``model``'s prediction for x (n x D_in, or the sine edition's n values of x)."""
    if model == "poly_dynamic":
        return poly_dynamic(w, x, repeats)
    if model in SINE:
        return SINE[model](w, x)
    return two_layer(w, x, repeats)
