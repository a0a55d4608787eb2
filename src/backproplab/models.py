"""The tutorial's three torch models, and the bridge to the numpy weights of problem.py."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn


def sequential(d_in: int, hidden: int, d_out: int, bias: bool = True) -> nn.Sequential:
    """The "PyTorch: nn" model."""
    return nn.Sequential(nn.Linear(d_in, hidden, bias=bias), nn.ReLU(), nn.Linear(hidden, d_out, bias=bias))


class TwoLayerNet(nn.Module):
    """The "Custom nn Modules" model."""

    def __init__(self, d_in: int, hidden: int, d_out: int, bias: bool = True):
        super().__init__()
        self.linear1 = nn.Linear(d_in, hidden, bias=bias)
        self.linear2 = nn.Linear(hidden, d_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_relu = self.linear1(x).clamp(min=0)
        return self.linear2(h_relu)


class DynamicNet(nn.Module):
    """The "Control flow + weight sharing" model: the middle layer is reused 0..max_repeats times.

    Training passes the seeded schedule's ``repeats``; without it the forward pass draws them like the
    tutorial does, so a loaded model still varies its depth.
    """

    def __init__(self, d_in: int, hidden: int, d_out: int, bias: bool = True, max_repeats: int = 3):
        super().__init__()
        self.max_repeats = max_repeats
        self.input_linear = nn.Linear(d_in, hidden, bias=bias)
        self.middle_linear = nn.Linear(hidden, hidden, bias=bias)
        self.output_linear = nn.Linear(hidden, d_out, bias=bias)

    def forward(self, x: torch.Tensor, repeats: int | None = None) -> torch.Tensor:
        if repeats is None:
            repeats = random.randint(0, self.max_repeats)
        h_relu = self.input_linear(x).clamp(min=0)
        for _ in range(repeats):
            h_relu = self.middle_linear(h_relu).clamp(min=0)
        return self.output_linear(h_relu)


def _linears(model: nn.Module) -> list[nn.Linear]:
    # Registration order is the layer order for all three models: first, [middle,] last.
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _layer_names(model: nn.Module) -> list[str]:
    return ["1", "m", "2"] if len(_linears(model)) == 3 else ["1", "2"]


@torch.no_grad()
def load_weights(model: nn.Module, weights: dict[str, np.ndarray]) -> nn.Module:
    """Copy problem.py's numpy weights (x @ w orientation) into the model's Linear layers (w.T)."""
    for layer, linear in zip(_layer_names(model), _linears(model), strict=True):
        linear.weight.copy_(torch.from_numpy(weights["w" + layer].T.copy()))
        if linear.bias is not None:
            linear.bias.copy_(torch.from_numpy(weights["b" + layer]))
    return model


@torch.no_grad()
def export_weights(model: nn.Module, attr: str = "data") -> dict[str, np.ndarray]:
    """The inverse of load_weights: the model's parameters (or, with attr="grad", their gradients) as
    numpy arrays in problem.py's naming and orientation."""

    def read(p: torch.Tensor) -> np.ndarray:
        value = getattr(p, attr)
        if value is None:  # no gradient: the dynamic net skipped its middle layer at that step
            value = torch.zeros_like(p)
        return value.detach().cpu().numpy()

    out = {}
    for layer, linear in zip(_layer_names(model), _linears(model), strict=True):
        out["w" + layer] = read(linear.weight).T.copy()
        if linear.bias is not None:
            out["b" + layer] = read(linear.bias).copy()
    return out
