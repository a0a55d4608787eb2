"""The tutorial's problem for a reference loop run as a process: random data and weights, as the tutorial
draws them (standard normal; biases for the nn-style nets)."""

from __future__ import annotations

import numpy as np

N, D_IN, H, D_OUT = 64, 1000, 100, 10
STEPS = 500


def tutorial_problem(dtype: type = np.float32, bias: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D_IN)).astype(dtype)
    y = rng.standard_normal((N, D_OUT)).astype(dtype)
    if bias:  # nn.Linear's own initialization: uniform in +-1/sqrt(fan_in)
        weights = {"w1": rng.uniform(-1, 1, (D_IN, H)) / np.sqrt(D_IN), "b1": rng.uniform(-1, 1, H) / np.sqrt(D_IN),
                   "w2": rng.uniform(-1, 1, (H, D_OUT)) / np.sqrt(H), "b2": rng.uniform(-1, 1, D_OUT) / np.sqrt(H)}
    else:
        weights = {"w1": rng.standard_normal((D_IN, H)), "w2": rng.standard_normal((H, D_OUT))}
    return x, y, {k: w.astype(dtype) for k, w in weights.items()}


def report(losses: list[float]) -> None:
    for step in range(0, len(losses), 100):
        print(step, losses[step])
