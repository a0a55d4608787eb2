"""Warm-up: numpy. Forward and backward pass by hand, on the CPU.

One loop, the tutorial's: forward, loss, backward, update. Each model's forward and backward passes are written
out below, one function each:
- the two-layer net (the original edition); with ``model.bias`` it adds a bias to each layer, which is a plain 0
  without it;
- the dynamic net, whose shared middle layer is applied ``repeats`` times at a step; its gradients are summed
  over those uses, which is exactly what autograd does with a reused weight;
- the sine edition's cubic (poly3) and a + b P3(c + d x) (legendre3).

``loss=mse_mean`` divides the summed squares, and so their gradient, by N * D_out.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from backproplab.problem import Problem
from backproplab.steps import OnStep, Result, Settings

Grads = dict[str, np.ndarray]
Params = dict[str, np.ndarray]
# a model's pass: (params, x, repeats at this step) -> (y_pred, backward: dloss/dy_pred -> gradients)
Pass = Callable[[Params, np.ndarray, int], tuple[np.ndarray, Callable[[np.ndarray], Grads]]]


# lesson: two_layer_net
def two_layer_net(params: Params, x: np.ndarray, repeats: int = 0) -> tuple[np.ndarray, Callable]:
    w1, w2 = params["w1"], params["w2"]
    h = x.dot(w1) + params.get("b1", 0.0)
    h_relu = np.maximum(h, 0)
    y_pred = h_relu.dot(w2) + params.get("b2", 0.0)

    def backward(grad_y_pred: np.ndarray) -> Grads:
        grad_w2 = h_relu.T.dot(grad_y_pred)
        grad_h_relu = grad_y_pred.dot(w2.T)
        grad_h = grad_h_relu.copy()
        grad_h[h < 0] = 0
        grad_w1 = x.T.dot(grad_h)
        return {"w1": grad_w1, "w2": grad_w2, "b1": grad_h.sum(0), "b2": grad_y_pred.sum(0)}

    return y_pred, backward
# lesson: end


# lesson: dynamic_net
def dynamic_net(params: Params, x: np.ndarray, repeats: int) -> tuple[np.ndarray, Callable]:
    w1, wm, w2 = params["w1"], params["wm"], params["w2"]
    b1, bm, b2 = (params.get(name, 0.0) for name in ("b1", "bm", "b2"))
    h = x.dot(w1) + b1
    h_relu = np.maximum(h, 0)
    middle = []  # (input, pre-activation) of each use of the shared middle layer
    for _ in range(repeats):
        h_m = h_relu.dot(wm) + bm
        middle.append((h_relu, h_m))
        h_relu = np.maximum(h_m, 0)
    y_pred = h_relu.dot(w2) + b2

    def backward(grad_y_pred: np.ndarray) -> Grads:
        grad_w2 = h_relu.T.dot(grad_y_pred)
        grad_h_relu = grad_y_pred.dot(w2.T)
        grad_wm, grad_bm = np.zeros_like(wm), np.zeros(wm.shape[1], wm.dtype)
        for h_in, h_m in reversed(middle):  # last use first; a shared weight sums its gradients
            grad_h_m = grad_h_relu.copy()
            grad_h_m[h_m < 0] = 0
            grad_wm += h_in.T.dot(grad_h_m)
            grad_bm += grad_h_m.sum(0)
            grad_h_relu = grad_h_m.dot(wm.T)
        grad_h = grad_h_relu.copy()
        grad_h[h < 0] = 0
        grad_w1 = x.T.dot(grad_h)
        return {"w1": grad_w1, "wm": grad_wm, "w2": grad_w2,
                "b1": grad_h.sum(0), "bm": grad_bm, "b2": grad_y_pred.sum(0)}

    return y_pred, backward
# lesson: end


# lesson: poly3
def poly3(params: Params, x: np.ndarray, repeats: int = 0) -> tuple[np.ndarray, Callable]:
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
def legendre3(params: Params, x: np.ndarray, repeats: int = 0) -> tuple[np.ndarray, Callable]:
    a, b, c, d = (params[k] for k in "abcd")
    z = c + d * x
    p3 = 0.5 * (5 * z**3 - 3 * z)  # the Legendre polynomial of degree 3
    y_pred = a + b * p3

    def backward(grad_y_pred: np.ndarray) -> Grads:
        grad_z = grad_y_pred * b * 1.5 * (5 * z**2 - 1)  # P3'(z) = 1.5 (5 z^2 - 1)
        return {"a": grad_y_pred.sum(), "b": (grad_y_pred * p3).sum(), "c": grad_z.sum(), "d": (grad_z * x).sum()}

    return y_pred, backward
# lesson: end


PASSES: dict[str, Pass] = {"dynamic": dynamic_net, "poly3": poly3, "legendre3": legendre3}  # else: two_layer_net


def train(problem: Problem, settings: Settings, on_step: OnStep) -> Result:
    x, y = problem.x, problem.y
    params = {name: w.copy() for name, w in problem.weights.items()}  # updated in place below
    model = PASSES.get(settings.model, two_layer_net)
    repeats = problem.repeats if problem.repeats is not None else np.zeros(settings.max_steps, int)
    count = 1 if settings.reduction == "sum" else y.size
    learning_rate = settings.lr

    start = time.perf_counter()
    # lesson: step
    for t in range(settings.max_steps):
        # Forward pass: compute predicted y
        y_pred, backward = model(params, x, int(repeats[t]))

        # Compute and report loss
        loss = np.square(y_pred - y).sum() / count
        on_step(t, float(loss))

        # Backprop to compute gradients of the weights with respect to loss
        grads = backward(2.0 * (y_pred - y) / count)

        # Update weights
        for name, w in params.items():
            w -= learning_rate * grads[name]
    # lesson: end
    return Result(weights=params, loop_s=time.perf_counter() - start)


def gradients(problem: Problem, settings: Settings) -> Grads:
    """The first step's gradients, by the same pass as the loop's (for verify)."""
    model = PASSES.get(settings.model, two_layer_net)
    repeats = int(problem.repeats[0]) if problem.repeats is not None else 0
    count = 1 if settings.reduction == "sum" else problem.y.size
    y_pred, backward = model(problem.weights, problem.x, repeats)
    grads = backward(2.0 * (y_pred - problem.y) / count)
    return {name: np.broadcast_to(grads[name], w.shape).copy() for name, w in problem.weights.items()}


def predict(weights: Params, problem: Problem, settings: Settings) -> np.ndarray:
    """This trainer's forward pass of ``weights`` on problem.x, at a dynamic model's served depth: what the
    logged model must predict."""
    y_pred, _ = PASSES.get(settings.model, two_layer_net)(weights, problem.x, settings.served_repeats)
    return y_pred
