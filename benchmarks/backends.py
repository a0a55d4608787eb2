"""TensorFlow 2 and JAX against the trainers they are held to: tf2's loop against the TF1 graph trainer's,
jax's against the tensor trainer's. Same arrays, same steps, alternating rounds, medians; compile (tracing)
time reported on its own. The bare matrix products of one step, JAX against torch, say how much of a gap is
the library's kernels rather than the trainer."""

from __future__ import annotations

import sys
import time
from typing import Any

from benchmarks.common import TARGETS, Settings, compose_cfg, load, median, ratio, trainer_of

# the trainer -> the trainer it is held against (issue 12)
BACKENDS: dict[str, str] = {"tf2": "tensorflow", "jax": "tensor"}


def _run(name: str, problem: Any, cfg: Any) -> dict[str, float]:
    from backproplab.steps import Recorder

    rec = Recorder()
    result = trainer_of(cfg)(problem, rec.on_step)
    return {"loop_s": result.loop_s, "compile_s": result.timings.get("compile_s", 0.0)}


def bench_backends(s: Settings) -> dict[str, Any]:
    from backproplab.problem import make_problem
    from backproplab.trainers import registry
    from backproplab.trainers.registry import missing

    out: dict[str, Any] = {}
    for name, against in BACKENDS.items():
        if missing(name):
            out[name] = {"skipped": f"{', '.join(missing(name))} not installed"}
            continue
        # the tutorial's tensor example: bias-free net, randn start, float32, SGD lr 1e-6
        cfgs = {t: compose_cfg("experiment=tensor", f"trainer={t}", "logger=none", f"trainer.max_steps={s.steps}")
                for t in (against, name)}
        for cfg in cfgs.values():
            registry.load(cfg.trainer.name)  # imports first (TensorFlow's environment is set on import)
        problem = make_problem(cfgs[name])
        samples: dict[str, list[dict[str, float]]] = {name: [], against: []}
        load0 = load()
        for i in range(s.warmup + s.repeats):
            order = [name, against] if i % 2 == 0 else [against, name]
            for t in order:
                sample = _run(t, problem, cfgs[t])
                if i >= s.warmup:
                    samples[t].append(sample)
        loop = {t: median([x["loop_s"] for x in v]) for t, v in samples.items()}
        row = {
            "against": against,
            "steps": s.steps,
            "loop_s": loop,
            "samples_loop_s": {t: [round(x["loop_s"], 5) for x in v] for t, v in samples.items()},
            "compile_s": median([x["compile_s"] for x in samples[name]]),
            "ratio": ratio(loop[name], loop[against]),
            "target": TARGETS[f"{name}_vs_{against}"],
            "load": [load0, load()],
        }
        if name == "jax":
            row["matmul_ratio"] = matmul_ratio(problem.x, problem.weights["w1"])
        out[name] = row
        print(f"[bench] {name:10s} loop {loop[name]:.3f}s vs {against} {loop[against]:.3f}s -> {row['ratio']:.2f}x "
              f"(compile {row['compile_s']:.2f}s)", file=sys.stderr, flush=True)
    return out


def matmul_ratio(x: Any, w: Any, rounds: int = 300) -> float:
    """JAX's time over torch's for one step's two big products, x @ w1 and x.T @ (x @ w1), at the problem's size."""
    import jax
    import jax.numpy as jnp
    import torch

    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    pair = jax.jit(lambda a, b: (a @ b, a.T @ (a @ b)))
    jax.block_until_ready(pair(xj, wj))

    def torch_pair() -> None:
        h = xt.mm(wt)
        xt.t().mm(h)

    def jax_pair() -> None:
        jax.block_until_ready(pair(xj, wj))

    def timed(fn: Any) -> float:
        start = time.perf_counter()
        for _ in range(rounds):
            fn()
        return (time.perf_counter() - start) / rounds

    t, j = [], []
    for _ in range(5):
        t.append(timed(torch_pair))
        j.append(timed(jax_pair))
    return ratio(median(j), median(t))

