"""A net whose depth changes every step: one middle Linear layer, shared, applied 0 to 3 times at random;
trained with SGD and momentum 0.9 (the middle layer starts from the second layer's own initialization)."""

from __future__ import annotations

import random
import time

import torch


class Dynamic(torch.nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.inp = torch.nn.Linear(d_in, hidden)
        self.middle = torch.nn.Linear(hidden, hidden)
        self.out = torch.nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x).clamp(min=0)
        for _ in range(random.randint(0, 3)):  # the same weights, reused: their gradients add up
            h = self.middle(h).clamp(min=0)
        return self.out(h)


def loop(x, y, lr: float, steps: int) -> tuple[float, list[float]]:
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    net = Dynamic(x.shape[1], 100, y.shape[1])
    loss_fn = torch.nn.MSELoss(reduction="sum")
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(net(x), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start, losses


if __name__ == "__main__":
    from _problem import STEPS, report, tutorial_problem

    random.seed(0)
    x, y, _ = tutorial_problem()
    report(loop(x, y, lr=1e-4, steps=STEPS)[1])
