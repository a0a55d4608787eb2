"""The one source of truth about trainers: every ``conf/trainer/<name>.yaml`` names its module and declares
what it supports. Validation, run, verify, the benchmark and the tests ask this registry; nothing else in
``src/`` names a trainer. Reading the yamls costs milliseconds and imports no framework: a trainer's module
(torch, TensorFlow, ...) is imported only by :func:`load`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import OmegaConf

from backproplab.runtime import conf_dir

ANY = "*"  # `models: "*"`: every option of the group in conf/


@dataclass(frozen=True)
class TrainerSpec:
    """A trainer's yaml, ``supports:`` block included."""

    name: str
    module: str
    models: tuple[str, ...]
    optims: tuple[str, ...]
    devices: tuple[str, ...]  # cpu, gpu
    precisions: tuple[str, ...]
    momentum: bool  # SGD with momentum (the hand-written trainers do plain SGD)
    distributed: bool  # several devices / nodes / a strategy
    checkpoints: bool  # checkpoints and resume (ckpt_path)
    reference: bool  # verify compares every trainer with this one
    optim_reference: bool  # verify's optimizer check compares every trainer's optimizers with this one's
    optim_rules: bool  # applies torch.optim's rules itself (backproplab/optimizers.py): its keys are checked
    requires: tuple[str, ...]  # modules of an optional extra (jax, optax): refused in one line when missing
    install: str  # how to install them, said in that line
    gpu_install: str  # how to get the framework's GPU build, said when a CPU-only build is asked for a GPU
    why: str  # said when a model it lacks is asked for
    lesson: dict[str, tuple[str, ...]]  # its step's code by model, as "<file>:<region>" (backproplab.regions)
    instantiates: dict[str, str]  # keyword -> config key: the objects the harness builds for it (backproplab.spec)
    declared: dict  # module and supports as the yaml has them: a run's config must not override them

    def supports(self, group: str, option: str) -> bool:
        return option in getattr(self, group + "s")


def options(group: str) -> tuple[str, ...]:
    """The options of a config group: the yaml files in conf/<group>/."""
    return tuple(sorted(p.stem for p in (conf_dir() / group).glob("*.yaml")))


def _spec(path: Path) -> TrainerSpec:
    raw: Any = OmegaConf.to_container(OmegaConf.load(path))
    s = raw.get("supports", {})

    def listed(key: str, group: str | None = None) -> tuple[str, ...]:
        value = s.get(key, ANY if group else [])
        return options(group) if value == ANY and group else tuple(str(v) for v in value)

    return TrainerSpec(
        name=raw["name"],
        module=raw["module"],
        models=listed("models", "model"),
        optims=listed("optims", "optim"),
        devices=listed("devices"),
        precisions=listed("precisions"),
        momentum=bool(s.get("momentum", False)),
        distributed=bool(s.get("distributed", False)),
        checkpoints=bool(s.get("checkpoints", False)),
        reference=bool(s.get("reference", False)),
        optim_reference=bool(s.get("optim_reference", False)),
        optim_rules=bool(s.get("optim_rules", False)),
        requires=listed("requires"),
        install=str(s.get("install", "")),
        gpu_install=str(s.get("gpu_install", "")),
        why=str(s.get("why", "")),
        lesson={str(model): tuple(entries) for model, entries in s.get("lesson", {}).items()},
        instantiates={str(k): str(v) for k, v in s.get("instantiates", {}).items()},
        declared={"module": raw["module"], "supports": s},
    )


@cache
def trainers() -> dict[str, TrainerSpec]:
    """Every trainer, by name, in the order of their files."""
    specs = (_spec(p) for p in sorted((conf_dir() / "trainer").glob("*.yaml")))
    return {s.name: s for s in specs}


def spec(name: str) -> TrainerSpec:
    return trainers()[name]


def reference(kind: str = "reference") -> str:
    """The trainer that verify compares the others with (``supports: {reference: true}``), or, with
    ``kind="optim_reference"``, the one whose optimizers are the reference (torch.optim's)."""
    (name,) = [s.name for s in trainers().values() if getattr(s, kind)]
    return name


def missing(name: str) -> list[str]:
    """The modules the trainer requires (``supports: {requires: [...]}``) that are not installed."""
    import importlib.util

    return [m for m in spec(name).requires if importlib.util.find_spec(m) is None]


def load(name: str) -> ModuleType:
    """The trainer's module (its framework is imported here, not before)."""
    return importlib.import_module(spec(name).module)


