"""Each trainer's loop against its reference loop: same arrays, same steps, alternating, medians."""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import tutorial as scripts
from benchmarks.common import (
    PAIRS,
    TARGETS,
    Settings,
    compose_cfg,
    load,
    median,
    quiet,
    ratio,
    reference,
    rounds,
    trainer_of,
)


def run_trainer(name: str, problem: Any, cfg: Any, silence: bool = False) -> dict[str, Any]:
    """One call of the trainer as run.train makes it with logger=none (a Recorder's on_step), bound to the config
    first (backproplab.spec.bind: the objects its yaml asks for are built then, outside the timed call)."""
    from backproplab.steps import Recorder

    train = trainer_of(cfg)
    rec = Recorder()
    start = time.perf_counter()
    with quiet() if silence else contextlib.nullcontext():
        result = train(problem, rec.on_step)
    return {"loop_s": result.loop_s, "call_s": time.perf_counter() - start, "final_loss": rec.losses[-1]}


def bench_trainers(s: Settings, names: Sequence[str], tutorial_dir: Path | None = None,
                   tmp: Path | None = None) -> dict[str, Any]:
    """Result.loop_s of each trainer against its reference loop (benchmarks/reference/), alternating, same
    data/weights/steps; then, where the tutorial's scripts are at hand, its loop against the tutorial script's
    own, first step to last (benchmarks/tutorial.py).

    Lightning is also run with its progress bar on (output to /dev/null) to show what the bar costs.
    """
    from backproplab.problem import make_problem
    from backproplab.trainers import registry

    out: dict[str, Any] = {}
    for name in names:
        tutorial, experiment = PAIRS[name]
        # imports first: trainers/tensorflow.py sets TF's environment before TF is imported
        registry.load(compose_cfg(f"experiment={experiment}", "logger=none").trainer.name)
        cfg = compose_cfg(f"experiment={experiment}", "logger=none", f"trainer.max_steps={s.steps}",
                          "trainer.progress_bar=false")
        problem = make_problem(cfg)
        # the key stays "tutorial" in the JSON: the reference loop is the tutorial's example, in our words
        variants: dict[str, Callable[[], dict[str, Any]]] = {
            "trainer": functools.partial(run_trainer, name, problem, cfg),
            "tutorial": functools.partial(run_reference, reference(tutorial).loop, problem, cfg),
        }
        if name == "lightning":
            bar_cfg = compose_cfg(f"experiment={experiment}", "logger=none", f"trainer.max_steps={s.steps}",
                                  "trainer.progress_bar=true")
            variants["trainer_progress_bar"] = functools.partial(run_trainer, name, problem, bar_cfg, silence=True)
        load0 = load()
        samples = rounds(variants, s.warmup, s.repeats)
        row = {
            "tutorial": tutorial,
            "experiment": experiment,
            "steps": s.steps,
            "loop_s": {k: median([x["loop_s"] for x in v]) for k, v in samples.items()},
            "samples_loop_s": {k: [round(x["loop_s"], 5) for x in v] for k, v in samples.items()},
            "trainer_call_s": median([x["call_s"] for x in samples["trainer"]]),
            "final_loss": {k: v[-1]["final_loss"] for k, v in samples.items()},
            "load": [load0, load()],
        }
        row["ratio"] = ratio(row["loop_s"]["trainer"], row["loop_s"]["tutorial"])
        row["call_ratio"] = ratio(row["trainer_call_s"], row["loop_s"]["tutorial"])
        if "trainer_progress_bar" in samples:
            row["progress_bar_ratio"] = ratio(row["loop_s"]["trainer_progress_bar"], row["loop_s"]["tutorial"])
        row["target"] = TARGETS["lightning"] if name == "lightning" else TARGETS["hand_trainer"]
        out[name] = row
        print(f"[bench] {name:10s} loop {row['loop_s']['trainer']:.3f}s vs reference {row['loop_s']['tutorial']:.3f}s"
              f" -> {row['ratio']:.2f}x", file=sys.stderr, flush=True)
        if tutorial_dir is not None and name in scripts.SCRIPTS:
            if name in scripts.IN_CHILD:
                script = scripts.compare_in_child(name, s.steps, s.warmup, s.repeats, tutorial_dir, tmp or Path.cwd())
            else:
                script = scripts.compare(name, s.steps, s.warmup, s.repeats, tutorial_dir)
            script["target"] = TARGETS["lightning_script"] if name == "lightning" else TARGETS["hand_script"]
            row["script"] = script
            scripts.report_line(name, script)
    return out


def run_reference(loop: Callable[..., tuple[float, list[float]]], problem: Any, cfg: Any) -> dict[str, Any]:
    """One call of a reference loop on the trainer's own arrays, learning rate and steps."""
    loop_s, losses = loop(problem.x, problem.y, problem.weights, cfg.optim.lr, cfg.trainer.max_steps)
    return {"loop_s": loop_s, "final_loss": losses[-1]}
