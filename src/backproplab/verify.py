"""Equivalence: every trainer computes the same thing.

From one seed, in float64, each trainer of the registry (plain SGD) trains on the very same problem (data,
initial weights, repeat schedule) and is compared with
the autograd trainer: its first-step gradient of each parameter and its loss curve.

    python scripts/verify.py                      # sequential net, with and without biases, 500 steps
    python scripts/verify.py --model dynamic --steps 200 loss=mse_mean
    python scripts/verify.py --model legendre3    # the sine edition: numpy, autograd, function, lightning

Differences are relative: for a gradient, max|g - g_ref| / max|g_ref| over the parameter's entries (an
entry-wise ratio would divide by gradients that are ~0 where a ReLU is dead), or over 1e-3 x the largest
gradient of any parameter where that is larger; for the loss curve,
max over steps of |L - L_ref| / L_ref. Exits 1 when a trainer disagrees beyond the tolerances or fails.
"""

from __future__ import annotations

import argparse
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from backproplab.problem import Problem, make_problem
from backproplab.runtime import conf_dir
from backproplab.trainers import registry


@dataclass
class Outcome:
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
    from backproplab.steps import Recorder

    spec = registry.spec(name)
    if absent := registry.missing(name):
        return Outcome(name, skipped=f"{', '.join(absent)} not installed ({spec.install})")
    if not spec.supports("model", cfg.model.name):
        return Outcome(name, skipped=f"no model={cfg.model.name}" + (f" ({spec.why})" if spec.why else ""))
    rec = Recorder()
    try:
        validate(cfg)
        result = registry.get_train(name)(problem, cfg, rec.on_step)
    except Exception as e:
        return Outcome(name, losses=rec.losses, error=f"{type(e).__name__}: {e}".splitlines()[0])
    return Outcome(name, losses=rec.losses, grads0=result.grads0, loop_s=result.loop_s)


def grad_diff(grads: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
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
    if len(losses) != len(ref):
        return float("inf")
    a, b = np.asarray(losses, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b))) if len(b) else 0.0


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
    outcomes = {name: run_one(name, cfgs[name], problem) for name in names}
    if any(o.error or o.skipped for o in outcomes.values()):
        failed = next(o for o in outcomes.values() if o.error or o.skipped)
        raise RuntimeError(f"{failed.trainer}: {failed.error or failed.skipped}")
    return max(grad_diff(outcomes[cfg.trainer.name].grads0, outcomes[reference].grads0).values())


@dataclass
class Report:
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="backproplab-verify",
        description="Check that every trainer computes the same gradients and loss curve as autograd (float64).",
    )
    p.add_argument("--steps", type=int, default=500, help="training steps per trainer (default 500)")
    p.add_argument("--seed", type=int, default=0)
    reference = registry.spec(registry.reference())  # a model it does not train has nothing to compare with
    models = [m for m in registry.options("model") if reference.supports("model", m)]
    p.add_argument("--model", default="sequential", choices=models, help="(the models the reference trains)")
    p.add_argument(
        "--bias", default="both", choices=("true", "false", "both"), help="model.bias, for the models that have one "
        "(default both)"
    )
    p.add_argument(
        "--lr", type=float, default=None,
        help="the SGD learning rate (default: optim=sgd's, or 1e-6 on data=sine, the tutorial's rate there)",
    )
    everyone = list(registry.trainers())
    p.add_argument("--trainers", default=",".join(everyone), help="comma-separated (default: every trainer)")
    p.add_argument("--grad-tol", type=float, default=1e-10, help="first-step gradients (default 1e-10)")
    p.add_argument("--loss-tol", type=float, default=1e-8, help="loss curves (default 1e-8)")
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch threads while verifying (default 1: six frameworks' thread pools in one process fight "
        "over a small machine's cores, and a check of numbers need not be fast)",
    )
    p.add_argument(
        "--optimizers", default="on", choices=("on", "off"),
        help="also compare every optimizer a trainer accepts with torch.optim's (default on)",
    )
    p.add_argument("--config-dir", type=Path, default=None, help="the Hydra config tree (default: the project's)")
    p.add_argument("overrides", nargs="*", help="more Hydra overrides, e.g. loss=mse_mean model.init=randn")
    args = p.parse_args(argv)
    unknown = set(args.trainers.split(",")) - set(everyone)
    if unknown:
        p.error(f"unknown trainer(s) {', '.join(sorted(unknown))}; choose from {', '.join(everyone)}")
    if args.steps < 1 or args.threads < 1:
        p.error("--steps and --threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: do not squeeze the table into 80 columns
        console = Console(width=150)
    import torch  # every check runs torch (autograd is the reference)

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run_checks(args, console)
    finally:  # main() may be called in-process (tests): leave torch as it was
        torch.set_num_threads(threads)


def run_checks(args: argparse.Namespace, console: Any) -> int:
    """One table per bias setting; 0 when every trainer agrees, 1 when one disagrees or fails."""
    from rich.table import Table

    trainers = args.trainers.split(",")
    model = OmegaConf.load((args.config_dir or conf_dir()) / "model" / f"{args.model}.yaml")
    biases = [None]  # a model without biases (the sine edition's formulas)
    if "bias" in model:
        biases = ["true", "false"] if args.bias == "both" else [args.bias]
    lr = args.lr or SGD_LR.get(model.data)
    all_ok = True
    for bias in biases:
        overrides = [
            f"seed={args.seed}", f"data={model.data}", f"model={args.model}", "optim=sgd", "logger=none",
            "accelerator=cpu", "data.dtype=float64", "trainer.precision=64-true",
            f"trainer.max_steps={args.steps}",
            *([f"model.bias={bias}"] if bias else []),
            *([f"optim.lr={lr}"] if lr else []),
            *args.overrides,
        ]
        start = time.perf_counter()
        try:
            report = check(trainers, overrides, args.grad_tol, args.loss_tol, args.config_dir)
        except Exception:  # a config that does not compose, say: nothing to compare
            console.print(traceback.format_exc(limit=1).strip(), markup=False)
            return 2
        all_ok &= report.ok
        table = Table(
            title=f"{report.title} ({time.perf_counter() - start:.1f}s)",
            caption=f"relative difference to {registry.reference()}; tolerances: gradients {args.grad_tol:g}, "
            f"loss curve {args.loss_tol:g}",
        )
        table.add_column("trainer")
        for p in report.params:
            table.add_column(f"grad {p}", justify="right")
        for col in (f"loss curve ({args.steps} steps)", "final loss", "loop s", "verdict"):
            table.add_column(col, justify="right" if col != "verdict" else "left")
        for row in report.rows:
            style = None if not any(w in row[-1] for w in ("DISAGREES", "FAILED")) else "bold red"
            table.add_row(*row, style=style)
        console.print(table)
    if args.optimizers == "on":
        all_ok &= print_optimizers(args, console, trainers, overrides)
    console.print("all trainers agree" if all_ok else "[bold red]some trainers disagree[/]")
    return 0 if all_ok else 1


def print_optimizers(args: argparse.Namespace, console: Any, trainers: list[str], overrides: list[str]) -> bool:
    """The optimizer check's table; True when every optimizer agrees."""
    from rich.table import Table

    base = [o for o in overrides if not o.startswith(("optim=", "optim.lr=", "loss="))]  # the check's own
    start = time.perf_counter()
    report = check_optimizers(trainers, base, args.config_dir)
    if len(report.rows) < 2:  # no trainer besides the reference runs more than plain SGD on this model
        return True
    table = Table(
        title=f"{report.title}: loss curves, {args.steps} steps, float64, mean loss, default lr (rmsprop 1e-5) "
        f"({time.perf_counter() - start:.1f}s)",
        caption=f"relative difference; tolerances: sgd, sgd_momentum {OPTIM_TOL['sgd']:g}, "
        f"others {OPTIM_TOL_DEFAULT:g}; - = not accepted by that trainer",
    )
    table.add_column("trainer")
    for optim in report.params:
        table.add_column(optim, justify="right")
    table.add_column("verdict")
    for row in report.rows:
        table.add_row(*row, style=None if row[-1] != "DISAGREES" else "bold red")
    console.print(table)
    return report.ok


if __name__ == "__main__":
    raise SystemExit(main())
