"""The pipeline core (issue 2): the real CLI, a real sqlite MLflow store read back with a fresh client."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from conftest import REPO, Workspace, gpu_available

MODELS = ("sequential", "custom", "dynamic")
OPTIMS = ("sgd", "sgd_momentum", "adam", "rmsprop", "adagrad")
LOSSES = ("mse_sum", "mse_mean")
ACCELERATORS = ("cpu", "gpu", "auto", "ddp_cpu")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """One multirun: every model x two optimizers, 30 steps each (one process, imports paid once)."""
    ws = Workspace(tmp_path_factory.mktemp("sweep"))
    ws.proc = ws.train("-m", "model=sequential,custom,dynamic", "optim=sgd,adam", "trainer.max_steps=30")
    return ws


def test_multirun_makes_one_parent_with_six_children(sweep: Workspace) -> None:
    runs = sweep.runs()
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(children) == 6
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert parents[0].info.status == "FINISHED"
    combos = {(r.data.params["model.name"], r.data.params["optim.name"]) for r in children}
    assert combos == set(itertools.product(MODELS, ("sgd", "adam")))
    assert "6 finished" in sweep.proc.stdout


def test_every_model_and_optimizer_trains(sweep: Workspace) -> None:
    for run in sweep.runs(children_only=True):
        losses = sweep.losses(run.info.run_id)
        assert len(losses) == 30, run.info.run_name
        assert losses[-1] < losses[0], (run.info.run_name, losses[0], losses[-1])
        assert run.info.status == "FINISHED"


def test_single_run_record_is_complete(ws: Workspace) -> None:
    ws.train("trainer.max_steps=50", "model=custom", "optim=adam", "optim.lr=1e-3")
    client = ws.client()
    exp = client.get_experiment_by_name("backproplab")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert Path(exp.artifact_location.removeprefix("file://")) == ws.path / "mlruns" / "backproplab"
    (run,) = ws.runs()
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "lightning-custom-adam"
    params = run.data.params
    assert params["model.name"] == "custom" and params["model.hidden"] == "100"
    assert params["optim.lr"] == "0.001" and params["trainer.max_steps"] == "50"
    assert params["data.d_in"] == "1000" and params["seed"] == "0"
    tags = run.data.tags
    assert (tags["trainer"], tags["model"], tags["optim"]) == ("lightning", "custom", "adam")
    assert "optim.lr=1e-3" in tags["overrides"]
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(50))
    for key in ("final_loss", "time/total_s", "time/step_ms", "throughput/samples_per_s"):
        assert key in run.data.metrics, key
    assert run.data.metrics["final_loss"] == ws.losses(run.info.run_id)[-1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "loss_curve.png"} <= artifacts
    assert ws.db.is_file() and (ws.path / "mlruns" / "backproplab").is_dir()  # MLflow's default store, here


def test_logged_dynamic_model_serves_one_depth_and_trains_at_random_ones(sweep: Workspace) -> None:
    import mlflow.pytorch
    import torch

    (run,) = [r for r in sweep.runs(children_only=True) if r.data.params["model.name"] == "dynamic"][:1]
    mlflow_uri_model = f"runs:/{run.info.run_id}/model"
    import mlflow

    mlflow.set_tracking_uri(sweep.uri)
    model = mlflow.pytorch.load_model(mlflow_uri_model)
    x = torch.randn(4, 1000)
    with torch.no_grad():
        assert not model.training  # logged in eval mode: its deepest path, the served rule (backproplab.forward)
        assert len({tuple(model(x).flatten().tolist()) for _ in range(10)}) == 1
        assert torch.equal(model(x), model(x, repeats=model.max_repeats))
        model.train()  # training mode: the depth drawn per forward pass, like the tutorial
        assert len({tuple(model(x).flatten().tolist()) for _ in range(40)}) > 1


def test_same_seed_same_curve_other_seed_other_curve(ws: Workspace) -> None:
    # one thread, set: the sum order cannot change under the comparison (auto's own guarantee within a sweep is
    # test_threads.py's test_a_sweep_settles_auto_once_same_seed_same_count_same_curve)
    ws.train("-m", "seed=7,7,8", "trainer.max_steps=20", "model=dynamic", "trainer.threads=1")
    runs = ws.runs(children_only=True)
    by_seed: dict[str, list] = {}
    for r in runs:
        by_seed.setdefault(r.data.params["seed"], []).append(ws.losses(r.info.run_id))
    a, b = by_seed["7"]
    (c,) = by_seed["8"]
    assert a == b
    assert a != c


def test_tracking_uri_and_experiment_name_override(ws: Workspace, tmp_path_factory) -> None:
    other = tmp_path_factory.mktemp("store") / "team.db"
    uri = f"sqlite:///{other}"
    ws.train("trainer.max_steps=5", f"logger.tracking_uri={uri}", "logger.experiment_name=mine", "logger=mlflow")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mine")
    assert len(client.search_runs([exp.experiment_id])) == 1
    assert not ws.db.exists()


def test_logger_none_records_nothing(ws: Workspace) -> None:
    proc = ws.train("trainer.max_steps=5", "logger=none")
    assert not (ws.path / "mlruns").exists() and not ws.db.exists()
    assert "5 steps" in proc.stderr + proc.stdout


@pytest.mark.skipif(gpu_available(), reason="a GPU exists: see test_gpu_trains")
def test_gpu_request_without_gpu_is_one_clear_line(ws: Workspace) -> None:
    proc = ws.train("model=dynamic", "optim=sgd_momentum", "trainer.accelerator=gpu", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert (
        "trainer.accelerator=gpu was requested but no CUDA device is available; "
        "use trainer.accelerator=cpu or auto"
    ) in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs a CUDA device")
def test_gpu_trains(ws: Workspace) -> None:
    ws.train("model=dynamic", "optim=sgd_momentum", "trainer.accelerator=gpu", "trainer.max_steps=50")
    (run,) = ws.runs()
    assert run.info.status == "FINISHED"


def test_compose_api_builds_every_combination() -> None:
    """model x optim x loss x accelerator all compose, and their torch objects instantiate."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for model, optim, loss, acc in itertools.product(MODELS, OPTIMS, LOSSES, ACCELERATORS):
            cfg = compose(
                "config", overrides=[f"model={model}", f"optim={optim}", f"loss={loss}", f"accelerator={acc}"]
            )
            assert cfg.trainer.accelerator == acc.removeprefix("ddp_") and cfg.model.name == model
            net = instantiate(cfg.model.net)
            opt = instantiate(cfg.optim.optimizer)(net.parameters())
            assert isinstance(opt, torch.optim.Optimizer) and opt.defaults["lr"] == cfg.optim.lr
            assert instantiate(cfg.loss.criterion).reduction == cfg.loss.name.removeprefix("mse_")


def test_dynamic_net_that_skips_its_middle_layer_at_step_0(ws: Workspace) -> None:
    """Seed 4's schedule starts with 0 repeats: the middle layer has no gradient at the first step."""
    from hydra import compose, initialize_config_dir

    from backproplab.problem import make_problem

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model=dynamic", "seed=4", "trainer.max_steps=3"])
    assert make_problem(cfg).repeats[0] == 0
    ws.train("model=dynamic", "seed=4", "trainer.max_steps=3", "logger=none")
