"""PyTorch: Tensors. The numpy trainer's math on torch tensors, backward by hand, on the CPU or a CUDA device.

One loop, as in trainers/numpy.py; the model's forward and backward passes are written out below: the
two-layer net (biases, the mean loss and the dynamic net as in the numpy trainer) and the sine edition's cubic.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from omegaconf import DictConfig

from backproplab.forward import served_repeats
from backproplab.problem import Problem
from backproplab.steps import OnStep, Result
from backproplab.trainers._torch import device, to_numpy, to_torch

Grads = dict[str, torch.Tensor]
Pass = Callable[[dict[str, torch.Tensor], torch.Tensor, int], tuple[torch.Tensor, Callable[[torch.Tensor], Grads]]]


# lesson: two_layer_net
def two_layer_net(params: dict[str, torch.Tensor], x: torch.Tensor, repeats: int) -> tuple[torch.Tensor, Callable]:
    w1, wm, w2 = params["w1"], params.get("wm"), params["w2"]
    # without model.bias a bias is a plain 0, which adds nothing
    b1, bm, b2 = (params.get(name, 0.0) for name in ("b1", "bm", "b2"))
    h = x.mm(w1) + b1
    h_relu = h.clamp(min=0)
    middle = []  # the dynamic net: (input, pre-activation) of each use of the middle layer
    for _ in range(repeats):
        h_m = h_relu.mm(wm) + bm
        middle.append((h_relu, h_m))
        h_relu = h_m.clamp(min=0)
    y_pred = h_relu.mm(w2) + b2

    def backward(grad_y_pred: torch.Tensor) -> Grads:
        grad_w2 = h_relu.t().mm(grad_y_pred)
        grad_h_relu = grad_y_pred.mm(w2.t())
        grad_wm = grad_bm = 0.0
        for h_in, h_m in reversed(middle):  # last use first; a shared weight sums its gradients
            grad_h_m = grad_h_relu.clone()
            grad_h_m[h_m < 0] = 0
            grad_wm = grad_wm + h_in.t().mm(grad_h_m)
            grad_bm = grad_bm + grad_h_m.sum(0)
            grad_h_relu = grad_h_m.mm(wm.t())
        grad_h = grad_h_relu.clone()
        grad_h[h < 0] = 0
        grad_w1 = x.t().mm(grad_h)
        return {
            "w1": grad_w1, "b1": grad_h.sum(0),
            "wm": grad_wm, "bm": grad_bm,
            "w2": grad_w2, "b2": grad_y_pred.sum(0),
        }

    return y_pred, backward
# lesson: end


# lesson: poly3
def poly3(params: dict[str, torch.Tensor], x: torch.Tensor, repeats: int) -> tuple[torch.Tensor, Callable]:
    a, b, c, d = (params[k] for k in "abcd")
    y_pred = a + b * x + c * x**2 + d * x**3

    def backward(grad_y_pred: torch.Tensor) -> Grads:
        return {
            "a": grad_y_pred.sum(), "b": (grad_y_pred * x).sum(),
            "c": (grad_y_pred * x**2).sum(), "d": (grad_y_pred * x**3).sum(),
        }

    return y_pred, backward
# lesson: end


PASSES: dict[str, Pass] = {"poly3": poly3}  # any other model: the two-layer net


def train(problem: Problem, cfg: DictConfig, on_step: OnStep) -> Result:
    dev = device(cfg)
    data = to_torch({"x": problem.x, "y": problem.y}, dev)
    x, y = data["x"], data["y"]
    params = to_torch(problem.weights, dev)  # updated in place below
    model = PASSES.get(cfg.model.name, two_layer_net)
    repeats = problem.repeats.tolist() if problem.repeats is not None else [0] * cfg.trainer.max_steps
    # loss=mse_mean divides the summed squares (and so their gradient) by N * D_out
    count = 1 if cfg.loss.reduction == "sum" else y.numel()
    learning_rate = cfg.optim.lr
    grads0: dict[str, torch.Tensor] = {}

    start = time.perf_counter()
    # lesson: step
    for i in range(cfg.trainer.max_steps):
        # Forward pass: compute predicted y
        y_pred, backward = model(params, x, repeats[i])

        # Compute and report loss
        loss = ((y_pred - y).pow(2).sum() / count).item()
        on_step(i, loss)

        # Backprop to compute gradients of the weights with respect to loss
        grads = backward(2.0 * (y_pred - y) / count)
        # lesson: end
        if i == 0:  # an unused middle layer has a zero gradient of its own shape
            grads0 = {name: torch.zeros_like(w) + grads[name] for name, w in params.items()}

        # lesson: step
        # Update weights
        for name, w in params.items():
            w -= learning_rate * grads[name]
        # lesson: end
    loop_s = time.perf_counter() - start
    outputs, _ = model(params, x, served_repeats(cfg.model))  # what its logged model must predict
    return Result(weights=to_numpy(params), loop_s=loop_s, grads0=to_numpy(grads0), outputs=outputs.cpu().numpy())
