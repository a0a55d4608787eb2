"""The autograd loop with a ReLU written as a torch.autograd.Function: its own forward and backward."""

from __future__ import annotations

import torch
from autograd_loop import loop as autograd_loop


class ClampReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inp: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inp)
        return inp.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (inp,) = ctx.saved_tensors
        return grad.masked_fill(inp < 0, 0)


def loop(x, y, weights: dict, lr: float, steps: int) -> tuple[float, list[float]]:
    return autograd_loop(x, y, weights, lr, steps, relu=ClampReLU.apply)


if __name__ == "__main__":
    from _problem import STEPS, report, tutorial_problem

    report(loop(*tutorial_problem(), lr=1e-6, steps=STEPS)[1])
