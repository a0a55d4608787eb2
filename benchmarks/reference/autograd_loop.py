"""The tensor loop with autograd computing the backward pass; the update stays by hand."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def loop(x, y, weights: dict, lr: float, steps: int,
         relu: Callable[[torch.Tensor], torch.Tensor] = torch.relu) -> tuple[float, list[float]]:
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    w1 = torch.tensor(weights["w1"], requires_grad=True)
    w2 = torch.tensor(weights["w2"], requires_grad=True)
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        loss = (relu(x.mm(w1)).mm(w2) - y).pow(2).sum()
        losses.append(loss.item())
        loss.backward()
        with torch.no_grad():  # the update is not part of the graph
            for w in (w1, w2):
                w -= lr * w.grad
                w.grad = None
    return time.perf_counter() - start, losses


if __name__ == "__main__":
    from _problem import STEPS, report, tutorial_problem

    report(loop(*tutorial_problem(), lr=1e-6, steps=STEPS)[1])
