"""The nn loop with the net as a Module subclass of its own: two Linear layers and a ReLU in forward()."""

from __future__ import annotations

import torch
from nn_loop import loop as nn_loop


class TwoLayer(torch.nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.first, self.second = torch.nn.Linear(d_in, hidden), torch.nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x).clamp(min=0))


def loop(x, y, weights: dict, lr: float, steps: int) -> tuple[float, list[float]]:
    net = TwoLayer(x.shape[1], weights["w1"].shape[1], y.shape[1])
    return nn_loop(x, y, weights, lr, steps, net=net)


if __name__ == "__main__":
    from _problem import STEPS, report, tutorial_problem

    report(loop(*tutorial_problem(bias=True), lr=1e-4, steps=STEPS)[1])
