"""The tutorial's torch models, both editions (the two-layer nets and the sine fits), and the bridge to the
numpy weights of the problem (backproplab/data/)."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn


# lesson: sequential
def sequential(d_in: int, hidden: int, d_out: int, bias: bool = True) -> nn.Sequential:
    """The "PyTorch: nn" model."""
    return nn.Sequential(nn.Linear(d_in, hidden, bias=bias), nn.ReLU(), nn.Linear(hidden, d_out, bias=bias))
# lesson: end


# lesson: custom
class TwoLayerNet(nn.Module):
    """The "Custom nn Modules" model."""

    def __init__(self, d_in: int, hidden: int, d_out: int, bias: bool = True):
        super().__init__()
        self.linear1 = nn.Linear(d_in, hidden, bias=bias)
        self.linear2 = nn.Linear(hidden, d_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_relu = self.linear1(x).clamp(min=0)
        return self.linear2(h_relu)
# lesson: end


# lesson: dynamic
class DynamicNet(nn.Module):
    """The "Control flow + weight sharing" model: the middle layer is reused 0..max_repeats times.

    Training passes the seeded schedule's ``repeats``; without it, a model in training mode draws them like the
    tutorial does, and one in eval mode (``model.eval()``, as logged) takes its deepest path, ``max_repeats``: the
    served rule of backproplab.forward, deterministic.
    """

    def __init__(self, d_in: int, hidden: int, d_out: int, bias: bool = True, max_repeats: int = 3):
        super().__init__()
        self.max_repeats = max_repeats
        self.input_linear = nn.Linear(d_in, hidden, bias=bias)
        self.middle_linear = nn.Linear(hidden, hidden, bias=bias)
        self.output_linear = nn.Linear(hidden, d_out, bias=bias)

    def forward(self, x: torch.Tensor, repeats: int | None = None) -> torch.Tensor:
        if repeats is None:
            repeats = random.randint(0, self.max_repeats) if self.training else self.max_repeats
        h_relu = self.input_linear(x).clamp(min=0)
        for _ in range(repeats):
            h_relu = self.middle_linear(h_relu).clamp(min=0)
        return self.output_linear(h_relu)
# lesson: end


# -- the sine edition: y = sin(x) fitted by a formula of a few parameters (conf/model/poly3.yaml, ...) ------------
def _scalar() -> nn.Parameter:
    return nn.Parameter(torch.randn(()))


# lesson: poly3
class Polynomial3(nn.Module):
    """The sine edition's custom Module: y = a + b x + c x^2 + d x^3."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = _scalar(), _scalar(), _scalar(), _scalar()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a + self.b * x + self.c * x**2 + self.d * x**3

    def string(self) -> str:
        return f"y = {self.a.item()} + {self.b.item()} x + {self.c.item()} x^2 + {self.d.item()} x^3"
# lesson: end


# lesson: legendre3
class Legendre3(nn.Module):
    """y = a + b P3(c + d x), P3 through autograd (the function trainer uses the hand-written Function)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = _scalar(), _scalar(), _scalar(), _scalar()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.c + self.d * x
        return self.a + self.b * 0.5 * (5 * z**3 - 3 * z)
# lesson: end


# lesson: poly_nn
class Powers(nn.Module):
    """x -> (x, x^2, ..., x^n) as the last dimension: the nn example's features, inside the model so that a
    logged model takes x itself."""

    def __init__(self, n: int = 3):
        super().__init__()
        self.register_buffer("p", torch.arange(1, n + 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-1).pow(self.p.to(x.dtype))
# lesson: end


# lesson: poly_nn
def poly_nn() -> nn.Sequential:
    """The sine edition's nn model: (x, x^2, x^3) -> Linear(3, 1) -> Flatten(0, 1)."""
    return nn.Sequential(Powers(3), nn.Linear(3, 1), nn.Flatten(0, 1))
# lesson: end


# lesson: poly_dynamic
class DynamicPolynomial(nn.Module):
    """The sine edition's DynamicNet: a cubic plus 0..max_extra_terms terms e x^4, e x^5, ... sharing e.

    Training passes the seeded schedule's count (``repeats``); without it, a model in training mode draws it like
    the tutorial does, and one in eval mode takes every extra term (backproplab.forward's served rule)."""

    def __init__(self, max_extra_terms: int = 2):
        super().__init__()
        self.max_extra_terms = max_extra_terms
        self.a, self.b, self.c, self.d, self.e = (_scalar() for _ in range(5))

    def forward(self, x: torch.Tensor, repeats: int | None = None) -> torch.Tensor:
        if repeats is None:
            repeats = random.randint(0, self.max_extra_terms) if self.training else self.max_extra_terms
        y = self.a + self.b * x + self.c * x**2 + self.d * x**3
        for exp in range(4, 4 + repeats):  # the same e for every extra term
            y = y + self.e * x**exp
        return y
# lesson: end


# -- numpy weights <-> torch parameters ------------------------------------------------------------------------
def _linears(model: nn.Module) -> list[nn.Linear]:
    # Registration order is the layer order: first, [middle,] last.
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _layer_names(model: nn.Module) -> list[str]:
    return {1: ["1"], 2: ["1", "2"], 3: ["1", "m", "2"]}[len(_linears(model))]


@torch.no_grad()
def load_weights(model: nn.Module, weights: dict[str, np.ndarray]) -> nn.Module:
    """Copy the problem's numpy weights into the model: into its Linear layers (x @ w orientation -> w.T),
    or, for a model of named scalars (the sine fits), parameter by parameter."""
    if not _linears(model):
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(np.asarray(weights[name])))
        return model
    for layer, linear in zip(_layer_names(model), _linears(model), strict=True):
        linear.weight.copy_(torch.from_numpy(weights["w" + layer].T.copy()))
        if linear.bias is not None:
            linear.bias.copy_(torch.from_numpy(weights["b" + layer]))
    return model


@torch.no_grad()
def export_weights(model: nn.Module, attr: str = "data") -> dict[str, np.ndarray]:
    """The inverse of load_weights: the model's parameters (or, with attr="grad", their gradients) as
    numpy arrays in the problem's naming and orientation."""

    def read(p: torch.Tensor) -> np.ndarray:
        value = getattr(p, attr)
        if value is None:  # no gradient: a dynamic model skipped that parameter at that step
            value = torch.zeros_like(p)
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()  # numpy has no bfloat16

    if not _linears(model):
        return {name: read(p).copy() for name, p in model.named_parameters()}
    out = {}
    for layer, linear in zip(_layer_names(model), _linears(model), strict=True):
        out["w" + layer] = read(linear.weight).T.copy()
        if linear.bias is not None:
            out["b" + layer] = read(linear.bias).copy()
    return out
