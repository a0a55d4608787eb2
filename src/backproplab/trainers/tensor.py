"""PyTorch: Tensors. The numpy trainer's math on torch tensors, backward by hand, on the CPU or a CUDA device.

One loop, as in trainers/numpy.py; each model's forward and backward passes are written out below, one function
each: the two-layer net (with ``model.bias``, a bias on each layer, a plain 0 without it), the dynamic net (its
shared middle layer applied ``repeats`` times, its gradients summed over those uses) and the sine edition's cubic.
``loss=mse_mean`` divides the summed squares, and so their gradient, by N * D_out.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from backproplab.problem import Problem
from backproplab.steps import OnStep, Result, Settings
from backproplab.trainers._torch import device, to_numpy, to_torch

Grads = dict[str, torch.Tensor]
Params = dict[str, torch.Tensor]
# a model's pass: (params, x, repeats at this step) -> (y_pred, backward: dloss/dy_pred -> gradients)
Pass = Callable[[Params, torch.Tensor, int], tuple[torch.Tensor, Callable[[torch.Tensor], Grads]]]


# lesson: two_layer_net
def two_layer_net(params: Params, x: torch.Tensor, repeats: int = 0) -> tuple[torch.Tensor, Callable]:
    w1, w2 = params["w1"], params["w2"]
    h = x.mm(w1) + params.get("b1", 0.0)
    h_relu = h.clamp(min=0)
    y_pred = h_relu.mm(w2) + params.get("b2", 0.0)

    def backward(grad_y_pred: torch.Tensor) -> Grads:
        grad_w2 = h_relu.t().mm(grad_y_pred)
        grad_h_relu = grad_y_pred.mm(w2.t())
        grad_h = grad_h_relu.clone()
        grad_h[h < 0] = 0
        grad_w1 = x.t().mm(grad_h)
        return {"w1": grad_w1, "w2": grad_w2, "b1": grad_h.sum(0), "b2": grad_y_pred.sum(0)}

    return y_pred, backward
# lesson: end


# lesson: dynamic_net
def dynamic_net(params: Params, x: torch.Tensor, repeats: int) -> tuple[torch.Tensor, Callable]:
    w1, wm, w2 = params["w1"], params["wm"], params["w2"]
    b1, bm, b2 = (params.get(name, 0.0) for name in ("b1", "bm", "b2"))
    h = x.mm(w1) + b1
    h_relu = h.clamp(min=0)
    middle = []  # (input, pre-activation) of each use of the shared middle layer
    for _ in range(repeats):
        h_m = h_relu.mm(wm) + bm
        middle.append((h_relu, h_m))
        h_relu = h_m.clamp(min=0)
    y_pred = h_relu.mm(w2) + b2

    def backward(grad_y_pred: torch.Tensor) -> Grads:
        grad_w2 = h_relu.t().mm(grad_y_pred)
        grad_h_relu = grad_y_pred.mm(w2.t())
        grad_wm = grad_bm = 0.0  # a layer unused at this step has no gradient: 0
        for h_in, h_m in reversed(middle):  # last use first; a shared weight sums its gradients
            grad_h_m = grad_h_relu.clone()
            grad_h_m[h_m < 0] = 0
            grad_wm = grad_wm + h_in.t().mm(grad_h_m)
            grad_bm = grad_bm + grad_h_m.sum(0)
            grad_h_relu = grad_h_m.mm(wm.t())
        grad_h = grad_h_relu.clone()
        grad_h[h < 0] = 0
        grad_w1 = x.t().mm(grad_h)
        return {"w1": grad_w1, "wm": grad_wm, "w2": grad_w2,
                "b1": grad_h.sum(0), "bm": grad_bm, "b2": grad_y_pred.sum(0)}

    return y_pred, backward
# lesson: end


# lesson: poly3
def poly3(params: Params, x: torch.Tensor, repeats: int = 0) -> tuple[torch.Tensor, Callable]:
    a, b, c, d = (params[k] for k in "abcd")
    y_pred = a + b * x + c * x**2 + d * x**3

    def backward(grad_y_pred: torch.Tensor) -> Grads:
        return {
            "a": grad_y_pred.sum(), "b": (grad_y_pred * x).sum(),
            "c": (grad_y_pred * x**2).sum(), "d": (grad_y_pred * x**3).sum(),
        }

    return y_pred, backward
# lesson: end


PASSES: dict[str, Pass] = {"dynamic": dynamic_net, "poly3": poly3}  # else: two_layer_net


def _data(problem: Problem, settings: Settings) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
    dev = device(settings.accelerator)
    data = to_torch({"x": problem.x, "y": problem.y}, dev)
    return data["x"], data["y"], dev


def train(problem: Problem, settings: Settings, on_step: OnStep) -> Result:
    x, y, dev = _data(problem, settings)
    params = to_torch(problem.weights, dev)  # updated in place below
    model = PASSES.get(settings.model, two_layer_net)
    repeats = problem.repeats.tolist() if problem.repeats is not None else [0] * settings.max_steps
    count = 1 if settings.reduction == "sum" else y.numel()
    learning_rate = settings.lr

    start = time.perf_counter()
    # lesson: step
    for t in range(settings.max_steps):
        # Forward pass: compute predicted y
        y_pred, backward = model(params, x, repeats[t])

        # Compute and report loss
        loss = ((y_pred - y).pow(2).sum() / count).item()
        on_step(t, loss)

        # Backprop to compute gradients of the weights with respect to loss
        grads = backward(2.0 * (y_pred - y) / count)

        # Update weights
        for name, w in params.items():
            w -= learning_rate * grads[name]
    # lesson: end
    return Result(weights=to_numpy(params), loop_s=time.perf_counter() - start)


def gradients(problem: Problem, settings: Settings) -> dict[str, np.ndarray]:
    """The first step's gradients, by the same passes as the loop's (for verify); an unused middle layer: 0."""
    x, y, dev = _data(problem, settings)
    params = to_torch(problem.weights, dev)
    repeats = int(problem.repeats[0]) if problem.repeats is not None else 0
    count = 1 if settings.reduction == "sum" else y.numel()
    y_pred, backward = PASSES.get(settings.model, two_layer_net)(params, x, repeats)
    grads = backward(2.0 * (y_pred - y) / count)
    return to_numpy({name: torch.zeros_like(w) + grads[name] for name, w in params.items()})


def predict(weights: dict[str, np.ndarray], problem: Problem, settings: Settings) -> np.ndarray:
    """This trainer's forward pass of ``weights`` on problem.x, at a dynamic model's served depth: what the
    logged model must predict."""
    x, _, dev = _data(problem, settings)
    y_pred, _ = PASSES.get(settings.model, two_layer_net)(to_torch(weights, dev), x, settings.served_repeats)
    return y_pred.cpu().numpy()
