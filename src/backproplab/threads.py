"""How many CPU threads a run computes with (``trainer.threads``: auto | N), set in torch and BLAS/OpenMP here and
in TensorFlow's and XLA's pools by the TF and JAX trainers.

On a quiet machine a second thread pays from about 1 MFLOP of matmul work per step (measured on 2 cores:
the 5 GEMMs of a step at N = D_in = H = 64 take 0.060 ms on one thread and 0.059 ms on two; at 96, 0.119 and
0.095 ms; at the tutorial's 64x1000x100x10, 0.53 and 0.34 ms). But once other processes keep the cores busy,
OpenMP/BLAS threads descheduled mid-matmul make every call wait for them: with two busy processes beside it
the default run's loop takes 6.8 s on torch's default of 2 threads, against 1.0 s on one (0.6 s quiet). So
``auto`` takes the smallest of:

- what the work can use: a thread per ``FLOPS_PER_THREAD`` of matmul work per step (the crossover above;
  ``scripts/bench.py --only threads`` measures it on any machine);
- the CPUs this process may use: its affinity, or a SLURM allocation's ``SLURM_CPUS_PER_TASK``, divided among
  the jobs of a joblib or submitit-local sweep, or the processes of a CPU DDP run;
- the CPUs nobody else is using right now: the machine's busy time in /proc/stat, less this process's own,
  since the run started (the load average lags by a minute). In a sweep (Hydra multirun) this is settled once,
  from the machine at the sweep's start, by the launching process (``settle_sweep``): every job of the sweep
  takes the same figure, so a job's count is a function of its config and the sweep alone, and two jobs of one
  config and seed compute in the same order and give the same curve, even when the load changes between them.

The count chosen is written into the config, so the run's params record it and ``+rerun`` repeats it (the sum
order of a BLAS reduction depends on it, and so does the last digit of the curve).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from backproplab.runtime import sweep_dir

log = logging.getLogger("backproplab")
FLOPS_PER_THREAD = 1e6  # matmul work per step that each thread needs to pay for itself (measured)
SAMPLE_S, STALE_S = 0.1, 10.0  # other processes' load: watched for at least 0.1 s, over at most 10 s
SWEEP_FILE = "threads.json"  # in the sweep dir: the idle CPUs the sweep settled at its start, for all its jobs


def step_flops(n: int, d_in: int, h: int, d_out: int) -> int:
    """Matmul FLOPs of one training step of Linear(d_in, h)-ReLU-Linear(h, d_out) on a batch of n (2 per
    multiply-add): forward x@w1 and h@w2; backward grad_w2, grad_h and grad_w1. No trainer computes a gradient
    for x (it needs none), so 5 GEMMs: 4·N·D_in·H + 6·N·H·D_out."""
    return 4 * n * d_in * h + 6 * n * h * d_out


def flops_per_step(cfg: DictConfig) -> float:
    """The matmul FLOPs of one training step of the configured model on the configured data."""
    n = int(cfg.data.get("n", 1))
    hidden = cfg.model.get("hidden")
    if hidden is None:  # a formula's few coefficients (the sine edition): a handful of products per sample
        return 6.0 * n * max(len(cfg.model.get("params", [])), 4)
    flops = step_flops(n, int(cfg.data.get("d_in", 1)), int(hidden), int(cfg.data.get("d_out", 1)))
    # the dynamic net's middle layer: max_repeats / 2 times per step on average, 3 GEMMs of N·H·H each
    return flops + 6.0 * n * hidden * hidden * cfg.model.get("max_repeats", 0) / 2


def usable_cpus(cfg: DictConfig | None = None) -> int:
    """The CPUs this process may use: its affinity, or a Slurm allocation's SLURM_CPUS_PER_TASK. Given a run's
    config, the run's share: divided among the jobs or processes started beside it. Without one, the allocation
    whole (a sweep's launching process weighs its jobs against it: tracking.sweep.crowding)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if (slurm := os.environ.get("SLURM_CPUS_PER_TASK", "")).isdigit():  # anything else: no figure to go by
        cpus = min(cpus, int(slurm))
    if cfg is None:
        return max(1, cpus)
    sharing = 1
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and (launcher := HydraConfig.get().get("launcher")):
        target = str(launcher.get("_target_", ""))
        if "joblib" in target:  # n_jobs=-1: as many jobs as CPUs
            jobs = int(launcher.get("n_jobs") or 1)
            sharing = cpus if jobs < 0 else jobs
        elif "LocalLauncher" in target and "submitit" in target:
            sharing = int(launcher.get("array_parallelism") or 1)
    if cfg.trainer.get("accelerator") == "cpu" and "ddp" in str(cfg.trainer.get("strategy", "")):
        devices = cfg.trainer.get("devices", 1)
        sharing *= devices if isinstance(devices, int) else 1
    return max(1, cpus // max(1, sharing))


def _cpu_clock() -> tuple[float, float, float] | None:
    """(now, CPU-seconds the machine has been busy, CPU-seconds this process has used), None without /proc."""
    try:
        with open("/proc/stat") as f:
            jiffies = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(jiffies[:8]) - jiffies[3] - jiffies[4]  # all but idle and iowait
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), time.process_time()


# The window in which other processes' load is measured opens when this module is imported (a run's start, or a
# sweep's in its launching process) and again at each measure, so that a run does not wait for it. A window older
# than STALE_S is not today's load: a fresh sample then costs little beside the job that made it old. A sweep's
# jobs measure nothing: they take the figure the sweep settled at its start (settle_sweep).
_window = _cpu_clock()


def idle_cpus() -> float:
    """How many CPUs nobody else is using: the machine's busy time minus this process's own, over the window
    since the run started (at least ``SAMPLE_S``; the load average lags by a minute). All of them without /proc."""
    global _window
    online = float(os.cpu_count() or 1)
    start = _window
    if start is None or time.monotonic() - start[0] > STALE_S:
        start = _cpu_clock()
    if start is None:
        return online
    time.sleep(max(0.0, start[0] + SAMPLE_S - time.monotonic()))
    now = _window = _cpu_clock()
    if now is None:
        return online
    others = (now[1] - start[1]) - (now[2] - start[2])
    # clamped both ways: /proc/stat and this process's own clock tick at different moments, so a quiet machine
    # can read a hair over every CPU idle (2.004 of 2)
    return min(online, max(0.0, online - others / (now[0] - start[0])))


# A sweep hands its figure to its jobs in a file in the sweep dir, not in an environment variable: every launcher's
# jobs can read the sweep dir (Hydra's own files are there, and submitit's pickles, on the shared file system a
# Slurm cluster needs), whereas the environment does not always travel (sbatch --export=NONE; joblib's loky
# workers are reused across sweeps of one process and keep the environment of the sweep that spawned them).
# The file is written before any job is launched, and its place ties it to its sweep: a rerun into the same
# sweep dir writes it anew.
def settle_sweep(directory: str | Path) -> float:
    """Measure the idle CPUs once, at a sweep's start in the launching process, and leave the figure in the sweep
    dir for its jobs (``sweep_idle``); returns it. Called by the sweep callback's ``on_multirun_start``."""
    idle = idle_cpus()
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)  # the launcher makes it only after the callback
    (path / SWEEP_FILE).write_text(json.dumps({"idle_cpus": idle}) + "\n")
    return idle


def sweep_idle() -> float | None:
    """The idle CPUs this job's sweep settled at its start; None in a single run, or in a sweep that settled none
    (its callback left out, an unreadable file): the job then measures them itself, as a single run does."""
    if (sweep := sweep_dir()) is None:
        return None
    try:
        return float(json.loads((Path(sweep) / SWEEP_FILE).read_text())["idle_cpus"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def choose(flops: float, usable: int, idle: float) -> int:
    """``auto``: as many threads as the work can use, within the usable CPUs that nobody else is using."""
    by_work = int(flops // FLOPS_PER_THREAD)
    return max(1, min(by_work, usable, round(idle)))


def is_auto(cfg: DictConfig) -> bool:
    """Whether the run chooses its thread count itself (None: a run recorded before the key existed)."""
    return cfg.trainer.get("threads", "auto") in ("auto", None)


def resolve(cfg: DictConfig) -> int:
    """The count ``trainer.threads`` (validated: auto or N) stands for, ``auto`` chosen now (in a sweep: from the
    idle CPUs it settled at its start). The run spec (backproplab.spec) records it."""
    count = cfg.trainer.get("threads", "auto")
    if is_auto(cfg):
        settled = sweep_idle()
        flops, usable = flops_per_step(cfg), usable_cpus(cfg)
        idle = idle_cpus() if settled is None else settled
        count = choose(flops, usable, idle)
        log.debug("trainer.threads=auto -> %d (%.0f MFLOP per step, %d usable CPUs, %.1f idle%s)",
                  count, flops / 1e6, usable, idle, "" if settled is None else " at the sweep's start")
    return int(count)


def use(count: int) -> None:
    """Compute with ``count`` threads in torch (intra- and inter-op pools) and in every BLAS/OpenMP runtime loaded
    (threadpoolctl: numpy's OpenBLAS, torch's OpenMP). Call it after the trainer's imports, before its first
    operation. The TensorFlow and JAX trainers set their frameworks' own pools from ``trainer.threads``."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=count)
    if (torch := sys.modules.get("torch")) is not None:
        torch.set_num_threads(count)
        if torch.get_num_interop_threads() != count:
            try:
                torch.set_num_interop_threads(count)
            except RuntimeError:  # set once per process, before parallel work: a later job of a sweep keeps it
                pass
