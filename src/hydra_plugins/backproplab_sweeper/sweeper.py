"""``hydra/sweeper=backproplab``: Hydra's basic sweeper, which composes each distinct job once before launching.

Hydra's basic sweeper composes every job's config in the launching process before the first job starts, to fail
early (``Sweeper.validate_batch_is_legal``). That costs ~75 ms a job here, serially: 4.7 s before a 64-seed sweep
starts, more than a tenth of its wall time. Jobs whose overrides differ only in plain values (``seed=0`` ...
``seed=63``) compose alike, because a value can change a composition only where a config group is chosen or a
typed (structured) node is set. So this sweeper composes one job per distinct *shape* and launches the same jobs
as Hydra's: the sweep's expansion, batches and launch are the basic sweeper's, unchanged.

Hydra instantiates sweepers only from the ``hydra_plugins`` package, so the class lives here. No ``from
__future__ import annotations``: Hydra's plugin scanner runs this module before it is in sys.modules.
"""

from collections.abc import Callable, Hashable, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType


class BackproplabSweeper(BasicSweeper):
    """The basic sweeper, validating one job of each shape (``shape``) instead of every job."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        assert self.hydra_context is not None and self.config is not None
        if self.config.hydra.searchpath:  # groups that only the extra search path has are not known here
            super().validate_batch_is_legal(batch)
            return
        loader = self.hydra_context.config_loader
        parser = OverridesParser.create(config_loader=loader)
        parsed: dict[str, Override] = {}
        groups: dict[str, bool] = {}

        def is_group(name: str) -> bool:
            if name not in groups:
                groups[name] = bool(loader.get_group_options(name))
            return groups[name]

        distinct: dict[tuple[Hashable, ...], Sequence[str]] = {}
        for overrides in batch:
            for line in overrides:
                if line not in parsed:
                    parsed[line] = parser.parse_override(line)
            distinct.setdefault(shape([parsed[line] for line in overrides], is_group), overrides)
        super().validate_batch_is_legal(list(distinct.values()))


def shape(overrides: Sequence[Override], is_group: Callable[[str], bool]) -> tuple[Hashable, ...]:
    """What a job's composition depends on: every override in full where its value can matter (a config group's
    choice, a ``hydra.*`` key, whose nodes are typed, a deletion, which checks the value it deletes, a dict or a
    list, which merges into a node); elsewhere only which key is set and how (``seed=3`` and ``seed=4`` have one
    shape; ``+foo=1`` and ``foo=1`` do not)."""
    out: list[Hashable] = []
    for o in overrides:
        key = o.key_or_group
        if (o.type == OverrideType.DEL or key.startswith("hydra") or o.package is not None
                or isinstance(o.value(), (dict, list)) or is_group(key)):
            out.append(o.input_line)
        else:
            out.append((o.type, key))
    return tuple(out)
