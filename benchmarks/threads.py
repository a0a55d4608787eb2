"""Threads: where a second thread starts to pay (the crossover ``trainer.threads=auto`` is built on), whether
``auto`` is as fast as the best fixed count on a quiet machine, and what the default run's loop costs once
other processes keep every core busy (the benchmark starts them itself, one per CPU, and ends them)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from backproplab import threads
from backproplab.threads import step_flops
from benchmarks.common import TARGETS, Settings, compose_cfg, median, ratio, trainer_of
from benchmarks.scaling import intervals, mm_chain


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[list[subprocess.Popen]]:
    """``count`` processes that each keep a CPU busy, as a browser, a build or a sweep's other jobs would."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def chain_step_s(shape: tuple[int, int, int, int], count: int, steps: int) -> float:
    """The median step time of the 5 GEMMs of a training step at ``shape`` on ``count`` torch threads."""
    import torch

    n, d_in, h, d_out = shape
    g = torch.Generator().manual_seed(0)
    x, w1 = torch.randn(n, d_in, generator=g), torch.randn(d_in, h, generator=g)
    w2, grad = torch.randn(h, d_out, generator=g), torch.randn(n, d_out, generator=g)
    torch.set_num_threads(count)
    mm_chain(x, w1, w2, grad, steps=3)  # warm-up
    return median(intervals(mm_chain(x, w1, w2, grad, steps=steps)))


def crossover(s: Settings) -> list[dict[str, Any]]:
    """Each shape's step time on 1..CPUs threads (quiet), the best count, and auto's count against it."""
    cpus = len(os.sched_getaffinity(0))
    rows = []
    for shape in s.thread_shapes:
        flops = step_flops(*shape)
        steps = max(20, min(400, int(2e9 / flops)))  # ~1 s of work per count at a few GFLOP/s
        times = {c: chain_step_s(shape, c, steps) for c in range(1, cpus + 1)}
        best = min(times, key=times.__getitem__)
        auto = threads.choose(flops, cpus, idle=cpus)  # what auto picks on this machine when it is quiet
        rows.append({"shape": list(shape), "mflop": flops / 1e6, "step_ms": {c: 1e3 * t for c, t in times.items()},
                     "best": best, "auto": auto, "auto_vs_best": ratio(times[auto], times[best])})
        print(f"[bench] threads {shape}: " + ", ".join(f"{c}t {1e3 * t:.3f}ms" for c, t in times.items())
              + f" -> best {best}, auto {auto}", file=sys.stderr, flush=True)
    return rows


def one_loop(s: Settings, setting: str | int) -> tuple[float, int]:
    """(loop seconds, threads) of the default run (``python scripts/train.py``'s Lightning run, logger=none) as
    run.train runs it: trainer.threads resolved (``auto`` chosen now), then set in the frameworks loaded."""
    from omegaconf import open_dict

    from backproplab.problem import make_problem
    from backproplab.steps import Recorder

    cfg = compose_cfg("logger=none", f"trainer.max_steps={s.steps}", "trainer.progress_bar=false")
    with open_dict(cfg):
        cfg.trainer.threads = setting
    count = threads.resolve(cfg)  # the count (auto: chosen now), which the run's spec writes into its config
    train = trainer_of(cfg, threads=count)
    threads.use(count)
    return train(make_problem(cfg), Recorder().on_step).loop_s, count


def default_loops(s: Settings, settings: list[str | int]) -> dict[str | int, dict[str, Any]]:
    """The default run's loop on each thread setting, the settings alternating round by round (drift in the
    machine's load hits them all); a warm-up round, then medians."""
    samples: dict[str | int, list[tuple[float, int]]] = {k: [] for k in settings}
    for i in range(s.warmup + s.repeats):
        for k in settings[i % len(settings):] + settings[: i % len(settings)]:
            sample = one_loop(s, k)
            if i >= s.warmup:
                samples[k].append(sample)
    return {k: {"loop_s": median([x[0] for x in v]), "samples_loop_s": [round(x[0], 4) for x in v],
                "threads": [x[1] for x in v]} for k, v in samples.items()}


def bench_threads(s: Settings) -> dict[str, Any]:
    import torch

    before = torch.get_num_threads()
    cpus = len(os.sched_getaffinity(0))
    try:
        out: dict[str, Any] = {"cpus": cpus, "flops_per_thread": threads.FLOPS_PER_THREAD,
                               "crossover": crossover(s)}
        quiet = default_loops(s, ["auto", *range(1, cpus + 1)])
        fixed = {c: quiet[c]["loop_s"] for c in range(1, cpus + 1)}
        best = min(fixed, key=fixed.__getitem__)
        out["quiet"] = {"auto": quiet["auto"], "fixed_loop_s": fixed, "best": best,
                        "ratio": ratio(quiet["auto"]["loop_s"], fixed[best]), "target": TARGETS["auto_vs_best"]}
        with busy_processes(cpus):  # auto against torch's own default, one thread per CPU
            loaded = default_loops(s, ["auto", cpus])
        out["under_load"] = {
            "busy_processes": cpus, "quiet": quiet["auto"], "loaded": loaded["auto"],
            "loaded_all_threads_loop_s": loaded[cpus]["loop_s"],
            "ratio": ratio(loaded["auto"]["loop_s"], quiet["auto"]["loop_s"]),
            "ratio_all_threads": ratio(loaded[cpus]["loop_s"], quiet["auto"]["loop_s"]),
            "target": TARGETS["under_load"],
        }
        print(f"[bench] under load: default loop {quiet['auto']['loop_s']:.3f}s quiet ({quiet['auto']['threads'][0]} "
              f"threads) -> {loaded['auto']['loop_s']:.3f}s with {cpus} busy processes "
              f"({loaded['auto']['threads'][0]} threads); {loaded[cpus]['loop_s']:.3f}s on {cpus} threads",
              file=sys.stderr, flush=True)
        return out
    finally:
        threads.use(before)
