"""PyTorch: Tensors and autograd. The forward pass only; ``loss.backward()`` computes the gradients, and the
update is done by hand under ``torch.no_grad()``.

The model's forward pass is one of:
- the two-layer net; with ``model.bias`` it adds a bias to each layer, which is a plain 0 without it;
- the dynamic net, whose shared middle layer is applied problem.repeats[t] times at step t: autograd sums its
  gradients over those uses by itself;
- the sine edition's cubic (poly3) or a + b P3(c + d x) (legendre3).
``loss=mse_mean`` takes the mean of the squares rather than their sum.
The function trainer reuses this loop with the tutorial's own Functions (``relu=``, ``p3=``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from backproplab.problem import Problem
from backproplab.steps import OnStep, Result, Settings
from backproplab.trainers._torch import device, to_numpy, to_torch

Fn = Callable[[torch.Tensor], torch.Tensor]
Params = dict[str, torch.Tensor]
Forward = Callable[[Params, torch.Tensor, int], torch.Tensor]  # (params, x, repeats at this step) -> y_pred


# lesson: clamp_relu
def clamp_relu(h: torch.Tensor) -> torch.Tensor:
    return h.clamp(min=0)
# lesson: end


# lesson: legendre_p3
def legendre_p3(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (5 * z**3 - 3 * z)
# lesson: end


# lesson: two_layer_net
def two_layer_net(params: Params, x: torch.Tensor, repeats: int = 0, relu: Fn = clamp_relu) -> torch.Tensor:
    h_relu = relu(x.mm(params["w1"]) + params.get("b1", 0.0))
    return h_relu.mm(params["w2"]) + params.get("b2", 0.0)
# lesson: end


# lesson: dynamic_net
def dynamic_net(params: Params, x: torch.Tensor, repeats: int, relu: Fn = clamp_relu) -> torch.Tensor:
    b1, bm, b2 = (params.get(name, 0.0) for name in ("b1", "bm", "b2"))
    h_relu = relu(x.mm(params["w1"]) + b1)
    for _ in range(repeats):  # the same middle layer each time: autograd sums its gradients over the uses
        h_relu = relu(h_relu.mm(params["wm"]) + bm)
    return h_relu.mm(params["w2"]) + b2
# lesson: end


# lesson: poly3
def poly3(params: Params, x: torch.Tensor, repeats: int = 0) -> torch.Tensor:
    a, b, c, d = (params[k] for k in "abcd")
    return a + b * x + c * x**2 + d * x**3
# lesson: end


# lesson: legendre3
def legendre3(params: Params, x: torch.Tensor, repeats: int = 0, p3: Fn = legendre_p3) -> torch.Tensor:
    a, b, c, d = (params[k] for k in "abcd")
    return a + b * p3(c + d * x)
# lesson: end


PASSES: dict[str, Callable[..., torch.Tensor]] = {"dynamic": dynamic_net, "poly3": poly3, "legendre3": legendre3}


def model_pass(model: str, relu: Fn = clamp_relu, p3: Fn = legendre_p3) -> Forward:
    """Model ``model``'s forward pass (the two-layer net unless PASSES names it), with ``relu`` in the nets and
    ``p3`` in legendre3 (the function trainer's own Functions)."""
    fn = PASSES.get(model, two_layer_net)
    if fn is poly3:
        return fn
    return partial(fn, p3=p3) if fn is legendre3 else partial(fn, relu=relu)


def _data(problem: Problem, settings: Settings) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
    dev = device(settings.accelerator)
    data = to_torch({"x": problem.x, "y": problem.y}, dev)
    return data["x"], data["y"], dev


def train(
    problem: Problem, settings: Settings, on_step: OnStep, relu: Fn = clamp_relu, p3: Fn = legendre_p3
) -> Result:
    x, y, dev = _data(problem, settings)
    params = to_torch(problem.weights, dev, requires_grad=True)
    model = model_pass(settings.model, relu, p3)
    repeats = problem.repeats.tolist() if problem.repeats is not None else [0] * settings.max_steps
    reduce = torch.sum if settings.reduction == "sum" else torch.mean
    learning_rate = settings.lr

    start = time.perf_counter()
    # lesson: step
    for t in range(settings.max_steps):
        # Forward pass: compute predicted y using operations on Tensors
        y_pred = model(params, x, repeats[t])

        # Compute and report loss
        loss = reduce((y_pred - y).pow(2))
        on_step(t, loss.item())

        # Use autograd to compute the backward pass
        loss.backward()

        # Update weights by hand; autograd must not track it
        with torch.no_grad():
            for w in params.values():
                if w.grad is not None:  # a layer no step has used yet has none (the dynamic net)
                    w -= learning_rate * w.grad
                    w.grad.zero_()
    # lesson: end
    return Result(weights=to_numpy(params), loop_s=time.perf_counter() - start)


def gradients(
    problem: Problem, settings: Settings, relu: Fn = clamp_relu, p3: Fn = legendre_p3
) -> dict[str, np.ndarray]:
    """The first step's gradients, by the loop's forward pass and ``loss.backward()`` (for verify); a layer
    unused at that step has no .grad: 0."""
    x, y, dev = _data(problem, settings)
    params = to_torch(problem.weights, dev, requires_grad=True)
    repeats = int(problem.repeats[0]) if problem.repeats is not None else 0
    reduce = torch.sum if settings.reduction == "sum" else torch.mean
    reduce((model_pass(settings.model, relu, p3)(params, x, repeats) - y).pow(2)).backward()
    return to_numpy({n: (w.grad if w.grad is not None else torch.zeros_like(w)) for n, w in params.items()})


def predict(
    weights: dict[str, np.ndarray], problem: Problem, settings: Settings, relu: Fn = clamp_relu, p3: Fn = legendre_p3
) -> np.ndarray:
    """This trainer's forward pass of ``weights`` on problem.x, at a dynamic model's served depth: what the
    logged model must predict."""
    x, _, dev = _data(problem, settings)
    with torch.no_grad():
        return model_pass(settings.model, relu, p3)(to_torch(weights, dev), x, settings.served_repeats).cpu().numpy()
