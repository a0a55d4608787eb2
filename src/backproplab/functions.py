"""The tutorial's own ReLU, written as a ``torch.autograd.Function`` ("Defining new autograd functions")."""

from __future__ import annotations

from typing import Any

import torch


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
