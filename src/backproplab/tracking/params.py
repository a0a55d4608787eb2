"""A run's config as MLflow records it: dotted params, and YAML artifacts, with any secret in the tracking URI
masked."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from backproplab.runtime import mask_secrets


def flatten(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as dotted params, without the instantiate nodes (``model.net``,
    ``optim.optimizer``, ``loss.criterion``) whose values repeat the keys beside them."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            if "_target_" in node or prefix == "trainer.supports.":  # the registry's, the same for every run
                return
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    if "logger.tracking_uri" in out:
        out["logger.tracking_uri"] = mask_secrets(out["logger.tracking_uri"])
    return out

def resolved_yaml(cfg: DictConfig, resolve: bool = True) -> str:
    """The (resolved) config as YAML, with any secret in the tracking URI masked."""
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=resolve))
    if resolved.get("logger", {}).get("tracking_uri"):
        resolved.logger.tracking_uri = mask_secrets(resolved.logger.tracking_uri)
    return OmegaConf.to_yaml(resolved)
