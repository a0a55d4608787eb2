"""The tutorial's own scripts, run unchanged: each trainer's loop against the loop of the tutorial's code block it
implements (issue 35). Nothing of the scripts is copied here: they are read from a folder given by
``--tutorial-dir`` or ``$BACKPROPLAB_TUTORIAL_DIR`` (the seed's ``learning-pytorch-with-examples`` blocks:
numpy_manual.py, tensor_manual.py, ...), and without one that target is skipped, in one line.

Both sides are timed the same way, from their first step to their last: a script by the ``print`` of each of its
steps (given to it as a function that writes to a buffer and notes the time), a trainer by its ``on_step`` (a
Recorder, as ``logger=none`` runs it, that notes the time). Imports, data and graph building come before the first
step, and so are left out on both sides. The print that follows the script's ``steps``-th step ends it: both
sides train the same number of steps (a script's own count is the tutorial's 500).

TensorFlow's script calls ``tf.disable_eager_execution()``, which changes TensorFlow for the whole process (the tf2
trainer measured later needs eager execution): that pair is measured in a child process of its own.
"""

from __future__ import annotations

import builtins
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, StepClock, median, ratio, rounds, run_child

ENV = "BACKPROPLAB_TUTORIAL_DIR"
# the trainer -> the tutorial's code block it implements (the seed's file names)
SCRIPTS: dict[str, str] = {
    "numpy": "numpy_manual.py",
    "tensor": "tensor_manual.py",
    "autograd": "autograd.py",
    "function": "custom_function.py",
    "tensorflow": "tf_static.py",
    "lightning": "optim_adam.py",
}
IN_CHILD = ("tensorflow",)  # measured in a process of its own (the script disables eager execution process-wide)
SEED = REPO.parent / "shared" / "seed"  # where this project's workspace keeps the tutorial, when it has it


def tutorial_dir(option: str | os.PathLike | None = None) -> Path | None:
    """The folder with the tutorial's scripts: the option, else $BACKPROPLAB_TUTORIAL_DIR, else the workspace's
    seed beside the repository; None when none of them holds the scripts."""
    for candidate in (option, os.environ.get(ENV), SEED):
        if candidate and all((Path(candidate) / f).is_file() for f in SCRIPTS.values()):
            return Path(candidate).resolve()
        if candidate and candidate is not SEED:  # asked for, but not there: say so rather than guess another
            return None
    return None


def missing_line(option: str | os.PathLike | None = None) -> str:
    """The one line that says why the tutorial-script targets were not measured."""
    asked = option or os.environ.get(ENV)
    where = f"{asked} lacks them" if asked else f"no folder given (--tutorial-dir or ${ENV})"
    return f"the tutorial's scripts ({', '.join(SCRIPTS.values())}): {where}; their targets are skipped"


class _Stop(BaseException):
    """Raised by the script's print after its last measured step (BaseException: no `except Exception` eats it)."""


def run_script(path: Path, steps: int) -> dict[str, Any]:
    """One run of a tutorial script, unchanged, in this process (its imports are cached by then: import the
    framework first), for ``steps`` steps: the time from its first step's print to its last step's, and its
    last printed loss."""
    stamps: list[float] = []
    buffer = io.StringIO()

    def stamped_print(*args: Any, **kwargs: Any) -> None:
        builtins.print(*args, **{**kwargs, "file": buffer})
        stamps.append(time.perf_counter())
        if len(stamps) >= steps:
            raise _Stop

    code = compile(path.read_text(encoding="utf-8"), str(path), "exec")
    scope = {"__name__": "__main__", "__file__": str(path), "__builtins__": builtins, "print": stamped_print}
    try:
        exec(code, scope)  # noqa: S102 - the tutorial's own code block, as `python <script>` would run it
    except _Stop:
        pass
    last = buffer.getvalue().splitlines()[-1].split()[-1]
    return {"loop_s": stamps[-1] - stamps[0], "steps": len(stamps), "final_loss": float(last)}


def compare(name: str, steps: int, warmup: int, repeats: int, folder: Path) -> dict[str, Any]:
    """The trainer against its tutorial script in this process, alternating round by round, medians."""
    from backproplab.problem import make_problem
    from backproplab.trainers import registry
    from benchmarks.common import PAIRS, compose_cfg, trainer_of

    script = folder / SCRIPTS[name]
    cfg = compose_cfg(f"experiment={PAIRS[name][1]}", "logger=none", f"trainer.max_steps={steps}",
                      "trainer.progress_bar=false")
    registry.load(cfg.trainer.name)  # the framework's imports (TensorFlow's environment is set by the trainer's module)
    problem = make_problem(cfg)

    def trainer_side() -> dict[str, Any]:
        train, clock = trainer_of(cfg), StepClock()
        train(problem, clock)
        return {"loop_s": clock.first_to_last(), "steps": len(clock.stamps), "final_loss": clock.recorder.losses[-1]}

    def script_side() -> dict[str, Any]:
        if name == "tensorflow":  # each run of the script builds its graph anew in TF's default graph: a fresh one
            import tensorflow as tf

            tf.compat.v1.reset_default_graph()
        return run_script(script, steps)

    return summary(name, rounds({"trainer": trainer_side, "script": script_side}, warmup, repeats))


def summary(name: str, samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    loop = {k: median([x["loop_s"] for x in v]) for k, v in samples.items()}
    return {
        "script": SCRIPTS[name],
        "steps": samples["script"][0]["steps"],
        "loop_s": loop,
        "samples_loop_s": {k: [round(x["loop_s"], 5) for x in v] for k, v in samples.items()},
        "final_loss": {k: v[-1]["final_loss"] for k, v in samples.items()},
        "ratio": ratio(loop["trainer"], loop["script"]),
        "rounds": len(samples["script"]),
    }


def compare_in_child(name: str, steps: int, warmup: int, repeats: int, folder: Path, cwd: Path) -> dict[str, Any]:
    answer = run_child("script", name, str(steps), str(warmup), str(repeats), str(folder), cwd=cwd)
    answer.pop("process_s", None)
    return answer


def _child_script(name: str, steps: str, warmup: str, repeats: str, folder: str) -> dict[str, Any]:
    return compare(name, int(steps), int(warmup), int(repeats), Path(folder))


def report_line(name: str, row: dict[str, Any]) -> None:
    print(f"[bench] {name:10s} loop {row['loop_s']['trainer']:.3f}s vs the tutorial's {row['script']} "
          f"{row['loop_s']['script']:.3f}s (first step to last, {row['steps']} steps) -> {row['ratio']:.2f}x",
          file=sys.stderr, flush=True)
