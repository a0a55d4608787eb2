"""A sweep job's own equivalence check: its trainer's first-step gradients against the reference's, in float64
on the job's problem (``backproplab.run`` logs it as ``verify/grad_rel_diff``; the lesson page shows it). It is
``backproplab.equivalence``'s measure, for one run's config rather than a composed one."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from backproplab.config import PL_FOLLOWS, validate
from backproplab.equivalence import QUIET, grad_diff
from backproplab.problem import make_problem
from backproplab.runtime import conf_dir
from backproplab.spec import gradients
from backproplab.trainers import registry


def one_step_float64(cfg: DictConfig, trainer: str) -> DictConfig:
    """``cfg`` as verify compares it: one step, in float64, by ``trainer`` (its own yaml's keys, the run's devices
    and threads), plain SGD where the trainer runs only that (a first step's gradient is the optimizer's input)."""
    c = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if trainer != cfg.trainer.name:
        own = OmegaConf.load(conf_dir() / "trainer" / f"{trainer}.yaml")
        for key in ("accelerator", "devices", "threads"):
            own[key] = cfg.trainer.get(key)
        c.trainer = own
    if not registry.spec(trainer).supports("optim", c.optim.name):
        c.optim = OmegaConf.merge(OmegaConf.load(conf_dir() / "optim" / "sgd.yaml"), {"lr": c.optim.lr})
    c.data.dtype, c.trainer.precision, c.trainer.max_steps = "float64", "64-true", 1
    c.trainer.update({k: v for k, v in QUIET.items() if k in c.trainer})
    c.trainer.checkpoint_dir, c.ckpt_path = None, None
    if "pl" in c.trainer:  # Lightning's Trainer follows the keys set above, as in its yaml: not the resolved copy
        for key in PL_FOLLOWS:
            c.trainer.pl[key] = f"${{..{key}}}"
    return c


def first_step_agreement(cfg: DictConfig) -> float | None:
    """The largest relative difference of the run's trainer's first-step gradients from the reference's (autograd),
    on the run's problem in float64, over every parameter; None where the reference cannot train the model."""
    reference = registry.reference()
    if not registry.spec(reference).supports("model", cfg.model.name):
        return None
    names = dict.fromkeys([reference, cfg.trainer.name])
    cfgs = {name: one_step_float64(cfg, name) for name in names}
    problem = make_problem(cfgs[reference])
    for c in cfgs.values():
        validate(c)
    grads = {name: gradients(cfgs[name], problem) for name in names}  # each trainer's own, outside its loop
    return max(grad_diff(grads[cfg.trainer.name], grads[reference]).values())
