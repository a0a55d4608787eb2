"""PyTorch: Tensors and autograd. The forward pass only; ``loss.backward()`` computes the gradients, and the
update is done by hand under ``torch.no_grad()``.

The model's forward pass is one of:
- the two-layer net, with biases, the mean loss and the dynamic net as the config says (the shared middle
  layer is applied problem.repeats[i] times at step i: autograd sums its gradients over those uses by itself);
- the sine edition's cubic (poly3) or a + b P3(c + d x) (legendre3).
The function trainer reuses this loop with the tutorial's own Functions (``relu=``, ``p3=``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from omegaconf import DictConfig

from backproplab.forward import served_repeats
from backproplab.problem import Problem
from backproplab.steps import OnStep, Result
from backproplab.trainers._torch import device, to_numpy, to_torch

Fn = Callable[[torch.Tensor], torch.Tensor]


# lesson: clamp_relu
def clamp_relu(h: torch.Tensor) -> torch.Tensor:
    return h.clamp(min=0)
# lesson: end


# lesson: legendre_p3
def legendre_p3(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (5 * z**3 - 3 * z)
# lesson: end


# lesson: two_layer_net
def two_layer_net(params: dict[str, torch.Tensor], x: torch.Tensor, repeats: int, relu: Fn) -> torch.Tensor:
    w1, wm, w2 = params["w1"], params.get("wm"), params["w2"]
    # without model.bias a bias is a plain 0, which adds nothing
    b1, bm, b2 = (params.get(name, 0.0) for name in ("b1", "bm", "b2"))
    h_relu = relu(x.mm(w1) + b1)
    for _ in range(repeats):  # the dynamic net reuses its middle layer
        h_relu = relu(h_relu.mm(wm) + bm)
    return h_relu.mm(w2) + b2
# lesson: end


# lesson: poly3
def poly3(params: dict[str, torch.Tensor], x: torch.Tensor, repeats: int) -> torch.Tensor:
    a, b, c, d = (params[k] for k in "abcd")
    return a + b * x + c * x**2 + d * x**3
# lesson: end


# lesson: legendre3
def legendre3(params: dict[str, torch.Tensor], x: torch.Tensor, repeats: int, p3: Fn) -> torch.Tensor:
    a, b, c, d = (params[k] for k in "abcd")
    return a + b * p3(c + d * x)
# lesson: end


def train(
    problem: Problem, cfg: DictConfig, on_step: OnStep, relu: Fn = clamp_relu, p3: Fn = legendre_p3
) -> Result:
    dev = device(cfg)
    data = to_torch({"x": problem.x, "y": problem.y}, dev)
    x, y = data["x"], data["y"]
    params = to_torch(problem.weights, dev, requires_grad=True)
    forward = {"poly3": poly3, "legendre3": partial(legendre3, p3=p3)}.get(
        cfg.model.name, partial(two_layer_net, relu=relu)
    )
    repeats = problem.repeats.tolist() if problem.repeats is not None else [0] * cfg.trainer.max_steps
    reduce = torch.sum if cfg.loss.reduction == "sum" else torch.mean
    learning_rate = cfg.optim.lr
    grads0: dict[str, np.ndarray] = {}

    start = time.perf_counter()
    # lesson: step
    for i in range(cfg.trainer.max_steps):
        # Forward pass: compute predicted y using operations on Tensors
        y_pred = forward(params, x, repeats[i])

        # Compute and report loss
        loss = reduce((y_pred - y).pow(2))
        on_step(i, loss.item())

        # Use autograd to compute the backward pass
        loss.backward()
        # lesson: end
        if i == 0:  # a middle layer unused at this step has no .grad yet
            grads0 = {n: (w.grad if w.grad is not None else torch.zeros_like(w)) for n, w in params.items()}
            grads0 = to_numpy(grads0)

        # lesson: step
        # Update weights by hand; autograd must not track it
        with torch.no_grad():
            for w in params.values():
                if w.grad is not None:
                    w -= learning_rate * w.grad
                    w.grad.zero_()
        # lesson: end
    loop_s = time.perf_counter() - start
    with torch.no_grad():  # what its logged model must predict
        outputs = forward(params, x, served_repeats(cfg.model)).cpu().numpy()
    return Result(weights=to_numpy(params), loop_s=loop_s, grads0=grads0, outputs=outputs)
