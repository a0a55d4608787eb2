"""Every run's model, as MLflow loads and serves it: each trainer's logged model predicts as the trainer's own forward
pass (a fresh process loads them all), its signature follows data.dtype, `mlflow models predict` and `mlflow models
serve` answer JSON of plain numbers, and logger.register puts the best of a sweep in the Model Registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, Workspace, clean_env, healthy, serve, stop

from backproplab.trainers import registry

# every model of both editions, with the trainers that support it
MODELS = ("sequential", "custom", "dynamic", "poly3", "legendre3", "poly_nn", "poly_dynamic")
PAIRS = [(t, m) for t in registry.trainers() for m in MODELS if registry.spec(t).supports("model", m)]
FLOAT64 = [("numpy", "sequential"), ("lightning", "sequential")]  # the signature follows data.dtype

LOAD_ALL = """
import json, sys
import mlflow, numpy as np
cases = json.load(open(sys.argv[1]))
out = {}
for key, case in cases.items():
    model = mlflow.pyfunc.load_model(f"runs:/{case['run_id']}/model")
    x = np.load(case["x"])
    out[key] = {"same": [model.predict(x).tolist() for _ in range(2)], "signature": model.metadata.signature.to_dict()}
json.dump(out, open(sys.argv[2], "w"))
"""


def train_and_log(uri: str, trainer: str, model: str, dtype: str) -> tuple[str, np.ndarray, np.ndarray]:
    """One short run, recorded by the tracker as run.train records it: (its run id, the trainer's own forward
    pass of its final weights on x, x)."""
    from hydra import compose, initialize_config_dir

    from backproplab.problem import make_problem
    from backproplab.spec import bind, predict
    from backproplab.tracking.run import MlflowTracker

    data = "sine" if model.startswith(("poly", "legendre")) else "random"
    overrides = [f"trainer={trainer}", f"model={model}", f"data={data}", f"data.dtype={dtype}",
                 "trainer.max_steps=5", f"logger.tracking_uri={uri}"]
    if data == "sine":  # five small steps: a fit is not the point here, only the weights they leave
        overrides.append("optim.lr=1e-9")
    if trainer == "lightning":  # what run.train sets for float64 data; no checkpoints to write
        overrides += ["trainer.checkpoint_every=0", *(["trainer.precision=64-true"] if dtype == "float64" else [])]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    problem = make_problem(cfg)
    with MlflowTracker(cfg) as rec:
        result = bind(cfg)(problem, rec.on_step)
        rec.finish(result, problem)
    return rec.run_id, predict(cfg, result.weights, problem), problem.x


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every (trainer, model) pair trained and logged in this process, then loaded by one fresh process."""
    folder = tmp_path_factory.mktemp("models")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    cases, own = {}, {}
    for trainer, model, dtype in [(t, m, "float32") for t, m in PAIRS] + [(t, m, "float64") for t, m in FLOAT64]:
        key = f"{trainer}-{model}-{dtype}"
        run_id, outputs, x = train_and_log(uri, trainer, model, dtype)
        np.save(folder / f"{key}.npy", x)
        cases[key] = {"run_id": run_id, "x": str(folder / f"{key}.npy")}
        own[key] = outputs
    (folder / "cases.json").write_text(json.dumps(cases))
    env = {**clean_env(), "MLFLOW_TRACKING_URI": uri}
    loaded = subprocess.run([sys.executable, "-c", LOAD_ALL, str(folder / "cases.json"), str(folder / "out.json")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    return {"uri": uri, "cases": cases, "own": own, "served": json.loads((folder / "out.json").read_text()),
            "folder": folder}


@pytest.mark.parametrize(("trainer", "model", "dtype"),
                         [(t, m, "float32") for t, m in PAIRS] + [(t, m, "float64") for t, m in FLOAT64])
def test_the_logged_model_predicts_as_the_trainers_own_forward_pass(
    logged: dict[str, Any], trainer: str, model: str, dtype: str
) -> None:
    key = f"{trainer}-{model}-{dtype}"
    own = np.asarray(logged["own"][key], np.float64)
    first, again = (np.asarray(p, np.float64) for p in logged["served"][key]["same"])
    assert first.shape == own.shape
    rel = 1e-6 if dtype == "float32" else 1e-12  # rounding: the same math, summed in another order
    assert np.max(np.abs(first - own)) <= rel * np.max(np.abs(own)), (key, np.max(np.abs(first - own)))
    assert np.array_equal(first, again)  # a dynamic model too: served at its deepest path, deterministic


@pytest.mark.parametrize(("trainer", "model", "dtype"), [*[(t, m, "float32") for t, m in FLOAT64],
                                                         *[(t, m, "float64") for t, m in FLOAT64],
                                                         ("numpy", "poly3", "float32")])
def test_the_signature_follows_the_data_dtype(logged: dict[str, Any], trainer: str, model: str, dtype: str) -> None:
    signature = logged["served"][f"{trainer}-{model}-{dtype}"]["signature"]
    (inputs,), (outputs,) = json.loads(signature["inputs"]), json.loads(signature["outputs"])
    assert inputs["tensor-spec"]["dtype"] == outputs["tensor-spec"]["dtype"] == dtype
    shapes = ([-1], [-1]) if model.startswith("poly") else ([-1, 1000], [-1, 10])
    assert (inputs["tensor-spec"]["shape"], outputs["tensor-spec"]["shape"]) == shapes


def test_a_numpy_run_loads_its_model_without_torch(logged: dict[str, Any]) -> None:
    run_id = logged["cases"]["numpy-sequential-float32"]["run_id"]
    check = ("import sys, mlflow, numpy as np; m = mlflow.pyfunc.load_model(sys.argv[1]); "
             "m.predict(np.zeros((2, 1000), np.float32)); "
             "print(sorted(k for k in ('torch', 'tensorflow', 'lightning', 'jax') if k in sys.modules))")
    env = {**clean_env(), "MLFLOW_TRACKING_URI": logged["uri"]}
    out = subprocess.run([sys.executable, "-c", check, f"runs:/{run_id}/model"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "[]", out.stderr[-2000:]


def mlflow_cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "mlflow"), *args]


@pytest.mark.parametrize("trainer", ["lightning", "numpy"])
def test_mlflow_models_predict_and_serve_answer_plain_json(logged: dict[str, Any], trainer: str) -> None:
    """MLflow's own CLI, as its docs show it: JSON of plain numbers (float64 to JSON), cast by the signature."""
    case = logged["cases"][f"{trainer}-sequential-float32"]
    x = np.load(case["x"])[:4].astype(np.float64)
    expected = np.asarray(logged["served"][f"{trainer}-sequential-float32"]["same"][0][:4])
    folder: Path = logged["folder"]
    request = folder / f"{trainer}-in.json"
    request.write_text(json.dumps({"inputs": x.tolist()}))
    # the model's environment is this one (--env-manager local); MLflow runs its own tools from PATH
    env = {**clean_env(), "MLFLOW_TRACKING_URI": logged["uri"],
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    uri = f"runs:/{case['run_id']}/model"
    predicted = subprocess.run(
        mlflow_cli("models", "predict", "-m", uri, "-i", str(request), "-t", "json", "--env-manager", "local",
                   "-o", str(folder / f"{trainer}-out.json")),
        env=env, capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    answer = json.loads((folder / f"{trainer}-out.json").read_text())["predictions"]
    assert np.allclose(answer, expected, rtol=1e-6, atol=1e-6)

    server, port = serve(
        lambda port: mlflow_cli("models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1",
                                "-p", str(port)),
        # the scoring server answers /health as MLflow's tracking server does
        folder / f"{trainer}-serve.log", ready=healthy, env=env, start_new_session=True,
    )
    try:
        post = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=request.read_bytes(),
                                      headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(post, timeout=60) as reply:
            served = json.loads(reply.read())["predictions"]
    finally:
        _stop_group(server)
    assert np.allclose(served, expected, rtol=1e-6, atol=1e-6)


def _stop_group(proc: subprocess.Popen) -> None:
    """`mlflow models serve` runs its server in child processes: stopped with it, as a terminal's Ctrl-C would."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stop(proc)


# -- the Model Registry --------------------------------------------------------------------------------------------
def test_a_sweep_registers_its_best_child_as_champion(ws: Workspace) -> None:
    proc = ws.train("-m", "trainer=numpy", "optim.lr=1e-6,2e-6", "seed=1,2", "trainer.max_steps=20",
                    "logger.register=tutorial-net")
    client = ws.client()
    children = ws.runs(children_only=True)
    best = min(children, key=lambda r: r.data.metrics["final_loss"])
    (version,) = client.search_model_versions("name = 'tutorial-net'")
    assert version.run_id == best.info.run_id
    assert client.get_model_version_by_alias("tutorial-net", "champion").version == version.version
    (parent,) = [r for r in ws.runs() if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.tags["backproplab.registered"] == f"tutorial-net version 1: run {best.info.run_id}"
    assert "as tutorial-net version 1, alias champion: models:/tutorial-net@champion" in proc.stdout
    # a fresh process, as the docs show it
    load = ("import mlflow, numpy as np; m = mlflow.pyfunc.load_model('models:/tutorial-net@champion'); "
            "print(m.predict(np.zeros((2, 1000), np.float32)).shape)")
    out = subprocess.run([sys.executable, "-c", load], cwd=ws.path, env=clean_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "(2, 10)", out.stderr[-2000:]


def test_a_single_run_registers_itself_and_a_failed_sweep_nothing(ws: Workspace) -> None:
    proc = ws.train("trainer=numpy", "trainer.max_steps=5", "logger.register=tutorial-net")
    (run,) = ws.runs()
    assert "as tutorial-net version 1, alias champion" in proc.stderr + proc.stdout
    failed = ws.train("-m", "trainer=numpy", "optim.lr=10,20", "trainer.max_steps=50", "logger.register=other",
                      check=False)
    assert failed.returncode == 1
    assert "logger.register=other: no run FINISHED, so no model was registered" in failed.stdout
    client = ws.client()
    assert [v.run_id for v in client.search_model_versions("")] == [run.info.run_id]  # nothing more


def test_a_bad_register_or_log_model_value_is_refused_in_one_line(ws: Workspace) -> None:
    proc = ws.train("trainer=numpy", "logger.log_model=false", "logger.register=tutorial-net", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: logger.register needs logger.log_model=true (there is no model to register)")


def test_a_half_precision_run_is_served_in_its_data_dtype(ws: Workspace) -> None:
    """A bf16-true run trains in bfloat16 (which numpy lacks); its weights and model come back in float32."""
    ws.train("trainer.precision=bf16-true", "trainer.max_steps=5")
    (run,) = ws.runs()
    load = ("import sys, mlflow, numpy as np; m = mlflow.pyfunc.load_model(sys.argv[1]); "
            "y = m.predict(np.ones((2, 1000), np.float32)); print(y.dtype, y.shape)")
    out = subprocess.run([sys.executable, "-c", load, f"runs:/{run.info.run_id}/model"], cwd=ws.path, env=clean_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "float32 (2, 10)", out.stderr[-2000:]
