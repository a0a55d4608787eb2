"""The nn loop with torch.optim.Adam doing the update."""

from __future__ import annotations

import torch
from nn_loop import loop as nn_loop


def loop(x, y, weights: dict, lr: float, steps: int) -> tuple[float, list[float]]:
    return nn_loop(x, y, weights, lr, steps, optimizer=torch.optim.Adam)


if __name__ == "__main__":
    from _problem import STEPS, report, tutorial_problem

    report(loop(*tutorial_problem(bias=True), lr=1e-4, steps=STEPS)[1])
