"""``backproplab-verify`` (= scripts/verify.py): every trainer against the reference, as tables.

    python scripts/verify.py                      # sequential net, with and without biases, 500 steps
    python scripts/verify.py --model dynamic --steps 200 loss=mse_mean
    python scripts/verify.py --model legendre3    # the sine edition: numpy, autograd, function, lightning

What is compared and how differences are measured is ``backproplab.equivalence``. Exits 1 when a trainer
disagrees beyond the tolerances or fails, 2 on bad arguments or a config that does not compose.
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from backproplab.equivalence import OPTIM_TOL, OPTIM_TOL_DEFAULT, SGD_LR, check, check_optimizers
from backproplab.runtime import conf_dir
from backproplab.trainers import registry


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; unknown trainers and counts below 1 exit 2 with argparse's usage line."""
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
    """The console script: run the checks with torch held to ``--threads``; the exit code of ``run_checks``."""
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
