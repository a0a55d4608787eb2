"""``hydra/launcher=slurm``: Hydra's submitit Slurm launcher, with what each job asks for taken from its trainer,
sbatch's refusals in one line, and a wait that works on clusters without accounting and cancels on Ctrl-C.

Hydra instantiates launchers only from the ``hydra_plugins`` package, so the class lives here; what it decides is
in ``backproplab.slurm.submit``. Submitting, job arrays, requeueing and the job side stay submitit's.

No ``from __future__ import annotations``: Hydra's plugin scanner runs this module before it is in sys.modules,
where the dataclass below could not resolve string annotations.
"""

import logging
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


@dataclass
class SlurmConf(SlurmQueueConf):
    """submitit's Slurm keys; nodes, tasks and GPUs may be ``auto``: from each job's trainer keys."""

    _target_: str = "hydra_plugins.backproplab_launcher.slurm.SlurmLauncher"
    nodes: Any = "auto"
    tasks_per_node: Any = "auto"
    gpus_per_node: Any = "auto"


ConfigStore.instance().store(group="hydra/launcher", name="slurm_schema", node=SlurmConf, provider="backproplab")


class SlurmLauncher(SubmititSlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        from backproplab import signals
        from backproplab.slurm import submit

        assert self.config is not None and self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        # one array per distinct request: a sweep over trainer.devices asks for different GPUs per job
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, overrides in enumerate(job_overrides):
            job = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            groups[tuple(submit.request(self.params, job).items())].append(i)
        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params["max_num_timeout"])
        base_keys = list(OmegaConf.structured(BaseQueueConf).keys())
        jobs: dict[int, Any] = {}
        asked_of = {i: dict(asked) for asked, members in groups.items() for i in members}
        for asked, members in groups.items():
            executor.update_parameters(**submit.executor_parameters(self.params, dict(asked), base_keys))
            calls = [(list(job_overrides[i]), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{i}",
                      Singleton.get_state()) for i in members]
            with submit.refused_in_one_line(self.params, dict(asked)):
                submitted = executor.map_array(self, *zip(*calls, strict=True))
            for i, job in zip(members, submitted, strict=True):
                jobs[i] = job
                log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(job_overrides[i]))} "
                         f"(Slurm job {job.job_id})")
        order = sorted(jobs)
        submit.note_local_store(self.config)
        try:
            outcomes = submit.wait(
                [jobs[i] for i in order], lambda k, why: submit.refusal(why, self.params, asked_of[order[k]]))
        except KeyboardInterrupt as e:
            code = 143 if isinstance(e, signals.Terminated) else 130
            print(f"interrupted: the sweep's Slurm jobs are cancelled (exit {code})", file=sys.stderr)
            sys.exit(code)
        returns = []
        for i, outcome in zip(order, outcomes, strict=True):
            if isinstance(outcome, submit.Ended):  # counted as a failed job is: +inf, its run closed by the sweep
                log.warning(f"#{initial_job_idx + i}: {outcome}")
                outcome = JobReturn(overrides=list(job_overrides[i]), status=JobStatus.COMPLETED)
                outcome.return_value = float("inf")
            returns.append(outcome)
        return returns
