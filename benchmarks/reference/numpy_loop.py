"""Two-layer ReLU net in numpy: forward pass, squared-error loss, backward pass by hand, plain SGD."""

from __future__ import annotations

import time

import numpy as np


def loop(x: np.ndarray, y: np.ndarray, weights: dict, lr: float, steps: int) -> tuple[float, list[float]]:
    w1, w2 = weights["w1"].copy(), weights["w2"].copy()
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        hidden = x @ w1
        active = np.maximum(hidden, 0)
        out = active @ w2
        err = out - y
        losses.append(float((err**2).sum()))
        d_out = 2.0 * err  # d loss / d out
        d_w2 = active.T @ d_out
        d_hidden = d_out @ w2.T
        d_hidden[hidden < 0] = 0  # ReLU passes the gradient only where it was open
        d_w1 = x.T @ d_hidden
        w1 -= lr * d_w1
        w2 -= lr * d_w2
    return time.perf_counter() - start, losses


if __name__ == "__main__":
    from _problem import STEPS, report, tutorial_problem

    report(loop(*tutorial_problem(np.float64), lr=1e-6, steps=STEPS)[1])
