"""nn.Sequential(Linear, ReLU, Linear) with a summed squared-error loss and a hand-written SGD step.

``optimizer`` swaps the hand update for a torch.optim class (the optim example); ``net`` for another Module
(the custom-Module and dynamic examples)."""

from __future__ import annotations

import time

import numpy as np
import torch


def sequential(d_in: int, hidden: int, d_out: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, d_out))


def set_weights(net: torch.nn.Module, weights: dict) -> torch.nn.Module:
    """w1, b1, w2, b2 (y = x @ w + b) into the net's two Linear layers (y = x @ W.T + b), in order."""
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for layer, i in zip(linears, ("1", "2"), strict=True):
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weights["w" + i].T)))
            layer.bias.copy_(torch.from_numpy(weights["b" + i]))
    return net


def loop(x, y, weights: dict, lr: float, steps: int, optimizer: type | None = None,
         net: torch.nn.Module | None = None) -> tuple[float, list[float]]:
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    net = set_weights(net or sequential(x.shape[1], weights["w1"].shape[1], y.shape[1]), weights).to(x.dtype)
    loss_fn = torch.nn.MSELoss(reduction="sum")
    opt = optimizer(net.parameters(), lr=lr) if optimizer else None
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(net(x), y)
        losses.append(loss.item())
        if opt:
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            net.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in net.parameters():
                    p -= lr * p.grad
    return time.perf_counter() - start, losses


if __name__ == "__main__":
    from _problem import STEPS, report, tutorial_problem

    report(loop(*tutorial_problem(bias=True), lr=1e-4, steps=STEPS)[1])
