"""PyTorch: Tensors and autograd. The forward pass only; ``loss.backward()`` computes the
gradients, and the update is done by hand under ``torch.no_grad()``.

The config may add biases, the mean loss and the dynamic net (the shared middle layer is applied
problem.repeats[i] times at step i: autograd sums its gradients over those uses by itself).
The function trainer reuses this loop with the tutorial's MyReLU (``relu=``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from omegaconf import DictConfig

from backproplab.problem import Problem
from backproplab.steps import OnStep, Result
from backproplab.trainers._torch import device, to_numpy, to_torch


def clamp_relu(h: torch.Tensor) -> torch.Tensor:
    return h.clamp(min=0)


def train(
    problem: Problem, cfg: DictConfig, on_step: OnStep, relu: Callable[[torch.Tensor], torch.Tensor] = clamp_relu
) -> Result:
    dev = device(cfg)
    data = to_torch({"x": problem.x, "y": problem.y}, dev)
    x, y = data["x"], data["y"]
    params = to_torch(problem.weights, dev, requires_grad=True)
    w1, wm, w2 = params["w1"], params.get("wm"), params["w2"]
    # without model.bias a bias is a plain 0, which adds nothing
    b1, bm, b2 = (params.get(name, 0.0) for name in ("b1", "bm", "b2"))
    repeats = problem.repeats.tolist() if problem.repeats is not None else [0] * cfg.trainer.max_steps
    reduce = torch.sum if cfg.loss.reduction == "sum" else torch.mean
    learning_rate = cfg.optim.lr
    grads0: dict[str, np.ndarray] = {}

    start = time.perf_counter()
    for i in range(cfg.trainer.max_steps):
        # Forward pass: compute predicted y using operations on Tensors
        h_relu = relu(x.mm(w1) + b1)
        for _ in range(repeats[i]):  # the dynamic net reuses its middle layer
            h_relu = relu(h_relu.mm(wm) + bm)
        y_pred = h_relu.mm(w2) + b2

        # Compute and report loss
        loss = reduce((y_pred - y).pow(2))
        on_step(i, loss.item())

        # Use autograd to compute the backward pass
        loss.backward()
        if i == 0:  # a middle layer unused at this step has no .grad yet
            grads0 = {n: (w.grad if w.grad is not None else torch.zeros_like(w)) for n, w in params.items()}
            grads0 = to_numpy(grads0)

        # Update weights by hand; autograd must not track it
        with torch.no_grad():
            for w in params.values():
                if w.grad is not None:
                    w -= learning_rate * w.grad
                    w.grad.zero_()
    loop_s = time.perf_counter() - start
    return Result(weights=to_numpy(params), loop_s=loop_s, grads0=grads0)
