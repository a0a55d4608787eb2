"""torch.optim's update rules, the reference for every backend, written once with plain arithmetic.

``optim=adam`` must be one algorithm whatever the trainer. Lightning runs torch.optim itself; the TensorFlow 2
trainer applies these rules to its variables, and the JAX trainer composes them with optax (trainers/jax.py),
so a run under the same optimizer name means the same math everywhere. Each rule is torch's default form:

- sgd:          buf = momentum * buf + g (buf = g at the first step);  p -= lr * (buf if momentum else g)
- adam:         m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p -= lr * m_hat / (sqrt(v_hat) + eps),
                with m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t), b1 0.9, b2 0.999, eps 1e-8 (outside the sqrt)
- rmsprop:      v = alpha v + (1 - alpha) g^2;  p -= lr * g / (sqrt(v) + eps), alpha 0.99, eps 1e-8
- adagrad:      s = s + g^2 (from 0);  p -= lr * g / (sqrt(s) + eps), eps 1e-10

Like torch.optim, a parameter without a gradient at a step (the dynamic net's skipped middle layer) is left
alone: neither it nor its state (its step count included) moves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from backproplab.runtime import ConfigError

Array = Any  # a numpy, TensorFlow or JAX array: the rules use only +, -, *, / and the given sqrt


@dataclass(frozen=True)
class Rule:
    """One optimizer: its state names and its update, for one parameter."""

    name: str
    lr: float
    hyper: dict[str, float]
    slots: tuple[str, ...]  # state arrays, each shaped like the parameter and starting at 0

    def update(self, g: Array, state: dict[str, Array], t: Array, sqrt: Callable[[Array], Array]) -> tuple[Array, dict]:
        """(the step to subtract from the parameter, the new state) at step ``t`` (1, 2, ...) of this parameter."""
        h = self.hyper
        if self.name in ("sgd", "sgd_momentum"):
            if not h["momentum"]:
                return self.lr * g, state
            buf = h["momentum"] * state["buf"] + g
            return self.lr * buf, {"buf": buf}
        if self.name == "adam":
            m = h["b1"] * state["m"] + (1 - h["b1"]) * g
            v = h["b2"] * state["v"] + (1 - h["b2"]) * g * g
            m_hat, v_hat = m / (1 - h["b1"] ** t), v / (1 - h["b2"] ** t)
            return self.lr * m_hat / (sqrt(v_hat) + h["eps"]), {"m": m, "v": v}
        if self.name == "rmsprop":
            v = h["alpha"] * state["v"] + (1 - h["alpha"]) * g * g
            return self.lr * g / (sqrt(v) + h["eps"]), {"v": v}
        if self.name == "adagrad":
            s = state["s"] + g * g
            return self.lr * g / (sqrt(s) + h["eps"]), {"s": s}
        raise AssertionError(self.name)


# torch.optim's defaults, and the keys of cfg.optim.optimizer each rule reads
DEFAULTS: dict[str, tuple[dict[str, float], tuple[str, ...]]] = {
    "sgd": ({"momentum": 0.0}, ("buf",)),
    "sgd_momentum": ({"momentum": 0.9}, ("buf",)),
    "adam": ({"b1": 0.9, "b2": 0.999, "eps": 1e-8}, ("m", "v")),
    "rmsprop": ({"alpha": 0.99, "eps": 1e-8}, ("v",)),
    "adagrad": ({"eps": 1e-10}, ("s",)),
}
TORCH_KEYS = {"betas": ("b1", "b2")}  # torch's spelling of a hyperparameter, where it differs


def torch_names(hyper: dict[str, float]) -> list[str]:
    """The optimizer's keys as torch.optim spells them (betas for b1, b2)."""
    betas = ["betas"] if "b1" in hyper else []
    return ["lr", *(k for k in hyper if k not in ("b1", "b2")), *betas]


def rule(cfg: DictConfig, trainer: str) -> Rule:
    """The rule of ``cfg.optim``; a key of ``optim.optimizer`` that it does not implement (weight_decay,
    nesterov, ...) is refused in one line rather than ignored."""
    name = str(cfg.optim.name)
    if name not in DEFAULTS:
        raise ConfigError(f"optim={name} has no rule for trainer={trainer}; optimizers it runs: {', '.join(DEFAULTS)}")
    defaults, slots = DEFAULTS[name]
    hyper = dict(defaults)
    for key, value in cfg.optim.optimizer.items():
        if key in ("_target_", "_partial_", "lr"):
            continue
        names = TORCH_KEYS.get(key, (key,))
        if not all(n in hyper for n in names):
            raise ConfigError(
                f"optim.optimizer.{key} is not implemented by trainer={trainer}, which applies torch.optim's "
                f"{name} rule itself (backproplab/optimizers.py): it reads {', '.join(torch_names(hyper))}"
            )
        try:
            values = [float(v) for v in value] if key in TORCH_KEYS else [float(value)]
        except (TypeError, ValueError):
            values = []
        if len(values) != len(names):
            raise ConfigError(f"optim.optimizer.{key}={value!r} is invalid: expected {len(names)} number(s)")
        hyper.update(zip(names, values, strict=True))
    return Rule(name, float(cfg.optim.lr), hyper, slots)
