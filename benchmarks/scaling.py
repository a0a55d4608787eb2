"""Scaling: each torch trainer's steady-state step time at N = D_in = H = size against a bare torch.mm chain of
the same matmuls; and torch.compile's effect on the reference optim loop at the largest size."""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from backproplab.threads import step_flops
from benchmarks.common import (
    TARGETS,
    TORCH_TRAINERS,
    Settings,
    StepClock,
    compose_cfg,
    median,
    ratio,
    reference,
    trainer_of,
)


def mm_chain(x: Any, w1: Any, w2: Any, g: Any, steps: int) -> list[float]:
    """The same five matmuls as a training step, and nothing else; returns the time at the end of each step."""
    sync = _sync(x.device)
    stamps = []
    for _ in range(steps):
        h = x.mm(w1)  # forward, layer 1
        h.mm(w2)  # forward, layer 2
        h.t().mm(g)  # grad_w2
        gh = g.mm(w2.t())  # grad_h
        gw1 = x.t().mm(gh)  # grad_w1
        sync(gw1)
        stamps.append(time.perf_counter())
    return stamps


def _sync(device: Any) -> Callable[[Any], None]:
    import torch

    if device.type == "cuda":
        return lambda t: torch.cuda.synchronize()
    return lambda t: None


def intervals(stamps: Sequence[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def chain_run(x: Any, w1: Any, w2: Any, g: Any, steps: int) -> list[float]:
    """The bare chain on every core this process may use: what the trainers' auto thread count is held to."""
    import os

    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    return intervals(mm_chain(x, w1, w2, g, steps))


def trainer_run(name: str, cfg: Any, problem: Any, steps: int) -> list[float]:
    """Steady-state step times of one trainer call."""
    from omegaconf import open_dict

    from backproplab import threads

    with open_dict(cfg):
        cfg.trainer.max_steps = steps
        cfg.trainer.threads = "auto"  # what a run gets: chosen by threads.resolve, set in the frameworks
    count = threads.resolve(cfg)
    train = trainer_of(cfg, threads=count)
    threads.use(count)
    clock = StepClock()
    train(problem, clock)
    return intervals(clock.stamps)


def bench_scaling(s: Settings, device: str = "cpu") -> dict[str, Any]:
    """Time per step and GFLOP/s of each torch trainer at N = D_in = H = size, against the mm chain's rate.

    On CUDA the hand-written trainers run float32 (held against a float32 chain) and Lightning runs
    trainer.precision=bf16-mixed (held against a bfloat16 chain)."""
    import torch

    from backproplab.problem import make_problem

    rows: list[dict[str, Any]] = []
    for size in s.sizes:
        n = d_in = h = size
        flops = step_flops(n, d_in, h, s.d_out)
        base = [f"data.n={n}", f"data.d_in={d_in}", f"model.hidden={h}", f"data.d_out={s.d_out}",
                "data.dtype=float32", "model=sequential", "model.bias=false", "model.init=default",
                "loss=mse_mean", "optim=sgd", "optim.lr=1e-3", "logger=none"]
        if device == "cuda":
            base.append("accelerator=gpu")
        cfgs = {t: compose_cfg(f"trainer={t}", *base) for t in TORCH_TRAINERS}
        if device == "cuda":
            cfgs["lightning"] = compose_cfg("trainer=lightning", *base, "trainer.precision=bf16-mixed")
        problem = make_problem(cfgs["tensor"])
        dev = torch.device("cuda:0" if device == "cuda" else "cpu")
        chains = {"mm": torch.float32}
        if device == "cuda":
            chains["mm_bf16"] = torch.bfloat16
        tensors = {}
        for key, dtype in chains.items():
            x = torch.tensor(problem.x, device=dev, dtype=dtype)
            w1 = torch.tensor(problem.weights["w1"], device=dev, dtype=dtype)
            w2 = torch.tensor(problem.weights["w2"], device=dev, dtype=dtype)
            g = torch.randn(n, s.d_out, device=dev, dtype=dtype)
            tensors[key] = (x, w1, w2, g)
        # size the blocks from the chain's own step time
        mm_chain(*tensors["mm"], steps=2)
        probe = intervals(mm_chain(*tensors["mm"], steps=3))
        t_step = max(median(probe), 1e-6)
        steps = int(min(200, max(3, math.ceil(s.block_s / t_step) + 1)))
        big = t_step * steps > 2.5 * s.block_s  # at the largest sizes: one round, chains before and after
        rounds = 1 if big else 2

        impls: dict[str, Callable[[int], list[float]]] = {
            key: functools.partial(chain_run, *tensors[key]) for key in chains
        }
        for t in TORCH_TRAINERS:
            impls[t] = functools.partial(trainer_run, t, cfgs[t], problem)
        times: dict[str, list[float]] = {k: [] for k in impls}
        if not big:
            for k in impls:  # warm-up: first calls, allocator
                impls[k](3)
        for r in range(rounds):
            keys = list(impls)
            keys = keys[r % len(keys):] + keys[: r % len(keys)]
            for k in keys:
                times[k] += impls[k](steps)
        if big:
            for k in chains:
                times[k] += impls[k](steps)
        for k, ts in times.items():
            t_med = median(ts)
            ref_key = "mm_bf16" if (device == "cuda" and k == "lightning") else "mm"
            rows.append({"size": size, "impl": k, "step_ms": 1000 * t_med, "gflops": flops / t_med / 1e9,
                         "intervals": len(ts), "vs": ref_key})
        ref = {r["impl"]: r["gflops"] for r in rows if r["size"] == size and r["impl"] in chains}
        for r in rows:
            if r["size"] == size:
                r["pct_of_mm"] = 100 * r["gflops"] / ref[r["vs"]]
        print(f"[bench] scaling {device} {size}: " + ", ".join(
            f"{r['impl']} {r['step_ms']:.2f}ms ({r['pct_of_mm']:.0f}%)" for r in rows if r["size"] == size),
            file=sys.stderr, flush=True)
    return {"device": device, "d_out": s.d_out, "dtype": "float32",
            "flops_formula": "4*N*D_in*H + 6*N*H*D_out per step (forward + backward matmuls, no grad for x)",
            "rows": rows, "largest": max(s.sizes), "target_pct": TARGETS["pct_of_mm"]}



def bench_compile(s: Settings) -> dict[str, Any]:
    """The reference optim loop at the largest size with its net wrapped in torch.compile, against the eager net
    (the step time of the steady state, and what the first, compiling step costs)."""
    import numpy as np
    import torch

    nn_loop = reference("nn_loop")
    size = max(s.sizes)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((size, size), dtype=np.float32)
    y = rng.standard_normal((size, s.d_out), dtype=np.float32)
    weights = {"w1": rng.standard_normal((size, size), dtype=np.float32) / size**0.5,
               "b1": np.zeros(size, np.float32),
               "w2": rng.standard_normal((size, s.d_out), dtype=np.float32) / size**0.5,
               "b2": np.zeros(s.d_out, np.float32)}

    def run(compiled: bool, steps: int) -> tuple[float, float]:
        net = nn_loop.sequential(size, size, s.d_out)
        if compiled:
            net = torch.compile(net)
        start = time.perf_counter()
        nn_loop.loop(x, y, weights, 1e-6, 1, optimizer=torch.optim.SGD, net=net)  # the first step (compiles)
        first = time.perf_counter() - start
        seconds, _ = nn_loop.loop(x, y, weights, 1e-6, steps, optimizer=torch.optim.SGD, net=net)
        return first, seconds / steps

    try:
        _, eager = run(False, 4)
        first, compiled = run(True, 4)
    except Exception as e:  # no C++ compiler, an unsupported op: report, do not fail the benchmark
        return {"size": size, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
    out = {"size": size, "eager_step_ms": 1000 * eager, "compiled_step_ms": 1000 * compiled,
           "first_compiled_step_s": first}
    out["speedup"] = ratio(out["eager_step_ms"], out["compiled_step_ms"])
    return out
