"""The console scripts: ``backproplab-train`` (= scripts/train.py) and ``backproplab-verify``.

The config tree ships inside the package (``backproplab/conf``: in a checkout, a link to the repository's
conf/), so an installed package finds it from any directory.
"""

from __future__ import annotations

import gc

import hydra
from omegaconf import DictConfig

from backproplab.runtime import ConfigError, conf_dir, note_named_dirs
from backproplab.suggest import composition_error, hint, nearest


# an absolute path: Hydra would take a relative one for a Python package (backproplab.conf), which it is not
@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _train(cfg: DictConfig) -> float:
    from backproplab.run import main

    return main(cfg)


ELSEWHERE = ("-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name")


def unknown_option(args: list[str]) -> str | None:
    """The one line for a config group option that does not exist (``experiment=nmupy``), else None.

    Hydra refuses it too, in several lines and with exit 1; a typo deserves one line and the exit code of the
    other refusals (2). Plain choices and comma lists are checked; Hydra's sweep functions are left to Hydra."""
    if any(a.split("=")[0] in ELSEWHERE or a.startswith("hydra.searchpath") for a in args):
        return None  # options from another config tree: Hydra knows them
    for arg in args:
        group, sep, value = arg.partition("=")
        # hydra/... groups are extended by Hydra's plugins (launchers, sweepers): Hydra knows their options
        if not sep or arg.startswith(("-", "+", "~")) or "/" in group or "(" in value:
            continue
        if not (conf_dir() / group).is_dir():
            continue
        there = sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))
        for option in (v.strip("'\"") for v in value.split(",")):
            if option not in there and option != "null":
                return (f"error: {group}={option} is not an option of {group}; {hint(nearest(option, there))}"
                        f"options: {', '.join(there)}")
    return None


def versions() -> str:
    """backproplab's version and those of the libraries it is built on (Hydra's own --version names only Hydra's),
    read from the installed packages' metadata: nothing is imported."""
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    names = "torch lightning hydra-core mlflow".split()  # the libraries (one shares a trainer's name)
    return f"backproplab {of('backproplab')} (" + ", ".join(f"{n} {of(n)}" for n in names) + ")"


def train() -> None:
    import os
    import sys

    from hydra.errors import CompactHydraException

    if "--version" in sys.argv[1:]:
        print(versions())
        return
    if line := unknown_option(sys.argv[1:]):
        print(line, file=sys.stderr)
        sys.exit(2)
    note_named_dirs(sys.argv[1:])
    # Hydra prints a refused composition in several lines and exits 1; with HYDRA_FULL_ERROR it raises instead,
    # and the refusal becomes one line here (a user who set HYDRA_FULL_ERROR keeps Hydra's full report)
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        _train()
    except CompactHydraException as e:
        if full_error:
            raise
        print(composition_error(e), file=sys.stderr)
        sys.exit(2)
    except ConfigError as e:  # a launcher's refusal (Slurm's, of the jobs it was asked for)
        from backproplab.tracking.sweep import note_stop

        note_stop(str(e))  # the sweep's parent run says why it stopped
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        # A process holding torch, TF, Lightning and MLflow spends ~2 s in the interpreter's final garbage
        # collection passes; nothing needs collecting at exit (atexit handlers still run).
        gc.freeze()
