"""Results a person can find and read: MLflow's own tools on the default store, the run page's address, the
UI in a real browser, run names, the checkpoint footprint, early divergence, --help, checkpoint refusals."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TRAIN, Workspace, chromium, clean_env, gpu_available, serve, stop

PYTHON_CHECK = """
import mlflow, torch
runs = mlflow.search_runs(experiment_names=["backproplab"])
model = mlflow.pytorch.load_model(f"runs:/{runs.run_id[0]}/model")
print(len(runs), tuple(model(torch.randn(3, 1000)).shape))
"""


def test_mlflows_own_tools_find_the_run_from_the_launch_dir(ws: Workspace) -> None:
    proc = ws.train("trainer.max_steps=20")
    (run,) = ws.runs()
    # the run's last words: its page, valid once `make ui` (or plain `mlflow ui`) serves this directory
    page = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert page in proc.stdout + proc.stderr
    # a fresh process in the launch dir, no flags, no MLFLOW_* variables: MLflow's default store is ours
    check = subprocess.run(
        [sys.executable, "-c", PYTHON_CHECK], cwd=ws.path, env=clean_env(), capture_output=True, text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert check.stdout.split("\n")[-2] == "1 (3, 10)"
    listed = subprocess.run(
        [str(Path(sys.executable).parent / "mlflow"), "runs", "list", "--experiment-id", run.info.experiment_id],
        cwd=ws.path, env=clean_env(), capture_output=True, text=True, timeout=300,
    )
    assert run.info.run_id in listed.stdout, listed.stderr[-2000:]


def test_mlflow_tracking_uri_is_honoured_and_the_key_wins(ws: Workspace, tmp_path_factory) -> None:
    store = tmp_path_factory.mktemp("env")
    env_uri, key_uri = f"sqlite:///{store / 'env.db'}", f"sqlite:///{store / 'key.db'}"
    ws.train("trainer=numpy", "trainer.max_steps=5", env={"MLFLOW_TRACKING_URI": env_uri})
    ws.train("trainer=numpy", "trainer.max_steps=5", f"logger.tracking_uri={key_uri}",
             env={"MLFLOW_TRACKING_URI": env_uri})
    assert not ws.db.exists()
    for uri in (env_uri, key_uri):
        assert len(Workspace.runs_at(uri)) == 1, uri


def test_old_store_under_mlruns_is_named_with_how_to_keep_it(ws: Workspace) -> None:
    (ws.path / "mlruns").mkdir()
    old = ws.path / "mlruns" / "mlflow.db"
    ws.train("trainer=numpy", "trainer.max_steps=5", f"logger.tracking_uri=sqlite:///{old}")
    proc = ws.train("trainer=numpy", "trainer.max_steps=5")
    assert f"logger.tracking_uri=sqlite:///{old}" in proc.stdout + proc.stderr
    assert len(ws.runs_at(f"sqlite:///{old}")) == 1 and len(ws.runs()) == 1  # nothing recorded is lost


@pytest.mark.slow
def test_the_address_make_ui_prints_opens_on_the_runs_table(ws: Workspace) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    ws.train("trainer=numpy", "trainer.max_steps=5")
    (run,) = ws.runs()
    log = ws.path / "ui.log"
    ui, port = serve(lambda port: [sys.executable, str(REPO / "scripts" / "ui.py"), "--port", str(port)], log,
                     cwd=ws.path, env=clean_env())
    try:
        address = re.search(r"http://\S+", log.read_text().splitlines()[0]).group(0)
        assert address.endswith(f"/#/experiments/{run.info.experiment_id}/runs?workflowType=machine_learning")
        dom = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={ws.path / 'chromium'}", "--virtual-time-budget=30000", "--dump-dom", address],
            capture_output=True, text=True, timeout=180,
        ).stdout
    finally:
        stop(ui)
    assert run.info.run_name in dom  # the runs table lists the run ...
    assert "Token Usage" not in dom  # ... rather than the GenAI overview's traces, latency and token usage


def test_a_sweep_names_every_child_apart(ws: Workspace) -> None:
    ws.train("-m", "optim=sgd,adam", "optim.lr=1e-3,1e-4", "trainer.max_steps=3", "trainer.checkpoint_every=0")
    children = ws.runs(children_only=True)
    names = sorted(r.info.run_name for r in children)
    assert names == sorted(f"lightning-sequential-{o} lr={lr}" for o in ("sgd", "adam") for lr in ("0.001", "0.0001"))
    (parent,) = [r for r in ws.runs() if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name.startswith("optim=sgd,adam optim.lr=1e-3,1e-4")
    assert parent.data.tags["mlflow.note.content"].startswith("python ") and " -m " in parent.data.tags[
        "mlflow.note.content"]
    for r in children:  # each child's description opens with the command that makes that one job again
        command = r.data.tags["mlflow.note.content"].splitlines()[0]
        assert re.fullmatch(r"python \S*train\.py optim=\w+ optim\.lr=\S+ .*", command)


def test_a_preset_names_its_run_and_a_sweep_adds_what_it_varies(ws: Workspace) -> None:
    ws.train("-m", "experiment=numpy", "optim.lr=1e-6,2e-6", "trainer.max_steps=3")
    assert sorted(r.info.run_name for r in ws.runs(children_only=True)) == ["numpy lr=1e-06", "numpy lr=2e-06"]


def test_a_default_run_keeps_one_checkpoint_recorded_once(ws: Workspace) -> None:
    ws.train()
    (run,) = ws.runs()
    ckpts = sorted(p.relative_to(ws.path) for p in ws.path.rglob("*.ckpt"))
    assert len(ckpts) == 2 and {p.name for p in ckpts} == {"last.ckpt"}, ckpts  # outputs/ and the record
    footprint = sum(p.stat().st_size for p in ws.path.rglob("*") if p.is_file() and p != ws.db)
    assert footprint <= 2 * 2**20, footprint
    assert [a.path for a in ws.client().list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/last.ckpt"]


def test_a_loss_that_explodes_stops_the_run_before_it_ruins_the_chart(ws: Workspace) -> None:
    proc = ws.train("optim.lr=10", check=False)
    assert proc.returncode == 1 and "trainer.divergence_factor" in proc.stderr
    (run,) = ws.runs()
    assert run.info.status == "FAILED" and "divergence_factor" in run.data.tags["failure_reason"]
    losses = ws.losses(run.info.run_id)
    assert losses and max(losses) <= 1e7 * losses[0]


def test_help_lists_the_groups_their_options_and_examples() -> None:
    proc = subprocess.run([sys.executable, str(TRAIN), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    text = proc.stdout
    assert "trainer_base" not in text and "powered by Hydra" not in text
    for group in sorted(p for p in (REPO / "conf").iterdir() if p.is_dir() and p.name != "hydra"):
        (line,) = [ln for ln in text.splitlines() if ln.startswith(group.name + ": ")]
        assert line.split(": ")[1].split(", ") == sorted(p.stem for p in group.glob("*.yaml")), group.name
    for key in ("seed=", "ckpt_path=", "+rerun=", "continue_on_failure=", "fail_sweep_on_job_failure="):
        assert key in text
    assert text.count("python scripts/train.py ") >= 3 + 2  # usage lines and three examples


def test_a_checkpoint_of_another_model_or_optimizer_is_refused(ws: Workspace) -> None:
    ws.train("trainer.max_steps=20", "trainer.checkpoint_every=10")
    (run,) = ws.runs()
    last = Path(run.data.params["trainer.checkpoint_dir"]) / "last.ckpt"
    for overrides, needle in (
        (["model.hidden=50"], "net.0.bias is [100] in the checkpoint, [50] in the model"),
        (["model=dynamic"], "holds another model's parameters"),
        (["optim=adam"], "was saved with optim=sgd, but this run has optim=adam"),
    ):
        proc = ws.train("trainer.max_steps=40", *overrides, f"ckpt_path={last}", check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "ckpt_path=" in errors[0] and needle in errors[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    assert len(ws.runs()) == 1  # no run was opened for any of them


def test_the_progress_bar_counts_training_steps(ws: Workspace) -> None:
    """trainer.progress_bar=true draws the line even into a pipe: Lightning's steps as every trainer's, no "Epoch"."""
    proc = ws.train("trainer.progress_bar=true", "trainer.max_steps=5", "logger=none")
    out = proc.stdout + proc.stderr
    assert "train" in out and "5/5" in out and " loss " in out and "Epoch" not in out and "it/s" not in out


@pytest.mark.skipif(gpu_available(), reason="a GPU exists")
def test_an_error_names_the_value_typed(ws: Workspace) -> None:
    proc = ws.train("trainer.accelerator=cuda", check=False)
    assert proc.returncode == 2 and "error: trainer.accelerator=cuda was requested" in proc.stderr


@pytest.mark.parametrize("typo", ["experiment=nmupy", "hparams_search=optunaa", "+optim.lrr=1e-3",
                                  "+trainer.max_step=5"])
def test_a_typo_is_one_line_exit_2_and_no_record(ws: Workspace, typo: str) -> None:
    proc = ws.train("trainer=numpy", "trainer.max_steps=3", typo, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip() and "INFO" not in ln]
    assert len(errors) == 1 and errors[0].startswith("error: ") and typo in errors[0], proc.stderr[-2000:]
    assert not ws.db.exists()  # refused before the store was opened
