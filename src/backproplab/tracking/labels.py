"""What tells a sweep's runs apart: a short label of the params that differ (``adam lr=0.001``), read from the
params as the user asked for them. The report labels runs with it and tracking/groups.py labels groups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backproplab.tracking.names import distinct
from backproplab.tracking.store import AUTO_TAG

# label order: the config groups a user sweeps most, then every other differing key alphabetically
GROUP_ORDER = ("trainer", "model", "optim", "loss", "data")
# where a run logs or writes is not what it trained, and per-job paths (trainer.checkpoint_dir under each job's
# output dir) differ in every sweep: never a label
IGNORED_PREFIXES = ("logger.",)
LOCATION_SUFFIXES = ("_dir", "_path", "_file", "_uri")
PRESET = "preset"  # the param an experiment preset sets (conf/experiment/*.yaml)


def _determined_by(params: Sequence[dict[str, str]], key: str, by: str) -> bool:
    """True when every run with the same value of ``by`` has the same value of ``key``."""
    seen: dict[str | None, str | None] = {}
    for p in params:
        if seen.setdefault(p.get(by), p.get(key)) != p.get(key):
            return False
    return True


def as_asked(run: Any) -> dict[str, str]:
    """A run's params as the user set them: a key the run chose itself from ``auto`` (its thread count, which
    follows the machine's load at the job's start) reads ``auto``, so that it never tells runs apart."""
    return {**run.data.params, **dict.fromkeys(run.data.tags.get(AUTO_TAG, "").split(), "auto")}


def differing_labels(params: Sequence[dict[str, str]]) -> list[str]:
    """One short label per run, from the params whose values differ across the runs: ``adam lr=0.001``.

    Runs that differ by experiment preset are labelled by it (``numpy``, ``optim``), and everything the preset
    sets is left out. A config group's choice shows as its value (``adam``), and keys that merely follow from
    that choice (``optim.momentum`` is set for sgd, absent for adam) are left out, while a key swept within a
    group shows by its last part (``lr=0.001``). Where a run writes (``*_dir``, ``*_path``, ``logger.*``) is
    never a label.
    """
    keys = sorted(set().union(*params)) if params else []
    differ = [
        k
        for k in keys
        if not k.startswith(IGNORED_PREFIXES)
        and not k.endswith(LOCATION_SUFFIXES)
        and len({p.get(k) for p in params}) > 1
    ]
    shown: list[str] = []
    for k in differ:
        group, _, leaf = k.partition(".")
        if k != PRESET and PRESET in differ and _determined_by(params, k, PRESET):
            continue
        if leaf and leaf != "name" and f"{group}.name" in differ and _determined_by(params, k, f"{group}.name"):
            continue
        shown.append(k)

    def order(k: str) -> tuple[int, str, bool, str]:
        group, _, leaf = k.partition(".")
        # the preset, then each group's choice followed by the keys swept within it: "adam lr=0.01"
        rank = -1 if k == PRESET else GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER)
        return (rank, group, leaf != "name", k)

    shown.sort(key=order)
    leaves = [k.rpartition(".")[2] for k in shown]
    # a float reads as in run names: three significant digits, more where two runs' values would read the same
    short = {}
    for k in shown:
        values = [p.get(k, "unset") for p in params]
        short[k] = dict(zip(values, distinct(values), strict=True))

    def part(p: dict[str, str], k: str) -> str:
        value = p.get(k, "unset")
        if k == PRESET or k.endswith(".name"):
            return value
        leaf = k.rpartition(".")[2]
        return f"{leaf if leaves.count(leaf) == 1 else k}={short[k][value]}"

    return [" ".join(part(p, k) for k in shown) for p in params]
