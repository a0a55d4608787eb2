"""The little that the hand-written torch trainers share: where they run, and the numpy <-> torch bridge."""

from __future__ import annotations

import numpy as np
import torch


def device(accelerator: str) -> torch.device:
    """CUDA for an accelerator gpu|cuda, or for auto when a GPU is visible; else the CPU."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda:0")
    return torch.device("cpu")


def to_torch(
    arrays: dict[str, np.ndarray], device: torch.device, requires_grad: bool = False
) -> dict[str, torch.Tensor]:
    """problem.py's arrays as torch tensors of the same dtype (copies: training must not touch them)."""
    return {name: torch.tensor(a, device=device).requires_grad_(requires_grad) for name, a in arrays.items()}


def to_numpy(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: t.detach().cpu().numpy().copy() for name, t in tensors.items()}
