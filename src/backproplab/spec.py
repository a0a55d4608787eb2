"""The run spec: the composed config, validated once and resolved into one frozen value before anything runs.

config (what a user may change) -> :func:`resolve` -> :class:`RunSpec` -> the trainer (:func:`bind`) -> the record.

What the run settles is settled here, in a copy: ``trainer.threads=auto`` becomes a count, float64 data a float64
precision, checkpoints a folder, and a Slurm job restarted after a requeue its run's thread count and latest
checkpoint. The copy is read-only from then on, so the params a run records are what ran; the config a user
composed is never written. What a trainer *is* (its module, what it supports, its lesson) is declared in its
yaml and read by the registry: the spec drops those keys, so no record carries them and no rerun needs them.

A trainer receives plain values (:class:`backproplab.steps.Settings`) and the objects its yaml asks the harness
to build from the config (``supports.instantiates``: a torch module, a loss, an optimizer, Lightning's Trainer).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from backproplab import threads
from backproplab.config import check_declared, check_resume, declared, refuse_added_keys, validate
from backproplab.forward import served_repeats
from backproplab.problem import Problem
from backproplab.runtime import job_dir
from backproplab.slurm import job as slurm_job
from backproplab.steps import OnStep, Result, Settings
from backproplab.trainers import registry
from backproplab.trainers.registry import TrainerSpec

DECLARED = ("module", "supports")  # a trainer yaml's keys that say what it is: the registry's, not the run's


@dataclass(frozen=True)
class RunSpec:
    """One run, as it will run: read by the run flow, the tracker and the trainer; never written."""

    config: DictConfig  # the config with what the run settled, read-only: what the record's params say
    trainer: TrainerSpec
    threads: int  # the CPU threads every framework of the run uses
    auto_keys: tuple[str, ...]  # the keys the run chose itself (trainer.threads=auto), tagged as such
    resumed: dict[str, Any] | None  # a restarted Slurm job's note of the run it started (slurm/job.py)


def resolve(cfg: DictConfig, overrides: list[str] | tuple[str, ...] = ()) -> RunSpec:
    """Validate ``cfg`` once and settle what the run decides; ConfigError (one line) for the first bad value.
    A ``+rerun=<id>`` config is first rebuilt from that run's record, with today's declarations of its groups."""
    rerun = bool(cfg.get("rerun"))
    if rerun:
        from backproplab.tracking.rerun import rerun_config

        cfg = rerun_config(cfg)
    refuse_added_keys(cfg, list(overrides))
    if not rerun:  # a record carries its own era's declarations, or none: today's yaml is what counts
        check_declared(cfg)
    c = copy.deepcopy(cfg)
    OmegaConf.set_struct(c, False)
    OmegaConf.set_readonly(c, False)
    for key in DECLARED:
        c.trainer.pop(key, None)
    if rerun:  # what the model and data are declared to be today, not when recorded; the trainer's keys that
        # its yaml has gained since (Lightning's trainer.pl) with their values of today
        today = declared("trainer", c.trainer.name)
        for key in DECLARED:
            today.pop(key, None)
        c.trainer = OmegaConf.merge(today, c.trainer)
        c.model.data = declared("model", c.model.name).get("data")
        c.data.module = declared("data", c.data.name).get("module")
    validate(c)
    resumed = slurm_job.resumed_run(job_dir())  # Slurm restarted this job: it goes on in the run it started
    if resumed:
        c.trainer.threads = resumed["threads"]  # the count the run's first steps were computed with
    auto_keys = tuple(resumed["auto_keys"]) if resumed else ("trainer.threads",) if threads.is_auto(c) else ()
    c.trainer.threads = threads.resolve(c)
    spec = registry.spec(str(c.trainer.name))
    c.trainer.checkpoint_dir = _checkpoint_dir(c, spec)
    if c.data.dtype == "float64" and str(c.trainer.precision) in ("32-true", "32"):
        c.trainer.precision = "64-true"  # float64 data trains in float64: the record says so
    last = Path(str(c.trainer.checkpoint_dir)) / "last.ckpt" if c.trainer.get("checkpoint_dir") else None
    if resumed and last is not None and last.is_file():
        c.ckpt_path = str(last)  # its latest checkpoint, which must fit and leave steps to train
        check_resume(c)
    OmegaConf.set_readonly(c, True)
    return RunSpec(config=c, trainer=spec, threads=int(c.trainer.threads), auto_keys=auto_keys, resumed=resumed)


def _checkpoint_dir(cfg: DictConfig, spec: TrainerSpec) -> str | None:
    """Checkpoints go to <Hydra output dir>/checkpoints unless trainer.checkpoint_dir says."""
    if not spec.checkpoints or not cfg.trainer.get("checkpoint_every"):
        return cfg.trainer.get("checkpoint_dir")
    if cfg.trainer.get("checkpoint_dir"):
        return str(cfg.trainer.checkpoint_dir)
    if folder := job_dir():
        return f"{folder}/checkpoints"
    return None  # compose-API callers (verify, bench): no checkpoints unless asked for


def settings(cfg: DictConfig) -> Settings:
    """The plain values a trainer reads, from a config (a run's resolved one, or one composed by verify, the
    benchmark or a test: there ``trainer.threads=auto`` is None, the frameworks' own choice)."""
    t = cfg.trainer
    count = t.get("threads")
    return Settings(
        model=str(cfg.model.name),
        max_steps=int(t.max_steps),
        lr=float(cfg.optim.lr),
        reduction=str(cfg.loss.reduction),
        accelerator=str(t.accelerator),
        precision=str(t.precision),
        threads=count if isinstance(count, int) and not isinstance(count, bool) else None,
        seed=int(cfg.seed),
        served_repeats=served_repeats(cfg.model),
        divergence_factor=t.get("divergence_factor"),
        checkpoint_dir=t.get("checkpoint_dir"),
        checkpoint_every=int(t.get("checkpoint_every") or 0),
        keep_checkpoints=int(t.get("keep_checkpoints") or 1),
        ckpt_path=cfg.get("ckpt_path"),
        optim=str(cfg.optim.name),
    )


def objects(cfg: DictConfig) -> dict[str, Any]:
    """What the trainer's yaml asks the harness to build from the config (``supports.instantiates``, e.g.
    ``{net: model.net, criterion: loss.criterion}``), by ``hydra.utils.instantiate``; and the optimizer's
    update rule (backproplab.optimizers) for a trainer that applies it itself (``supports.optim_rules``)."""
    spec = registry.spec(str(cfg.trainer.name))
    built: dict[str, Any] = {}
    if spec.optim_rules:
        from backproplab.optimizers import rule

        built["rule"] = rule(cfg, spec.name)
    if spec.instantiates:
        import torch
        from hydra.utils import instantiate

        torch.manual_seed(int(cfg.seed))  # any weight that a module draws rather than loads from the problem
        for name, key in spec.instantiates.items():
            built[name] = instantiate(OmegaConf.select(cfg, key), _convert_="all")
    return built


def bind(cfg: DictConfig | RunSpec) -> Callable[[Problem, OnStep], Result]:
    """The trainer of a config, ready to train: ``bind(cfg)(problem, on_step) -> Result``. Its module (and so its
    framework) is imported here."""
    c = cfg.config if isinstance(cfg, RunSpec) else cfg
    train = registry.load(str(c.trainer.name)).train
    return partial(_train, train, settings(c), objects(c))


def _train(train: Callable[..., Result], values: Settings, built: dict[str, Any], problem: Problem,
           on_step: OnStep) -> Result:
    return train(problem, values, on_step, **built)


def gradients(cfg: DictConfig, problem: Problem) -> dict[str, Any]:
    """The trainer's first-step gradients on ``problem`` (its ``gradients``), outside any loop: for verify."""
    return registry.load(str(cfg.trainer.name)).gradients(problem, settings(cfg), **objects(cfg))


def predict(cfg: DictConfig, weights: dict[str, Any], problem: Problem) -> Any:
    """The trainer's own forward pass of ``weights`` on problem.x (its ``predict``), at a dynamic model's served
    depth: what a logged model must predict (the model tests hold the served code to it)."""
    return registry.load(str(cfg.trainer.name)).predict(weights, problem, settings(cfg), **objects(cfg))
