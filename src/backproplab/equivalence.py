"""Equivalence: every trainer computes the same thing, measured.

From one seed, in float64, each trainer of the registry (plain SGD) trains on the very same problem (data,
initial weights, repeat schedule) and is compared with the reference (autograd): its first-step gradient of each
parameter and its loss curve (``check``); and each backend's optimizers with torch.optim's (``check_optimizers``).
The command line that prints these is ``backproplab.verify``; a sweep job's own check is ``backproplab.agreement``.

Differences are relative: for a gradient, max|g - g_ref| / max|g_ref| over the parameter's entries (an
entry-wise ratio would divide by gradients that are ~0 where a ReLU is dead), or over 1e-3 x the largest
gradient of any parameter where that is larger; for the loss curve, max over steps of |L - L_ref| / L_ref.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from backproplab.problem import Problem, make_problem
from backproplab.runtime import conf_dir
from backproplab.trainers import registry


@dataclass
class Outcome:
    """One trainer's run on the shared problem: its curve and first-step gradients, or why it did not run."""

    trainer: str
    losses: list[float] = field(default_factory=list)
    grads0: dict[str, np.ndarray] = field(default_factory=dict)
    loop_s: float = 0.0
    skipped: str = ""  # why the trainer cannot run this model
    error: str = ""


# the tutorial's plain-SGD rate where optim=sgd's default (1e-4) diverges: sin(x)'s summed error over 2000 points
SGD_LR = {"sine": 1e-6}
# a check of numbers draws no progress bar and writes no checkpoint, for the trainers that have such keys
QUIET = {"progress_bar": False, "checkpoint_every": 0}


def compose_configs(trainers: list[str], overrides: list[str], config_dir: Path) -> dict[str, DictConfig]:
    """One composed config per trainer, identical but for the trainer group (and its own keys, kept quiet)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfgs = {t: compose(config_name="config", overrides=[f"trainer={t}", *overrides]) for t in trainers}
    for cfg in cfgs.values():
        with open_dict(cfg):
            cfg.trainer.update({k: v for k, v in QUIET.items() if k in cfg.trainer})
    return cfgs


def run_one(name: str, cfg: DictConfig, problem: Problem) -> Outcome:
    """Train one trainer on the shared problem; an exception is reported, not raised."""
    from backproplab.config import validate
    from backproplab.spec import bind, gradients
    from backproplab.steps import Recorder

    spec = registry.spec(name)
    if absent := registry.missing(name):
        return Outcome(name, skipped=f"{', '.join(absent)} not installed ({spec.install})")
    if not spec.supports("model", cfg.model.name):
        return Outcome(name, skipped=f"no model={cfg.model.name}" + (f" ({spec.why})" if spec.why else ""))
    rec = Recorder()
    try:
        validate(cfg)
        result = bind(cfg)(problem, rec.on_step)
        grads0 = gradients(cfg, problem)  # the trainer's own gradient code, outside its loop
    except Exception as e:
        return Outcome(name, losses=rec.losses, error=f"{type(e).__name__}: {e}".splitlines()[0])
    return Outcome(name, losses=rec.losses, grads0=grads0, loop_s=result.loop_s)


def grad_diff(grads: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
    """Each parameter's first-step gradient against the reference's, relative (inf where it is missing)."""
    out = {}
    # a gradient that is zero but for rounding (legendre3's a and c at its symmetric start) is measured on the
    # scale of the largest one, not on its own ~1e-13
    floor = 1e-3 * max((float(np.abs(r).max()) for r in ref.values() if np.size(r)), default=1.0)
    for name, r in ref.items():
        g = grads.get(name)
        if g is None or np.shape(g) != np.shape(r):
            out[name] = float("inf")
            continue
        scale = max(float(np.abs(r).max()), floor) or 1.0
        out[name] = float(np.abs(np.asarray(g, np.float64) - r).max() / scale)
    return out


def loss_diff(losses: list[float], ref: list[float]) -> float:
    """The largest relative difference of a loss curve from the reference's, over its steps (inf: other lengths)."""
    if len(losses) != len(ref):
        return float("inf")
    a, b = np.asarray(losses, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b))) if len(b) else 0.0


@dataclass
class Report:
    """A comparison as a table: a title, the compared columns, one row per trainer."""

    ok: bool  # every trainer that ran agrees with the reference
    title: str
    params: list[str]
    rows: list[list[str]]


def check(
    trainers: list[str], overrides: list[str], grad_tol: float, loss_tol: float, config_dir: Path | None = None
) -> Report:
    """Run the trainers (and the reference) on one problem and compare them with the reference."""
    reference = registry.reference()
    names = [reference, *(t for t in trainers if t != reference)]
    cfgs = compose_configs(names, overrides, config_dir or conf_dir())
    c = cfgs[reference]
    bias = f" bias={c.model.bias}" if "bias" in c.model else ""
    title = (
        f"data={c.data.name} model={c.model.name}{bias} init={c.model.init} · {c.loss.name} · sgd lr={c.optim.lr} · "
        f"seed={c.seed} · {c.data.dtype} · {c.trainer.max_steps} steps"
    )
    problem = make_problem(c)  # the same arrays for every trainer
    outcomes = [run_one(t, cfgs[t], problem) for t in names]
    ref = outcomes[0]
    params = list(problem.weights)
    ok = not ref.error
    rows = []
    for o in outcomes:
        if o.skipped:
            rows.append([o.trainer, *["-"] * len(params), "-", "-", "-", f"skipped: {o.skipped}"])
            continue
        if o.error or ref.error:
            ok = False
            rows.append([o.trainer, *["-"] * len(params), "-", "-", "-", f"FAILED: {o.error or 'no reference'}"])
            continue
        grads = grad_diff(o.grads0, ref.grads0)
        curve = loss_diff(o.losses, ref.losses)
        agree = max(grads.values()) <= grad_tol and curve <= loss_tol
        ok &= agree
        verdict = "reference" if o is ref else ("ok" if agree else "DISAGREES")
        rows.append(
            [o.trainer, *(f"{grads[p]:.1e}" for p in params), f"{curve:.1e}", f"{o.losses[-1]:.6g}",
             f"{o.loop_s:.3f}", verdict]
        )
    return Report(ok, title, params, rows)


# the optimizer check: how close each backend's curve must come to torch.optim's (relative, float64)
OPTIM_TOL = {"sgd": 1e-8, "sgd_momentum": 1e-8}  # adam, rmsprop, adagrad: 1e-6
OPTIM_TOL_DEFAULT = 1e-6
# Where the check trains: the mean loss, each optim at its default lr but RMSprop at 1e-5. Near a minimum these
# optimizers amplify rounding exponentially (measured: RMSprop at 1e-4 goes from 1e-16 at step 100 to 1e-2 at
# step 500 between two exact implementations), which would test the rounding, not the rule.
OPTIM_CHECK = ["loss=mse_mean"]
OPTIM_LR = {"rmsprop": 1e-5}


def check_optimizers(trainers: list[str], overrides: list[str], config_dir: Path | None = None) -> Report:
    """Each trainer that runs an optimizer besides plain SGD, for every optimizer it accepts, against the
    optimizer reference (torch.optim, run by Lightning): the loss curves on one problem (see OPTIM_CHECK).
    A trainer's optimizer it does not accept shows as "-"."""
    reference = registry.reference("optim_reference")
    optims = list(registry.options("optim"))
    model = compose_configs([reference], overrides, config_dir or conf_dir())[reference].model.name
    names = [reference, *(t for t in trainers if t != reference and len(registry.spec(t).optims) > 1
                          and registry.spec(t).supports("model", model) and not registry.missing(t))]
    if len(names) == 1:  # no other trainer runs more than plain SGD on this model
        return Report(True, "", [], [])
    ok, curves = True, {name: [] for name in names}
    for optim in optims:
        lr = [f"optim.lr={OPTIM_LR[optim]}"] if optim in OPTIM_LR else []
        cfgs = compose_configs(names, [*overrides, *OPTIM_CHECK, f"optim={optim}", *lr], config_dir or conf_dir())
        problem = make_problem(cfgs[reference])
        ref = run_one(reference, cfgs[reference], problem)
        for name in names:
            spec, cfg = registry.spec(name), cfgs[name]
            if not spec.supports("optim", optim) or not spec.supports("model", cfg.model.name):
                curves[name].append("-")
                continue
            o = ref if name == reference else run_one(name, cfg, problem)
            if o.error or ref.error:
                ok = False
                curves[name].append("FAILED")
                continue
            diff = loss_diff(o.losses, ref.losses)
            ok &= diff <= OPTIM_TOL.get(optim, OPTIM_TOL_DEFAULT)
            curves[name].append(f"{diff:.1e}" + ("" if diff <= OPTIM_TOL.get(optim, OPTIM_TOL_DEFAULT) else " !"))
    rows = []
    for name in names:
        bad = any(c == "FAILED" or c.endswith("!") for c in curves[name])
        rows.append([name, *curves[name], "reference" if name == reference else "DISAGREES" if bad else "ok"])
    return Report(ok, f"optimizers against {reference} (torch.optim)", optims, rows)
