"""Validation of a composed config, in one place, before any work starts.

Every problem is reported as one line naming the key, the bad value and what is allowed. An unknown group
option is refused even earlier (backproplab/cli.py); Hydra's own error for overriding a key that does not exist
keeps its form.
"""

from __future__ import annotations

import math
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from backproplab.runtime import ConfigError, conf_dir
from backproplab.steps import CKPT_META
from backproplab.trainers import registry

ACCELERATORS = ("cpu", "gpu", "cuda", "auto")
PRECISIONS = ("64-true", "64", "32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
DTYPES = ("float32", "float64")
INITS = ("default", "randn", "fixed")
NO_GPU = (
    "trainer.accelerator={} was requested but no CUDA device is available; use trainer.accelerator=cpu or auto"
)


def _int(cfg: DictConfig, key: str, minimum: int) -> None:
    value = cfg_get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r} is invalid: expected an integer >= {minimum}")


def _choice(cfg: DictConfig, key: str, allowed: tuple[str, ...]) -> None:
    value = cfg_get(cfg, key)
    if str(value) not in allowed:
        raise ConfigError(f"{key}={value!r} is invalid: allowed values are {', '.join(allowed)}")


def cfg_get(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if node is not None else None
    return node


APPENDABLE = ("rerun",)  # the keys a command line may add with +key=value (see README: Re-run)


def refuse_added_keys(cfg: DictConfig, overrides: list[str]) -> None:
    """Hydra's ``+key=value`` adds a key that the config does not have, and the run would silently ignore it
    (``+optim.lrr=1e-3`` trains at the default lr): refuse it, naming the nearest keys that are there."""
    from backproplab.suggest import hint, nearest

    for item in overrides:
        if not item.startswith("+") or item.startswith("++"):
            continue
        key = item[1:].partition("=")[0]
        if key in APPENDABLE:
            continue
        parent, _, leaf = key.rpartition(".")
        node = cfg_get(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig) and "_target_" in node:
            continue  # passed on to the object it builds (+optim.optimizer.weight_decay=1e-4)
        there = [str(k) for k in node.keys() if str(k) != leaf] if isinstance(node, DictConfig) else []
        close = [f"{parent + '.' if parent else ''}{k}=..." for k in nearest(leaf, there)]
        raise ConfigError(
            f"{item} adds a key that the config does not have, so it would change nothing; {hint(close)}"
            f"{parent or 'the top level'} has: {', '.join(there)}"
        )


def _number(cfg: DictConfig, key: str, default: Any, ok: Any, expected: str, allowed: tuple = ()) -> None:
    """``key`` (``default`` where absent) is one of ``allowed`` or a finite number (not a bool) for which
    ``ok(value)`` holds, else one line saying what was ``expected``."""
    value = cfg_get(cfg, key)
    value = default if value is None and default is not None else value
    if value in allowed and not isinstance(value, float):
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or not ok(value):
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


def _flag(cfg: DictConfig, key: str, default: Any, allowed: tuple = (True, False)) -> None:
    value = cfg_get(cfg, key)
    value = default if value is None else value
    if not any(value is a or (isinstance(a, str) and value == a) for a in allowed):
        said = ", ".join(str(a).lower() if isinstance(a, bool) else str(a) for a in allowed)
        raise ConfigError(f"{key}={value!r} is invalid: allowed values are {said}")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid value; check the cheap things before CUDA/TF probes."""
    _int(cfg, "seed", 0)
    check_fit(cfg)
    for key in ("data.n", "data.d_in", "data.d_out", "model.hidden", "trainer.max_steps"):
        if key == "trainer.max_steps" or cfg_get(cfg, key) is not None:  # the keys this data and model have
            _int(cfg, key, 1)
    _choice(cfg, "data.dtype", DTYPES)
    _choice(cfg, "model.init", INITS)
    if cfg.model.init == "fixed" and not isinstance(cfg.model.get("start"), DictConfig):
        raise ConfigError(
            f"model.init=fixed needs model.start (a starting value for each parameter); model={cfg.model.name} "
            "has none: use model.init=randn or default"
        )
    _choice(cfg, "loss.reduction", ("sum", "mean"))
    if "bias" in cfg.model:
        _flag(cfg, "model.bias", None)
    if "max_repeats" in cfg.model:  # the dynamic net: 0 repeats is the plain net at every step
        _int(cfg, "model.max_repeats", 0)
    if "max_extra_terms" in cfg.model:  # the dynamic formula: at least one term that may come and go
        _int(cfg, "model.max_extra_terms", 1)
    if cfg.model.init == "fixed":
        for name in cfg.model.params:
            _number(cfg, f"model.start.{name}", None, lambda v: True, "a number")
    _number(cfg, "optim.lr", None, lambda v: v > 0, "a finite number > 0")
    _number(cfg, "optim.momentum", 0.0, lambda v: 0 <= v < 1, "a number in [0, 1)")
    _choice(cfg, "trainer.accelerator", ACCELERATORS)
    _choice(cfg, "trainer.precision", PRECISIONS)
    if str(cfg.trainer.precision).startswith("64") and cfg.data.dtype != "float64":
        raise ConfigError(f"trainer.precision={cfg.trainer.precision} needs data.dtype=float64 (got {cfg.data.dtype})")
    whole = lambda v: isinstance(v, int) and v >= 1  # noqa: E731
    _number(cfg, "trainer.devices", 1, whole, "an integer >= 1 or auto", ("auto",))
    _number(cfg, "trainer.num_nodes", 1, whole, "an integer >= 1")
    _number(cfg, "trainer.threads", "auto", whole, "auto or an integer >= 1", ("auto",))
    _flag(cfg, "trainer.progress_bar", "auto", ("auto", True, False))
    if cfg.logger.name == "mlflow":
        _int(cfg, "logger.flush_every", 1)
        for key, default in (("flush_seconds", 5.0), ("server_timeout", 60.0)):
            _number(cfg, f"logger.{key}", default, lambda v: v > 0, "a number of seconds > 0")
        _flag(cfg, "logger.log_model", True)
        register = cfg.logger.get("register")
        if register is not None and not (isinstance(register, str) and register.strip()):
            raise ConfigError(f"logger.register={register!r} is invalid: expected a registered model's name, or null")
        if register is not None and not cfg.logger.get("log_model", True):
            raise ConfigError("logger.register needs logger.log_model=true (there is no model to register)")
    for key, minimum in (("checkpoint_every", 0), ("keep_checkpoints", 1)):
        if key in cfg.trainer:
            _int(cfg, f"trainer.{key}", minimum)
    _check_lightning_trainer(cfg)
    if cfg.trainer.get("divergence_factor") is not None:
        _number(cfg, "trainer.divergence_factor", None, lambda v: v > 1,
                "a number > 1, or null to turn the check off")
    if cfg.get("ckpt_path"):
        if not registry.spec(cfg.trainer.name).checkpoints:
            raise ConfigError(
                f"ckpt_path is not supported by trainer={cfg.trainer.name}; trainers that support it: "
                f"{', '.join(able('checkpoints'))}"
            )
        if not os.path.isfile(str(cfg.ckpt_path)):
            raise ConfigError(f"ckpt_path={cfg.ckpt_path} is not a file")
        check_resume(cfg)
    check_support(cfg)


# the Lightning Trainer's arguments (trainer.pl) that follow the trainer's own keys, which the rest of the run reads
PL_FOLLOWS = ("accelerator", "devices", "precision", "strategy", "num_nodes", "max_steps")


def _check_lightning_trainer(cfg: DictConfig) -> None:
    """trainer.pl.max_steps=10 would train 10 steps while the run's params, checks and record say trainer.max_steps:
    such a key is set through the trainer's own."""
    pl = cfg.trainer.get("pl")
    if not isinstance(pl, DictConfig):
        return
    for key in PL_FOLLOWS:
        if key in pl and not OmegaConf.is_interpolation(pl, key):
            raise ConfigError(
                f"trainer.pl.{key} follows trainer.{key}, which the rest of the run reads: set trainer.{key}="
                f"{pl[key]} instead"
            )


def check_resume(cfg: DictConfig) -> None:
    """A checkpoint must fit the configured model and optimizer, and leave steps to train: otherwise
    Lightning fails after the run has opened (a traceback and a FAILED run), or records an empty run."""
    import torch
    from hydra.utils import instantiate

    where = f"ckpt_path={cfg.ckpt_path}"
    try:
        ckpt = torch.load(str(cfg.ckpt_path), map_location="cpu", weights_only=False)
        step, saved = int(ckpt["global_step"]), ckpt["state_dict"]
    except Exception as e:
        raise ConfigError(f"{where} is not a Lightning checkpoint ({type(e).__name__})") from None
    wanted = {f"net.{k}": tuple(v.shape) for k, v in instantiate(cfg.model.net).state_dict().items()}
    bias = f" with model.bias={cfg.model.bias}" if "bias" in cfg.model else ""
    found = {k: tuple(v.shape) for k, v in saved.items()}
    if wanted.keys() != found.keys():
        raise ConfigError(
            f"{where} holds another model's parameters ({', '.join(sorted(found)[:4])}), not those of "
            f"model={cfg.model.name}{bias} ({', '.join(sorted(wanted)[:4])})"
        )
    for key in sorted(wanted):
        if wanted[key] != found[key]:
            raise ConfigError(
                f"{where} does not fit model={cfg.model.name} with model.hidden={cfg.model.get('hidden')}: "
                f"{key} is {list(found[key])} in the checkpoint, {list(wanted[key])} in the model"
            )
    meta = ckpt.get(CKPT_META, {})
    for key in ("model", "optim"):
        if meta.get(key, cfg[key].name) != cfg[key].name:
            raise ConfigError(f"{where} was saved with {key}={meta[key]}, but this run has {key}={cfg[key].name}")
    if step >= cfg.trainer.max_steps:
        raise ConfigError(
            f"{where} is at step {step}, so trainer.max_steps={cfg.trainer.max_steps} leaves "
            f"nothing to train: raise trainer.max_steps above {step}"
        )


def models_for(data: str) -> list[str]:
    """The models whose yaml says they fit ``data`` (``data: sine`` in conf/model/poly3.yaml)."""
    yamls = {m: declared("model", m) for m in registry.options("model")}
    return [m for m, y in yamls.items() if y.get("data") == data]


def declared(group: str, option: str) -> DictConfig:
    """An option's own yaml (conf/<group>/<option>.yaml), as shipped."""
    return OmegaConf.load(conf_dir() / group / f"{option}.yaml")


def check_fit(cfg: DictConfig) -> None:
    """A model fits one problem: the two-layer nets the random data, the formulas sin(x)."""
    for group, key in (("model", "data"), ("data", "module")):
        if cfg[group].get(key) != declared(group, cfg[group].name).get(key):
            raise ConfigError(
                f"{group}.{key} says what {group}={cfg[group].name} is (conf/{group}/{cfg[group].name}.yaml): it is "
                "read from that file and cannot be overridden"
            )
    data, fits = cfg.data.name, cfg.model.get("data")
    if fits != data:
        raise ConfigError(
            f"model={cfg.model.name} fits data={fits}, not data={data}; models for data={data}: "
            f"{', '.join(models_for(data))} (an experiment preset sets both: conf/experiment/)"
        )


def able(capability: str, option: str | None = None) -> list[str]:
    """The trainers that have a capability (``checkpoints``), or support an option (``able("model", "dynamic")``)."""
    specs = registry.trainers().values()
    if option is None:
        return [t.name for t in specs if getattr(t, capability)]
    return [t.name for t in specs if t.supports(capability, option)]


def check_declared(cfg: DictConfig) -> None:
    """trainer.module and trainer.supports are the trainer's yaml speaking to the registry, not settings: an
    override of them would change nothing (backproplab.spec drops them from the run's config), so it is refused."""
    name = cfg.trainer.name
    if name not in registry.trainers():
        return  # check_support says so, with the trainers there are
    given = {k: OmegaConf.to_container(v) if isinstance(v, DictConfig) else v
             for k in ("module", "supports") if (v := cfg.trainer.get(k)) is not None}
    if given != {k: v for k, v in registry.spec(name).declared.items() if k in given}:
        raise ConfigError(
            f"trainer.module and trainer.supports say what trainer={name} is (conf/trainer/{name}.yaml): they are "
            "read from that file and cannot be overridden"
        )


def check_support(cfg: DictConfig) -> None:
    """Refuse a trainer x model x optim x accelerator combination the trainer cannot run (its yaml says)."""
    name = cfg.trainer.name
    spec = registry.spec(name)
    if absent := registry.missing(name):
        raise ConfigError(
            f"trainer={name} needs {', '.join(absent)}, which {'is' if len(absent) == 1 else 'are'} not installed: "
            f"{spec.install or 'install ' + ' '.join(absent)}"
        )
    for group in ("model", "optim"):
        chosen = cfg[group].name
        if not spec.supports(group, chosen):
            why = f" ({spec.why})" if spec.why and group == "model" else ""
            raise ConfigError(
                f"{group}={chosen} is not supported by trainer={name}{why}; "
                f"trainers that support it: {', '.join(able(group, chosen))}"
            )
    t = cfg.trainer
    if not spec.distributed and (
        t.get("devices", 1) != 1 or t.get("num_nodes", 1) != 1 or t.get("strategy", "auto") != "auto"
    ):
        raise ConfigError(
            f"trainer={name} runs in one process (trainer.devices=1, trainer.num_nodes=1, trainer.strategy=auto; "
            f"got {t.get('devices')}, {t.get('num_nodes', 1)}, {t.get('strategy', 'auto')}); "
            f"trainers that run distributed: {', '.join(able('distributed'))}"
        )
    if not spec.momentum and cfg.optim.get("momentum", 0.0):
        raise ConfigError(
            f"optim.momentum={cfg.optim.momentum} is not supported by trainer={name} (plain SGD by hand); "
            f"trainers that support it: {', '.join(able('momentum'))}"
        )
    if spec.optim_rules:  # an optimizer key its rule does not implement (weight_decay, ...): refused before the run
        from backproplab.optimizers import rule

        rule(cfg, name)
    if str(t.precision) not in spec.precisions:
        raise ConfigError(
            f"trainer.precision={t.precision} is not supported by trainer={name} (allowed: "
            f"{', '.join(spec.precisions)}); trainers that support it: {', '.join(able('precision', str(t.precision)))}"
        )
    if t.accelerator in ("gpu", "cuda"):
        if "gpu" not in spec.devices:
            raise ConfigError(
                f"trainer.accelerator={t.accelerator} is not supported by trainer={name}, "
                "which runs on the CPU only; use trainer.accelerator=cpu"
            )
        if not gpu_available(name):
            raise ConfigError(no_gpu(name, t.accelerator))


def cuda_device_present() -> bool:
    """Whether this machine has an NVIDIA device at all (its driver's files), asked before any framework is
    imported: on a machine without one, ``trainer.accelerator=gpu`` is refused as fast as a typo."""
    import glob

    return os.path.exists("/proc/driver/nvidia/version") or bool(glob.glob("/dev/nvidia[0-9]*"))


def gpu_available(trainer: str) -> bool:
    """Asked of the framework that will run it: a trainer module may say (TensorFlow does), else torch."""
    if not cuda_device_present():
        return False
    module = registry.load(trainer)  # imported for training anyway
    if hasattr(module, "gpu_available"):
        return bool(module.gpu_available())
    import torch

    return torch.cuda.is_available()


def no_gpu(trainer: str, accelerator: str) -> str:
    """Why the trainer sees no GPU: none here, or (torch sees one) a CPU-only build of its framework."""
    if not cuda_device_present():
        return NO_GPU.format(accelerator)
    spec, module = registry.spec(trainer), registry.load(trainer)
    if spec.gpu_install and hasattr(module, "built_for_gpu") and not module.built_for_gpu():
        import torch

        if torch.cuda.is_available():
            return (f"trainer.accelerator={accelerator}: trainer={trainer}'s framework is a CPU-only build, which "
                    f"cannot use this machine's GPU; {spec.gpu_install}")
    return NO_GPU.format(accelerator)
