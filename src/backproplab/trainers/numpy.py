"""Warm-up: numpy. Forward and backward pass by hand, on the CPU.

The tutorial's loop, plus what the config may add: biases (model.bias), the mean loss (loss=mse_mean) and the
dynamic net, whose shared middle layer is applied problem.repeats[i] times at step i; its gradients are
summed over those uses, which is exactly what autograd does with a reused weight.
"""

from __future__ import annotations

import time

import numpy as np
from omegaconf import DictConfig

from backproplab.problem import Problem
from backproplab.steps import OnStep, Result


def train(problem: Problem, cfg: DictConfig, on_step: OnStep) -> Result:
    x, y = problem.x, problem.y
    params = {name: w.copy() for name, w in problem.weights.items()}  # updated in place below
    w1, wm, w2 = params["w1"], params.get("wm"), params["w2"]
    # without model.bias a bias is a plain 0, which adds nothing
    b1, bm, b2 = (params.get(name, 0.0) for name in ("b1", "bm", "b2"))
    repeats = problem.repeats if problem.repeats is not None else np.zeros(cfg.trainer.max_steps, int)
    # loss=mse_mean divides the summed squares (and so their gradient) by N * D_out
    count = 1 if cfg.loss.reduction == "sum" else y.size
    learning_rate = cfg.optim.lr
    grads0: dict[str, np.ndarray] = {}

    start = time.perf_counter()
    for i in range(cfg.trainer.max_steps):
        # Forward pass: compute predicted y
        h = x.dot(w1) + b1
        h_relu = np.maximum(h, 0)
        middle = []  # the dynamic net: (input, pre-activation) of each use of the middle layer
        for _ in range(repeats[i]):
            h_m = h_relu.dot(wm) + bm
            middle.append((h_relu, h_m))
            h_relu = np.maximum(h_m, 0)
        y_pred = h_relu.dot(w2) + b2

        # Compute and report loss
        loss = np.square(y_pred - y).sum() / count
        on_step(i, float(loss))

        # Backprop to compute gradients of the weights with respect to loss
        grad_y_pred = 2.0 * (y_pred - y) / count
        grad_w2 = h_relu.T.dot(grad_y_pred)
        grad_h_relu = grad_y_pred.dot(w2.T)
        grad_wm = grad_bm = 0.0
        for h_in, h_m in reversed(middle):  # last use first; a shared weight sums its gradients
            grad_h_m = grad_h_relu.copy()
            grad_h_m[h_m < 0] = 0
            grad_wm = grad_wm + h_in.T.dot(grad_h_m)
            grad_bm = grad_bm + grad_h_m.sum(0)
            grad_h_relu = grad_h_m.dot(wm.T)
        grad_h = grad_h_relu.copy()
        grad_h[h < 0] = 0
        grad_w1 = x.T.dot(grad_h)
        grads = {
            "w1": grad_w1, "b1": grad_h.sum(0),
            "wm": grad_wm, "bm": grad_bm,
            "w2": grad_w2, "b2": grad_y_pred.sum(0),
        }
        if i == 0:  # an unused middle layer has a zero gradient of its own shape
            grads0 = {name: np.broadcast_to(grads[name], w.shape).copy() for name, w in params.items()}

        # Update weights
        for name, w in params.items():
            w -= learning_rate * grads[name]
    loop_s = time.perf_counter() - start
    return Result(weights=params, loop_s=loop_s, grads0=grads0)
