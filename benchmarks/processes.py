"""Whole processes: start-up of a run against its reference script, which heavy modules each trainer's process
imports, the nine-example sweep against the nine reference scripts run one after another, and what a sweep job
costs beyond its own loop."""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    HEAVY,
    NINE,
    NOT_FOR_NUMPY,
    REFERENCE,
    TARGETS,
    TRAIN_SCRIPT,
    BenchError,
    Settings,
    alternate,
    child_env,
    compose_cfg,
    measure_process,
    measured_output,
    median,
    ratio,
    run_child,
    time_process,
    timed_output,
)


def bench_startup(s: Settings, tmp: Path) -> dict[str, Any]:
    """Whole-process wall time and peak memory: `train.py trainer=numpy logger=none` against the reference
    numpy_loop.py script; `experiment=numpy logger=none`, the like-for-like process (float64 and the tutorial's
    net, as the script); and a tracked run, `experiment=optim` with the default logger writing to an existing
    store, against the reference optim_loop.py script, with the same run untracked (`logger=none`) beside it to
    split the gap into the trainer's part and the record's."""
    tracked = tmp / "tracked"  # its own launch dir: the store made below, then reused by every measured run
    tracked.mkdir(exist_ok=True)
    commands = {
        "ours": ([sys.executable, TRAIN_SCRIPT, "trainer=numpy", "logger=none"], tmp),
        "ours_experiment": ([sys.executable, TRAIN_SCRIPT, "experiment=numpy", "logger=none"], tmp),
        "tutorial": ([sys.executable, REFERENCE / "numpy_loop.py"], tmp),
        "ours_tracked": ([sys.executable, TRAIN_SCRIPT, "experiment=optim"], tracked),
        "ours_untracked": ([sys.executable, TRAIN_SCRIPT, "experiment=optim", "logger=none"], tmp),
        "tutorial_optim": ([sys.executable, REFERENCE / "optim_loop.py"], tmp),
        # what logging the model costs a whole tracked process: the same run with logger.log_model=false
        "ours_numpy_tracked": ([sys.executable, TRAIN_SCRIPT, "trainer=numpy"], tracked),
        "ours_numpy_no_model": ([sys.executable, TRAIN_SCRIPT, "trainer=numpy", "logger.log_model=false"], tracked),
    }
    measure_process(*commands["ours_tracked"])  # the store exists before the measured runs
    walls: dict[str, list[float]] = {k: [] for k in commands}
    peaks: dict[str, list[float]] = {k: [] for k in commands}
    for i in range(s.process_warmup + s.process_repeats):
        keys = list(commands)
        for k in keys[i % len(keys):] + keys[: i % len(keys)]:  # rotate the order round by round
            wall, peak = measure_process(*commands[k])
            if i >= s.process_warmup:
                walls[k].append(wall)
                peaks[k].append(peak)
    out = {
        "command": "python scripts/train.py trainer=numpy logger=none",
        "command_experiment": "python scripts/train.py experiment=numpy logger=none",
        "tutorial": "python benchmarks/reference/numpy_loop.py > /dev/null",
        "command_tracked": "python scripts/train.py experiment=optim  (MLflow, an existing ./mlflow.db)",
        "command_untracked": "python scripts/train.py experiment=optim logger=none",
        "tutorial_optim": "python benchmarks/reference/optim_loop.py > /dev/null",
        **{f"{k}_s": median(v) for k, v in walls.items()},
        "peak_mib": {k: max(v) for k, v in peaks.items()},
        "samples": walls,
        "target": TARGETS["numpy_process"],
        "target_tracked": TARGETS["tracked_process"],
        "target_model_s": TARGETS["model_process_s"],
    }
    out["model_process_s"] = out["ours_numpy_tracked_s"] - out["ours_numpy_no_model_s"]
    out["ratio"] = ratio(out["ours_s"], out["tutorial_s"])
    out["ratio_experiment"] = ratio(out["ours_experiment_s"], out["tutorial_s"])
    out["ratio_tracked"] = ratio(out["ours_tracked_s"], out["tutorial_optim_s"])
    out["ratio_untracked"] = ratio(out["ours_untracked_s"], out["tutorial_optim_s"])
    print(f"[bench] start-up: {out['ours_s']:.2f}s (experiment=numpy {out['ours_experiment_s']:.2f}s) vs "
          f"{out['tutorial_s']:.2f}s -> {out['ratio']:.2f}x; tracked experiment=optim {out['ours_tracked_s']:.2f}s "
          f"vs {out['tutorial_optim_s']:.2f}s -> {out['ratio_tracked']:.2f}x "
          f"(logger=none {out['ratio_untracked']:.2f}x); the model costs a numpy process "
          f"{out['model_process_s']:+.2f}s", file=sys.stderr, flush=True)
    return out


def bench_imports(s: Settings, tmp: Path) -> dict[str, Any]:
    """Which heavy modules each trainer's process imports (compose + run.train with logger=none)."""
    out: dict[str, Any] = {}
    for name in s.import_trainers:
        answer = run_child("imports", f"trainer={name}", "logger=none", "trainer.max_steps=20", cwd=tmp)
        out[name] = answer
    if "numpy" in out:
        bad = sorted(set(out["numpy"]["heavy"]) & set(NOT_FOR_NUMPY))
        out["numpy_forbidden"] = bad
    summary = ", ".join(f"{k}={v['heavy']}" for k, v in out.items() if isinstance(v, dict))
    print(f"[bench] imports: {summary}", file=sys.stderr, flush=True)
    return out


def _child_imports(*overrides: str) -> dict[str, Any]:
    start = time.perf_counter()
    from backproplab.run import train

    cfg = compose_cfg(*overrides)
    composed = time.perf_counter()
    train(cfg)
    done = time.perf_counter()
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
    return {"heavy": heavy, "compose_s": composed - start, "train_s": done - composed}


def bench_sweep(s: Settings, tmp: Path) -> dict[str, Any]:
    """`train.py -m experiment=<all nine>` (sequential launcher, full MLflow record in a temp launch dir), the same
    sweep on Hydra's joblib launcher (one worker process per CPU), and the nine reference scripts run one after
    another as processes; the three rotate round by round."""
    if not s.sweep:
        return {"skipped": "sweep not requested"}
    sweep_cmd = [sys.executable, TRAIN_SCRIPT, "-m", f"experiment={','.join(s.sweep)}"]
    commands = {"sweep": sweep_cmd, "sweep_joblib": [*sweep_cmd, "hydra/launcher=joblib"]}
    samples: dict[str, list[float]] = {"tutorial": [], **{k: [] for k in commands}}
    for i in range(s.sweep_repeats):
        keys = list(samples)
        for which in keys[i % len(keys):] + keys[: i % len(keys)]:
            if which == "tutorial":
                samples[which].append(sum(time_process([sys.executable, REFERENCE / f"{NINE[e]}.py"], cwd=tmp)
                                          for e in s.sweep))
            else:
                launch = Path(tempfile.mkdtemp(prefix="sweep-", dir=tmp))  # its own store and multirun dir
                samples[which].append(time_process(commands[which], cwd=launch))
    out = {
        "experiments": list(s.sweep),
        "command": " ".join(["python scripts/train.py", *commands["sweep"][2:]]),
        "command_joblib": " ".join(["python scripts/train.py", *commands["sweep_joblib"][2:]]),
        **{f"{k}_s": median(v) for k, v in samples.items()},
        "samples": samples,
        "target": TARGETS["sweep"],
    }
    out["ratio"] = ratio(out["sweep_s"], out["tutorial_s"])
    out["ratio_joblib"] = ratio(out["sweep_joblib_s"], out["tutorial_s"])
    print(f"[bench] sweep: {out['sweep_s']:.1f}s (joblib {out['sweep_joblib_s']:.1f}s) vs {out['tutorial_s']:.1f}s "
          f"-> {out['ratio']:.2f}x (joblib {out['ratio_joblib']:.2f}x)", file=sys.stderr, flush=True)
    return out


def bench_peer(s: Settings, tmp: Path) -> dict[str, Any]:
    """A tracked `experiment=optim` run against the same example as a lightning-hydra-template user writes it
    (benchmarks/peer: automatic optimization, self.log every step, MLFlowLogger on sqlite, a checkpoint every
    100 steps). Both record to an existing store, as whole processes, alternating round by round: wall time and
    peak resident memory (each process's own VmHWM); the loop is each one's own measure of its training (our
    run's log line, the peer's fit)."""
    if not s.peer_repeats:
        return {"skipped": "not in --quick (each round ~25 s)"}
    sides = {
        "ours": [sys.executable, TRAIN_SCRIPT, "experiment=optim"],
        "peer": [sys.executable, "-m", "benchmarks.peer.train"],
    }
    loop = {"ours": re.compile(r"\(loop ([0-9.]+)s"), "peer": re.compile(r"peer loop_s=([0-9.]+)")}
    launch = {k: tmp / f"peer-{k}" for k in sides}
    walls: dict[str, list[float]] = {k: [] for k in sides}
    peaks: dict[str, list[float]] = {k: [] for k in sides}
    loops: dict[str, list[float]] = {k: [] for k in sides}
    for k in sides:  # each store exists before the measured rounds, and the page cache is warm
        launch[k].mkdir(exist_ok=True)
        timed_output(sides[k], launch[k])
    for i in range(s.peer_repeats):
        for k in alternate(i, "ours", "peer"):
            wall, peak, output = measured_output(sides[k], launch[k])
            walls[k].append(wall)
            peaks[k].append(peak)
            loops[k].append(float(loop[k].findall(output)[-1]))
    out = {
        "command": "python scripts/train.py experiment=optim  (MLflow, an existing ./mlflow.db)",
        "peer": "python -m benchmarks.peer.train  (MLFlowLogger, an existing ./mlflow.db)",
        **{f"{k}_s": median(v) for k, v in walls.items()},
        **{f"{k}_loop_s": median(v) for k, v in loops.items()},
        **{f"{k}_peak_mib": median(v) for k, v in peaks.items()},
        "samples": walls, "loop_samples": loops, "peak_samples_mib": peaks, "rounds": s.peer_repeats,
        "target": TARGETS["peer_process"], "target_loop": TARGETS["peer_loop"], "target_peak": TARGETS["peer_peak"],
    }
    out["ratio"] = ratio(out["ours_s"], out["peer_s"])
    out["ratio_loop"] = ratio(out["ours_loop_s"], out["peer_loop_s"])
    out["ratio_peak"] = ratio(out["ours_peak_mib"], out["peer_peak_mib"])
    print(f"[bench] peer: {out['ours_s']:.1f}s vs {out['peer_s']:.1f}s -> {out['ratio']:.2f}x; loop "
          f"{out['ours_loop_s']:.2f}s vs {out['peer_loop_s']:.2f}s -> {out['ratio_loop']:.2f}x; peak "
          f"{out['ours_peak_mib']:.0f} vs {out['peer_peak_mib']:.0f} MiB -> {out['ratio_peak']:.2f}x",
          file=sys.stderr, flush=True)
    return out


JOBS_WORKERS = 2  # hydra.launcher.n_jobs of the measured sweeps: the two workers
JOBS_TARGET = 2.0  # a job's marginal cost / the median loop of its runs (time/loop_s)
JOBS_SIZES = (8, 64)  # seeds of the small and the big sweep (the issue's)
JOBS_SIZES_QUICK = (2, 4)  # --quick: the same formula on sizes CI can afford
JOBS_TIMEOUT_S = 900.0  # one sweep's limit (15 min); --quick: JOBS_TIMEOUT_QUICK_S
JOBS_TIMEOUT_QUICK_S = 300.0


def jobs_command(seeds: int) -> list[str]:
    """The measured sweep of ``seeds`` numpy runs on Hydra's joblib launcher."""
    return [sys.executable, str(TRAIN_SCRIPT), "-m", "hydra/launcher=joblib",
            f"hydra.launcher.n_jobs={JOBS_WORKERS}", "experiment=numpy", f"seed=range(0,{seeds})"]


def _timed_sweep(seeds: int, launch: Path, timeout: float) -> float:
    """Wall time of one sweep launched from ``launch`` (its own mlflow.db and multirun/ there, not a developer's
    MLFLOW_TRACKING_URI); past ``timeout``, it and its joblib workers are killed (common.time_process)."""
    env = {k: v for k, v in child_env().items() if k != "MLFLOW_TRACKING_URI"}
    return time_process(jobs_command(seeds), launch, timeout, env=env)


def _child_loops(launch: Path, seeds: int) -> list[float]:
    """``time/loop_s`` of each job of the sweep recorded in ``launch``/mlflow.db (its child runs; the parent run
    has no loop). A fresh client on that store: nothing cached from another sweep's."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{launch / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = [r for r in client.search_runs(ids, max_results=10_000) if "mlflow.parentRunId" in r.data.tags]
    loops = [r.data.metrics["time/loop_s"] for r in runs if "time/loop_s" in r.data.metrics]
    if len(loops) != seeds:  # a job lost or unrecorded would make the median a figure of another sweep
        raise BenchError(f"the {seeds}-seed sweep in {launch} recorded time/loop_s for {len(loops)} child runs")
    return loops


def bench_jobs(s: Settings, tmp: Path, quick: bool = False) -> dict[str, Any]:
    """A sweep job's marginal cost beyond its loop, as the issue defines it: the small and the big joblib sweep
    (2 workers, experiment=numpy, one seed a job) from fresh launch dirs, alternating pair by pair;
    marginal = (wall(big) - wall(small)) / (big - small) x 2 workers, against the median ``time/loop_s`` of the
    big sweep's runs. The fixed costs (start-up, the parent run, the report) cancel in the difference."""
    small, big = JOBS_SIZES_QUICK if quick else JOBS_SIZES
    timeout = JOBS_TIMEOUT_QUICK_S if quick else JOBS_TIMEOUT_S
    pairs = max(1, s.process_repeats)

    def sweep(seeds: int) -> tuple[float, list[float]]:
        launch = Path(tempfile.mkdtemp(prefix=f"jobs-{seeds}-", dir=tmp))
        wall = _timed_sweep(seeds, launch, timeout)
        loops = _child_loops(launch, seeds) if seeds == big else []
        shutil.rmtree(launch, ignore_errors=True)  # 64 runs' artifacts a round: the temp disk is not the point
        return wall, loops

    for _ in range(s.process_warmup):  # unmeasured: the page cache and .pyc files, which the first sweep pays
        sweep(small)
    walls: dict[int, list[float]] = {small: [], big: []}
    marginals: list[float] = []
    loops: list[float] = []
    for i in range(pairs):
        for seeds in alternate(i, small, big):
            wall, job_loops = sweep(seeds)
            walls[seeds].append(wall)
            loops += job_loops
        marginals.append((walls[big][-1] - walls[small][-1]) / (big - small) * JOBS_WORKERS)
    out = {
        "command": " ".join(["python scripts/train.py", *jobs_command(big)[2:-1], "'seed=range(0,N)'"]),
        "sizes": [small, big],
        "workers": JOBS_WORKERS,
        "formula": f"(wall({big}) - wall({small})) / {big - small} x {JOBS_WORKERS} workers",
        "small_s": median(walls[small]),
        "big_s": median(walls[big]),
        "marginal_s": median(marginals),
        "loop_s": median(loops),
        "samples": {"small": walls[small], "big": walls[big], "marginal": marginals},
        "loop_samples": loops,
        "rounds": pairs,
        "target": JOBS_TARGET,
    }
    out["ratio"] = ratio(out["marginal_s"], out["loop_s"])
    print(f"[bench] jobs: {small} seeds {out['small_s']:.1f}s, {big} seeds {out['big_s']:.1f}s -> "
          f"marginal {out['marginal_s']:.2f}s a job vs its loop {out['loop_s']:.3f}s -> "
          f"{out['ratio']:.2f}x", file=sys.stderr, flush=True)
    return out
