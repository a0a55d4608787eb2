"""MLflow's cost: the loop with every step logged against the same loop unlogged, and the fixed cost per run
in a fresh process (the first run pays the import and the store's creation). Measured from outside, through
the tracker's own phases, and broken down by function with cProfile: nothing of the package is patched."""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PAIRS,
    TARGETS,
    Settings,
    alternate,
    chdir,
    compose_cfg,
    median,
    ratio,
    run_child,
    trainer_of,
)
from benchmarks.loops import run_trainer


def timed_mlflow_run(cfg: Any, problem: Any) -> dict[str, float]:
    """run.train's body with logger=mlflow, timed in phases: the tracker's __enter__ (store, run start, tags,
    params), the training call (its Result.loop_s includes the per-step logging), finish (final metrics,
    config, curve, weights or model) and __exit__ (flush, end_run)."""
    from backproplab.tracking.run import MlflowTracker

    train = trainer_of(cfg)  # the trainer's own imports, and the objects it is handed, are not MLflow's cost
    t0 = time.perf_counter()
    with MlflowTracker(cfg) as rec:
        t1 = time.perf_counter()
        result = train(problem, rec.on_step)
        t2 = time.perf_counter()
        rec.finish(result, problem)
        t3 = time.perf_counter()
    t4 = time.perf_counter()
    phases = {"enter_s": t1 - t0, "loop_s": result.loop_s, "call_s": t2 - t1, "finish_s": t3 - t2, "exit_s": t4 - t3}
    # the fixed cost is everything around the training call; the per-step logging is inside loop_s
    phases["fixed_s"] = phases["enter_s"] + phases["finish_s"] + phases["exit_s"]
    return phases


def bench_mlflow_loop(s: Settings, names: Sequence[str], tmp: Path) -> dict[str, Any]:
    """The loop with every step logged to MLflow (a temp sqlite store) against the same loop with logger=none."""
    from backproplab.problem import make_problem

    out: dict[str, Any] = {}
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    # artifacts go beside a sqlite store (tracking/store.py); the tmp folder holds the rest of what a run writes
    with chdir(tmp):
        for name in names:
            experiment = PAIRS[name][1]
            base = [f"experiment={experiment}", f"trainer.max_steps={s.steps}"]
            cfg_none = compose_cfg(*base, "logger=none")
            cfg_mlflow = compose_cfg(*base, "logger=mlflow", f"logger.tracking_uri={uri}",
                                     "logger.experiment_name=bench")
            problem = make_problem(cfg_none)
            timed_mlflow_run(cfg_mlflow, problem)  # creates the store: that is the first run's cost, not this
            none: list[float] = []
            runs: list[dict[str, float]] = []
            for i in range(s.warmup + s.mlflow_repeats):
                for which in alternate(i, "none", "mlflow"):
                    if which == "none":
                        sample = run_trainer(name, problem, cfg_none)["loop_s"]
                        if i >= s.warmup:
                            none.append(sample)
                    else:
                        phases = timed_mlflow_run(cfg_mlflow, problem)
                        if i >= s.warmup:
                            runs.append(phases)
            row = {
                "experiment": experiment,
                "steps": s.steps,
                "loop_none_s": median(none),
                "loop_mlflow_s": median([r["loop_s"] for r in runs]),
                "fixed_in_process_s": median([r["fixed_s"] for r in runs]),
                "phases_in_process_s": {k: median([r[k] for r in runs]) for k in runs[0]},
                "flush_every": int(cfg_mlflow.logger.get("flush_every", 0)),
            }
            row["ratio"] = ratio(row["loop_mlflow_s"], row["loop_none_s"])
            row["per_step_overhead_ms"] = 1000 * (row["loop_mlflow_s"] - row["loop_none_s"]) / s.steps
            row["target"] = TARGETS["mlflow_loop"]
            out[name] = row
            print(f"[bench] mlflow {name}: loop {row['loop_mlflow_s']:.3f}s vs {row['loop_none_s']:.3f}s "
                  f"-> {row['ratio']:.2f}x", file=sys.stderr, flush=True)
    return out


# the functions whose time the fixed-cost child reports, by name (flush also runs inside the loop)
BREAKDOWN = ("open_store", "git_commit", "flatten", "resolved_yaml", "loss_curve", "start_run", "log_params",
             "log_metrics", "log_text", "log_figure", "end_run", "flush", "log_weights")


def bench_mlflow_fixed(s: Settings, tmp: Path) -> dict[str, Any]:
    """MLflow's fixed cost per run in a fresh process running several runs one after another, like a sweep's
    jobs in the sequential launcher: the first run pays `import mlflow` and the store's creation."""
    child = run_child("fixed", str(tmp), str(s.steps), *s.fixed_plan, cwd=tmp)
    runs = child["runs"]
    first = runs[0]
    out: dict[str, Any] = {
        "plan": list(s.fixed_plan),
        "steps": s.steps,
        "import_mlflow_s": child["import_mlflow_s"],
        "first": {"experiment": first["experiment"], "fixed_s": child["import_mlflow_s"] + first["fixed_s"],
                  "phases": first["phases"], "breakdown": first["breakdown"]},
        "later": {},
        "runs": runs,
    }
    for experiment in dict.fromkeys(s.fixed_plan):
        later = [r for r in runs[1:] if r["experiment"] == experiment]
        if experiment != first["experiment"]:
            later = later[1:]  # that experiment's first run pays its own first-time imports (mlflow.pytorch)
        if not later:
            continue
        out["later"][experiment] = {
            "trainer": later[0]["trainer"],
            "runs": len(later),
            "fixed_s": median([r["fixed_s"] for r in later]),
            "phases": {k: median([r["phases"][k] for r in later]) for k in later[0]["phases"]},
            "breakdown": {k: median([r["breakdown"].get(k, 0.0) for r in later]) for k in later[0]["breakdown"]},
        }
    worst = max((v["fixed_s"] for v in out["later"].values()), default=float("nan"))
    out["later_worst_s"] = worst
    out["target_later_s"] = TARGETS["mlflow_fixed_later_s"]
    print(f"[bench] mlflow fixed: first {out['first']['fixed_s']:.2f}s, later (worst) {worst:.2f}s",
          file=sys.stderr, flush=True)
    return out



def _child_fixed(tmp: str, steps: str, *experiments: str) -> dict[str, Any]:
    """In a fresh process: MLflow runs one after another, each timed in phases and broken down by function."""
    from backproplab.problem import make_problem

    uri = f"sqlite:///{Path(tmp) / 'fixed' / 'mlflow.db'}"
    cfgs = {e: compose_cfg(f"experiment={e}", f"trainer.max_steps={steps}", "logger=mlflow",
                           f"logger.tracking_uri={uri}", "logger.experiment_name=bench")
            for e in dict.fromkeys(experiments)}
    os.chdir(tmp)  # whatever a run writes in its working folder stays in tmp
    start = time.perf_counter()
    import mlflow  # noqa: F401

    import_s = time.perf_counter() - start
    runs = []
    for e in experiments:  # timed without a profiler: cProfile's overhead would count as MLflow's
        cfg = cfgs[e]
        phases = timed_mlflow_run(cfg, make_problem(cfg))
        runs.append({"experiment": e, "trainer": cfg.trainer.name, "fixed_s": phases["fixed_s"], "phases": phases})
    breakdowns = {}
    for e in dict.fromkeys(experiments):  # then one more run of each, profiled, for where its time goes
        profile = cProfile.Profile()
        profile.enable()
        timed_mlflow_run(cfgs[e], make_problem(cfgs[e]))
        profile.disable()
        breakdowns[e] = breakdown(profile)
    for run in runs:
        run["breakdown"] = breakdowns[run["experiment"]]
    return {"import_mlflow_s": import_s, "runs": runs}


def breakdown(profile: cProfile.Profile) -> dict[str, float]:
    """Cumulative seconds of the BREAKDOWN functions in a profiled later run (cProfile's overhead included, so
    read them as shares; the fixed costs reported beside them were timed without the profiler)."""
    out: dict[str, float] = {}
    for (_file, _line, name), (_cc, _nc, _tt, cumulative, _callers) in pstats.Stats(profile).stats.items():
        if name in BREAKDOWN:
            out[name] = max(out.get(name, 0.0), cumulative)  # a name defined twice: the outer one
    return out
