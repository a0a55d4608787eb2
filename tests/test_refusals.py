"""What a newcomer trips on (issue 36): a typo gets the nearest names, a refused run leaves nothing on disk, the GPU
refusal imports no framework, and the log calls a run by one name. Real CLI (subprocess) and the Python API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, Workspace, clean_env, gpu_available

TYPOS = [
    (["optim.lrr=1e-3"], "did you mean optim.lr?"),
    (["+optim.lrr=1e-3"], "did you mean optim.lr=...?"),
    (["trainer.max_step=3"], "did you mean trainer.max_steps?"),
    (["experiment=nmupy"], "did you mean numpy?"),
    (["-m", "optim=adma,sgd"], "did you mean adam?"),
    (["sed=3"], "did you mean seed?"),
]


@pytest.mark.parametrize("overrides,hint", TYPOS, ids=[" ".join(o) for o, _ in TYPOS])
def test_every_typo_gets_the_nearest_name(ws: Workspace, overrides: list[str], hint: str) -> None:
    proc = ws.train(*overrides, "logger=none", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: ") and hint in lines[0], lines[0]
    assert not (ws.path / "outputs").exists() and not (ws.path / "multirun").exists()


def python_api(ws: Workspace, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"import backproplab\n{code}"], cwd=ws.path, env=clean_env(),
                          capture_output=True, text=True, timeout=600)


def test_the_python_api_suggests_too_and_leaves_no_folder(ws: Workspace) -> None:
    proc = python_api(ws, """
for overrides in (["optim.lrr=1e-3"], ["experiment=nmupy"], ["trainer=numpy", "optim=adam"]):
    try:
        backproplab.train(*overrides, "logger=none")
    except backproplab.ConfigError as e:
        print("refused:", e)
""")
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [line for line in proc.stdout.splitlines() if line.startswith("refused:")]
    assert len(said) == 3, proc.stdout
    assert "did you mean optim.lr?" in said[0] and "did you mean numpy?" in said[1], said
    assert "optim=adam is not supported by trainer=numpy" in said[2], said
    assert sorted(p.name for p in ws.path.iterdir()) == [], list(ws.path.rglob("*"))


def test_a_refused_single_run_leaves_no_output_folder(ws: Workspace) -> None:
    """The default outputs/<date>/<time> goes (with its date folder and outputs/ once empty); a folder the user
    named that existed before is kept as it was; one the command created is not."""
    proc = ws.train("trainer=numpy", "optim=adam", check=False)
    assert proc.returncode == 2 and "optim=adam is not supported" in proc.stderr
    assert list(ws.path.iterdir()) == [], list(ws.path.rglob("*"))
    mine = ws.path / "mine"
    (mine / "notes.txt").parent.mkdir()
    (mine / "notes.txt").write_text("kept")
    ws.train("trainer=numpy", "optim=adam", "hydra.run.dir=mine", check=False)
    assert (mine / "notes.txt").read_text() == "kept"
    empty = ws.path / "empty"
    empty.mkdir()
    ws.train("trainer=numpy", "optim=adam", "hydra.run.dir=empty", check=False)
    assert empty.is_dir()
    ws.train("trainer=numpy", "optim=adam", "hydra.run.dir=fresh", check=False)
    assert not (ws.path / "fresh").exists()
    ok = ws.train("trainer=numpy", "trainer.max_steps=2", "logger=none")
    assert ok.returncode == 0 and (ws.path / "outputs").is_dir()  # a run that ran keeps its folder


@pytest.mark.skipif(gpu_available(), reason="a GPU exists: nothing to refuse")
@pytest.mark.parametrize("trainer", ["lightning", "tensorflow"])
def test_the_gpu_refusal_imports_no_framework(ws: Workspace, trainer: str) -> None:
    """On a machine without an NVIDIA device, trainer.accelerator=gpu is refused before torch or TensorFlow is
    imported (their import was 5 of the refusal's 5.1 s; a typo's refusal takes 0.5 s)."""
    proc = ws.train(f"trainer={trainer}", "trainer.accelerator=gpu", check=False,
                    env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 2 and "error: trainer.accelerator=gpu" in proc.stderr, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "tensorflow", "lightning", "jax"}, sorted(imported & {"torch", "tensorflow"})


def test_the_log_calls_a_run_by_its_name(ws: Workspace) -> None:
    """The summary line and the FINISHED line name the run as MLflow shows it; logger=none names it the same."""
    proc = ws.train("experiment=numpy", "trainer.max_steps=3")
    (run,) = ws.runs()
    name = run.info.run_name
    out = proc.stdout + proc.stderr
    assert f"] - {name}: 3 steps, loss " in out and f"FINISHED run {name}: http" in out, out[-2000:]
    none = ws.train("experiment=numpy", "trainer.max_steps=3", "logger=none")
    assert f"] - {name}: 3 steps, loss " in none.stdout + none.stderr


def test_a_trainers_declarations_are_not_in_its_record(ws: Workspace) -> None:
    """trainer.module and trainer.supports are the registry's: no run records them, and a rerun needs none."""
    ws.train("trainer=numpy", "trainer.max_steps=3")
    (run,) = ws.runs()
    assert not [k for k in run.data.params if k.startswith(("trainer.module", "trainer.supports"))]
    assert run.data.params["trainer.threads"].isdigit()  # the run spec's settled count, not "auto"
    ws.train(f"+rerun={run.info.run_id}")
    again = ws.runs()[0]
    assert ws.losses(again.info.run_id) == ws.losses(run.info.run_id)


def test_nothing_of_the_harness_runs_in_a_trainers_loop() -> None:
    """No trainer captures the first-step gradients in its loop nor runs a forward pass after it for the served
    outputs: its ``gradients`` and ``predict`` do, outside. (A step region in two parts is left to the compiled
    trainers, tf2 and jax, whose compilation sits between the step's definition and its loop.)"""
    from backproplab import regions
    from backproplab.trainers import registry

    for spec in registry.trainers().values():
        path = REPO / "src" / "backproplab" / regions.module_file(spec.module)
        text = path.read_text()
        assert "grads0" not in text and "outputs =" not in text, path.name
        assert text.count("# lesson: step") <= (2 if spec.name in ("tf2", "jax") else 1), path.name


def test_resolve_leaves_the_composed_config_as_it_was() -> None:
    """The run spec is a read-only copy: the config a user composed is never written."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from backproplab.spec import resolve

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["trainer=numpy", "logger=none", "data.dtype=float64"])
    before = OmegaConf.to_yaml(cfg)
    run = resolve(cfg)
    assert OmegaConf.to_yaml(cfg) == before
    assert isinstance(run.config.trainer.threads, int) and run.config.trainer.precision == "64-true"
    assert "module" not in run.config.trainer and "supports" not in run.config.trainer
    with pytest.raises(Exception, match="read-only|ReadonlyConfigError"):
        run.config.trainer.max_steps = 3
    assert Path(REPO / "src" / "backproplab" / "run.py").read_text().count("open_dict") == 0
