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
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class SlurmConf(SlurmQueueConf):
    """submitit's Slurm keys; nodes, tasks and GPUs may be ``auto``: from each job's trainer keys."""

    _target_: str = "hydra_plugins.backproplab_launcher.slurm.SlurmLauncher"
    nodes: Any = "auto"
    tasks_per_node: Any = "auto"
    gpus_per_node: Any = "auto"
    # how long a job that Slurm calls over may take to show its result file (a network filesystem's cache) before
    # it is counted as failed
    result_grace_s: float = 60.0


ConfigStore.instance().store(group="hydra/launcher", name="slurm_schema", node=SlurmConf, provider="backproplab")


class SlurmLauncher(SubmititSlurmLauncher):
    """submitit's Slurm launcher, deciding each job's request from its trainer, refusing what the cluster cannot
    meet in one line, and waiting on squeue (``backproplab.slurm.submit``)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        from backproplab import signals
        from backproplab.slurm import submit

        assert self.config is not None and self.hydra_context is not None
        submit.check_warning(self.params)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        # one array per distinct request: a sweep over trainer.devices asks for different GPUs per job
        groups: dict[tuple, list[int]] = defaultdict(list)
        folders = {}
        for i, overrides in enumerate(job_overrides):
            job = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            groups[tuple(submit.request(self.params, job).items())].append(i)
            with open_dict(job.hydra.job):
                job.hydra.job.num = initial_job_idx + i  # what names its output dir, as in the job itself
            folders[i] = sweep_dir / str(job.hydra.sweep.subdir)
        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params["max_num_timeout"])
        base_keys = list(OmegaConf.structured(BaseQueueConf).keys())
        asked_of = {i: dict(asked) for asked, members in groups.items() for i in members}
        jobs: dict[int, Any] = {}
        restore = signals.install()  # SIGTERM, like Ctrl-C, cancels what was submitted
        try:
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
            outcomes = submit.wait([jobs[i] for i in order],
                                   lambda k, why: submit.refusal(why, self.params, asked_of[order[k]]),
                                   grace_s=float(self.params["result_grace_s"]))
        except KeyboardInterrupt as e:
            submit.cancel(list(jobs.values()))
            code = 143 if isinstance(e, signals.Terminated) else 130
            print(f"interrupted: the sweep's Slurm jobs are cancelled (exit {code})", file=sys.stderr)
            sys.exit(code)
        except BaseException:  # refused: what was already submitted must not run on alone
            submit.cancel(list(jobs.values()), quiet=True)
            raise
        finally:
            restore()
        returns = []
        for i, outcome in zip(order, outcomes, strict=True):
            if isinstance(outcome, submit.Ended):  # counted as a failed job is: +inf
                log.warning(f"#{initial_job_idx + i}: {outcome}")
                submit.note_ended(folders[i], str(outcome))
                outcome = JobReturn(overrides=list(job_overrides[i]), status=JobStatus.COMPLETED)
                outcome.return_value = float("inf")
            returns.append(outcome)
        return returns
