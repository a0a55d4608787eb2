"""A run's model, as MLflow loads and serves it: the trained torch module (Lightning) with ``mlflow.pytorch``,
or, for every other trainer, its final weights with a numpy forward pass (``tracking/served.py``). Either way
under the run's ``model``, with a signature in the run's dtype and an input example; and the best of a sweep (or a
single run) registered in MLflow's Model Registry (``logger.register``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from backproplab.forward import served_repeats

log = logging.getLogger("backproplab")
SERVED = Path(__file__).with_name("served.py")
EXAMPLE_ROWS = 3  # the input example: the first rows of the training x


def operation(result: Any, problem: Any, model_cfg: Any, experiment_id: str, weights: Path) -> dict[str, Any]:
    """The tracker's "model" operation (tracking.spool): the module itself, or the weights file already written
    to ``weights``; with what the signature and example need, all JSON (a spooled run keeps it as a line)."""
    op: dict[str, Any] = {
        "op": "model",
        "experiment_id": experiment_id,
        "config": {"model": str(model_cfg.name), "repeats": served_repeats(model_cfg), "dtype": str(problem.dtype)},
        "shapes": [[-1, *problem.x.shape[1:]], [-1, *problem.y.shape[1:]]],
        "example": problem.x[:EXAMPLE_ROWS].tolist(),
    }
    if result.model is not None:
        import torch

        # in the run's dtype, as its signature says (a 16-true or bf16-true run's module is half precision)
        return {**op, "object": result.model.cpu().eval().to(getattr(torch, str(problem.dtype)))}
    return {**op, "path": str(weights)}


@contextlib.contextmanager
def _quiet(client: Any) -> Iterator[None]:
    """MLflow's log_model pointed at the client's store, without progress bars in the run's output."""
    import mlflow

    if mlflow.get_tracking_uri() != client.tracking_uri:
        mlflow.set_tracking_uri(client.tracking_uri)
    before = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = before


def log_model(client: Any, run_id: str, op: dict[str, Any], path: Path | None) -> str:
    """Apply a "model" operation; returns the model's id. Explicit requirements: MLflow's inference of them costs
    seconds per run."""
    import mlflow
    from mlflow.models import Model, ModelSignature
    from mlflow.types import Schema, TensorSpec

    dtype = np.dtype(op["config"]["dtype"])
    (d_in, d_out) = op["shapes"]
    signature = ModelSignature(Schema([TensorSpec(dtype, tuple(d_in))]), Schema([TensorSpec(dtype, tuple(d_out))]))
    example = np.asarray(op["example"], dtype)
    # The logged model made with the client: MLflow's fluent API would resolve the git context again (~60 ms, the
    # run has it); the model takes the run's params and source tags. MLflow then checks that the example serves.
    run = client.get_run(run_id)
    source = {k: v for k, v in run.data.tags.items() if k.startswith(("mlflow.source.", "mlflow.user"))}
    logged = client.create_logged_model(op["experiment_id"], name="model", source_run_id=run_id,
                                        params=run.data.params, tags=source)
    common = {"run_id": run_id, "model_id": logged.model_id, "signature": signature, "input_example": example}
    logging.getLogger("mlflow.pyfunc").setLevel(logging.WARNING)  # "Validating input example ...", every time
    with _quiet(client):
        if "object" in op or (path is not None and path.suffix == ".pt"):
            import mlflow.pytorch
            import torch

            model = op["object"] if "object" in op else torch.load(path, weights_only=False)
            logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
            # pickle, not the default pt2: torch.export traces one path through forward(), which is wrong for the
            # dynamic net's Python control flow (MLflow warns; chosen knowingly)
            mlflow.pytorch.log_model(
                model, name="model", serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"], **common,
            )
        else:
            import mlflow.pyfunc

            Model.log(
                artifact_path=None, name="model", flavor=mlflow.pyfunc, python_model=str(SERVED),
                artifacts={"weights": str(path)}, model_config=op["config"], flavor_name="pyfunc.ModelFromCode",
                pip_requirements=[f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"], **common,
            )
    return logged.model_id


# -- the Model Registry ----------------------------------------------------------------------------------------
CHAMPION = "champion"  # the alias of the version registered last: models:/<name>@champion
REGISTERED_TAG = "backproplab.registered"  # on the registering run (a sweep's parent): which run, which version


def register(client: Any, name: str, runs: list[Any], registrar: str) -> str:
    """Register the model of the best of ``runs`` (FINISHED, lowest final loss) as a new version of ``name``
    with the alias ``champion``, and tag ``registrar`` with it. Returns the line that says what was done."""
    from mlflow.exceptions import MlflowException

    ranked = [r for r in runs if r.info.status == "FINISHED" and np.isfinite(r.data.metrics.get("final_loss", np.nan))]
    if not ranked:
        return f"logger.register={name}: no run FINISHED, so no model was registered"
    best = min(ranked, key=lambda r: r.data.metrics["final_loss"])
    (logged,) = client.search_logged_models(
        [best.info.experiment_id], filter_string=f"source_run_id = '{best.info.run_id}' AND name = 'model'")
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, logged.model_uri, run_id=best.info.run_id, model_id=logged.model_id)
    client.set_registered_model_alias(name, CHAMPION, version.version)
    client.set_tag(registrar, REGISTERED_TAG, f"{name} version {version.version}: run {best.info.run_id}")
    loss = best.data.metrics["final_loss"]
    return (f"registered {best.info.run_name} (final loss {loss:.4g}) as {name} version {version.version}, "
            f"alias {CHAMPION}: models:/{name}@{CHAMPION}")


def register_run(cfg: Any, run_id: str) -> None:
    """A single run with ``logger.register``: its own model, registered once it FINISHED."""
    from backproplab.runtime import mask_secrets
    from backproplab.tracking.store import TrackingError, open_store

    name = cfg.logger.register
    try:
        client, _ = open_store(cfg.logger)
        log.info(register(client, name, [client.get_run(run_id)], run_id))
    except Exception as e:  # the run stands FINISHED; the command says what failed, in one line
        raise TrackingError(f"logger.register={name}: the run FINISHED, but registering its model failed: "
                            f"{mask_secrets(str(e))}") from None
