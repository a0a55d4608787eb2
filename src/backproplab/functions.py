"""The tutorial's own autograd Functions: its ReLU ("Defining new autograd functions") and, in the sine edition,
the Legendre polynomial P3."""

from __future__ import annotations

from typing import Any

import torch


# lesson: MyReLU
class MyReLU(torch.autograd.Function):
    """ReLU with a hand-written backward: the gradient passes where the input was not negative."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor) -> torch.Tensor:
        # keep the input: the backward pass needs to know where it was negative
        ctx.save_for_backward(input)
        return input.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        (input,) = ctx.saved_tensors
        grad_input = grad_output.clone()
        grad_input[input < 0] = 0
        return grad_input
# lesson: end


# lesson: LegendrePolynomial3
class LegendrePolynomial3(torch.autograd.Function):
    """The sine edition's custom Function: P3(z) = (5 z^3 - 3 z) / 2, whose derivative is written by hand,
    1.5 (5 z^2 - 1)."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(input)
        return 0.5 * (5 * input**3 - 3 * input)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        (input,) = ctx.saved_tensors
        return grad_output * 1.5 * (5 * input**2 - 1)
# lesson: end
