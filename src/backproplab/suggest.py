"""The nearest names to a typo, for every refusal of an unknown key or option (``did you mean optim.lr?``).

Read from the config tree's yaml files, so a suggestion costs milliseconds and imports no framework: a key under
a group (``optim.lrr``) is looked for among the keys that any option of that group has, a top-level key among
config.yaml's keys and the group names, an option among the group's files.
"""

from __future__ import annotations

import difflib
from functools import cache

from omegaconf import DictConfig, OmegaConf

from backproplab.runtime import conf_dir


def nearest(word: str, candidates: list[str] | tuple[str, ...], n: int = 3) -> list[str]:
    """Up to ``n`` candidates close to ``word`` (difflib's ratio >= 0.6), closest first, and none much further
    than the closest (``optim.lrr``: ``optim.lr``, not also ``optim.name``)."""
    close = difflib.get_close_matches(word, [c for c in candidates if c != word], n=n)
    ratio = [difflib.SequenceMatcher(None, word, c).ratio() for c in close]
    return [c for c, r in zip(close, ratio, strict=True) if r >= ratio[0] - 0.1]


def hint(names: list[str]) -> str:
    """``did you mean a, b or c? `` (with the trailing space), or nothing."""
    if not names:
        return ""
    said = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    return f"did you mean {said}? "


def options(group: str) -> list[str]:
    """The options of a config group (its yaml files)."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


@cache
def keys() -> frozenset[str]:
    """Every dotted key that some composition can have: config.yaml's own, and each group option's under its
    group's name (``optim.lr``, ``trainer.pl.max_epochs``)."""
    found: set[str] = set()

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, DictConfig):
            for k in node.keys():
                if str(k) in ("defaults", "hydra") and not prefix:
                    continue
                found.add(prefix + str(k))
                walk(node._get_node(k), f"{prefix}{k}.")

    root = conf_dir()
    walk(OmegaConf.load(root / "config.yaml"), "")
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        found.add(folder.name)
        for path in folder.glob("*.yaml"):
            text = path.read_text()
            if "# @package _global_" in text:
                continue  # an experiment preset: its keys are the others'
            walk(OmegaConf.load(path), f"{folder.name}.")
    return frozenset(found)


def close_keys(key: str) -> list[str]:
    """The known keys nearest to ``key``, among its siblings first (``optim.lrr`` -> ``optim.lr``), then among
    every key (a key given under the wrong group)."""
    parent = key.rpartition(".")[0]
    siblings = [k for k in keys() if k.rpartition(".")[0] == parent]
    return nearest(key, siblings) or nearest(key, sorted(keys()), n=1)


def composition_error(error: BaseException) -> str:
    """Hydra's refusal of a composition (``nosuchkey=1``, a bad override's syntax) as one line: its message
    and OmegaConf's cause without the indented detail (full_key, object_type)."""
    text = "\n".join(str(e) for e in (error, error.__cause__) if e is not None)
    lines = [line.strip().rstrip(".") for line in text.splitlines() if line.strip() and not line.startswith(" ")]
    if "is not in struct" in text and lines[0].startswith("Could not override '"):
        key = lines[0].split("'")[1]  # Hydra's hint to append it with + would be refused too: name the key
        return (f"error: {key} is not a key of the config, so it cannot be overridden; {hint(close_keys(key))}"
                "(the keys: --cfg job)")
    return "error: " + "; ".join(dict.fromkeys(lines))  # in order, each once
