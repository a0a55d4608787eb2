"""``python scripts/train.py +rerun=<run_id> [key=value ...]``: the exact config of a recorded run, with
this command's key overrides applied on top. It reads config_source.yaml, the run's config with its
interpolations kept (config.yaml resolves to the same values), so that ``optim.lr=...`` reaches the
optimizer node that interpolates it."""

from __future__ import annotations

import os
import tempfile

from omegaconf import DictConfig, OmegaConf

from backproplab.runtime import ConfigError
from backproplab.tracking.store import open_store

_ABSENT = object()


def rerun_config(cfg: DictConfig) -> DictConfig:
    from hydra.core.hydra_config import HydraConfig

    run_id = str(cfg.rerun)
    if cfg.logger.name != "mlflow":
        raise ConfigError(f"rerun={run_id} reads the run from MLflow: use logger=mlflow (and logger.tracking_uri)")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client, _ = open_store(cfg.logger)  # the run is looked up where this command records
    try:
        with tempfile.TemporaryDirectory() as d:
            original = OmegaConf.load(client.download_artifacts(run_id, "config_source.yaml", d))
    except Exception as e:
        raise ConfigError(f"rerun={run_id}: no run with a config_source.yaml artifact in this store ({e})") from None
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    dotlist = []
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        if key == "rerun" or key.startswith("logger"):
            continue
        recorded = OmegaConf.select(original, key, default=_ABSENT)
        if recorded is _ABSENT or isinstance(recorded, DictConfig):
            raise ConfigError(
                f"{item}: a rerun takes overrides of the recorded run's keys (e.g. optim.lr=1e-3), "
                "not config groups or new keys"
            )
        dotlist.append(f"{key}={value}")
    merged = OmegaConf.merge(original, OmegaConf.from_dotlist(dotlist))
    merged.logger = cfg.logger  # record where this command records, not where the original did
    merged.trainer.checkpoint_dir = None
    merged.rerun = run_id
    return merged
