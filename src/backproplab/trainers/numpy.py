"""Warm-up: numpy. Forward and backward pass by hand, on the CPU.

One loop, the tutorial's: forward, loss, backward, update. What the forward and backward passes compute is the
model's, each written out below:
- the two-layer net (the original edition), with what the config may add: biases (model.bias), the mean loss
  (loss=mse_mean) and the dynamic net, whose shared middle layer is applied problem.repeats[i] times at step
  i; its gradients are summed over those uses, which is exactly what autograd does with a reused weight;
- the sine edition's cubic (poly3) and a + b P3(c + d x) (legendre3).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from omegaconf import DictConfig

from backproplab.forward import served_repeats
from backproplab.problem import Problem
from backproplab.steps import OnStep, Result

Grads = dict[str, np.ndarray]
# a model's pass: (params, x, repeats at this step) -> (y_pred, backward: dloss/dy_pred -> gradients)
Pass = Callable[[dict[str, np.ndarray], np.ndarray, int], tuple[np.ndarray, Callable[[np.ndarray], Grads]]]


# lesson: two_layer_net
def two_layer_net(params: dict[str, np.ndarray], x: np.ndarray, repeats: int) -> tuple[np.ndarray, Callable]:
    w1, wm, w2 = params["w1"], params.get("wm"), params["w2"]
    # without model.bias a bias is a plain 0, which adds nothing
    b1, bm, b2 = (params.get(name, 0.0) for name in ("b1", "bm", "b2"))
    h = x.dot(w1) + b1
    h_relu = np.maximum(h, 0)
    middle = []  # the dynamic net: (input, pre-activation) of each use of the middle layer
    for _ in range(repeats):
        h_m = h_relu.dot(wm) + bm
        middle.append((h_relu, h_m))
        h_relu = np.maximum(h_m, 0)
    y_pred = h_relu.dot(w2) + b2

    def backward(grad_y_pred: np.ndarray) -> Grads:
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
        return {
            "w1": grad_w1, "b1": grad_h.sum(0),
            "wm": grad_wm, "bm": grad_bm,
            "w2": grad_w2, "b2": grad_y_pred.sum(0),
        }

    return y_pred, backward
# lesson: end


# lesson: poly3
def poly3(params: dict[str, np.ndarray], x: np.ndarray, repeats: int) -> tuple[np.ndarray, Callable]:
    a, b, c, d = (params[k] for k in "abcd")
    y_pred = a + b * x + c * x**2 + d * x**3

    def backward(grad_y_pred: np.ndarray) -> Grads:
        return {
            "a": grad_y_pred.sum(), "b": (grad_y_pred * x).sum(),
            "c": (grad_y_pred * x**2).sum(), "d": (grad_y_pred * x**3).sum(),
        }

    return y_pred, backward
# lesson: end


# lesson: legendre3
def legendre3(params: dict[str, np.ndarray], x: np.ndarray, repeats: int) -> tuple[np.ndarray, Callable]:
    a, b, c, d = (params[k] for k in "abcd")
    z = c + d * x
    p3 = 0.5 * (5 * z**3 - 3 * z)  # the Legendre polynomial of degree 3
    y_pred = a + b * p3

    def backward(grad_y_pred: np.ndarray) -> Grads:
        grad_z = grad_y_pred * b * 1.5 * (5 * z**2 - 1)  # P3'(z) = 1.5 (5 z^2 - 1)
        return {"a": grad_y_pred.sum(), "b": (grad_y_pred * p3).sum(), "c": grad_z.sum(), "d": (grad_z * x).sum()}

    return y_pred, backward
# lesson: end


PASSES: dict[str, Pass] = {"poly3": poly3, "legendre3": legendre3}  # any other model: the two-layer net


def train(problem: Problem, cfg: DictConfig, on_step: OnStep) -> Result:
    x, y = problem.x, problem.y
    params = {name: w.copy() for name, w in problem.weights.items()}  # updated in place below
    model = PASSES.get(cfg.model.name, two_layer_net)
    repeats = problem.repeats if problem.repeats is not None else np.zeros(cfg.trainer.max_steps, int)
    # loss=mse_mean divides the summed squares (and so their gradient) by N * D_out
    count = 1 if cfg.loss.reduction == "sum" else y.size
    learning_rate = cfg.optim.lr
    grads0: dict[str, np.ndarray] = {}

    start = time.perf_counter()
    # lesson: step
    for i in range(cfg.trainer.max_steps):
        # Forward pass: compute predicted y
        y_pred, backward = model(params, x, int(repeats[i]))

        # Compute and report loss
        loss = np.square(y_pred - y).sum() / count
        on_step(i, float(loss))

        # Backprop to compute gradients of the weights with respect to loss
        grads = backward(2.0 * (y_pred - y) / count)
        # lesson: end
        if i == 0:  # an unused middle layer has a zero gradient of its own shape
            grads0 = {name: np.broadcast_to(grads[name], w.shape).copy() for name, w in params.items()}

        # lesson: step
        # Update weights
        for name, w in params.items():
            w -= learning_rate * grads[name]
        # lesson: end
    loop_s = time.perf_counter() - start
    outputs, _ = model(params, x, served_repeats(cfg.model))  # what its logged model must predict
    return Result(weights=params, loop_s=loop_s, grads0=grads0, outputs=outputs)
