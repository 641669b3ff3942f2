"""Where an augment run's batches run: the flow's own threads (one host, the default) or a Dask
cluster that spans hosts, through prefect-dask's ``DaskTaskRunner(address=...)``.

On Dask each batch takes one unit of a worker resource (``augment.dask_resource``, default
``GPU``), so the scheduler places one batch per GPU across hosts and runs; workers declare it
(``dask worker tcp://scheduler:8786 --resources GPU=1``, one worker per GPU; dask-cuda's
``dask cuda worker`` on GPU hosts). A batch on a worker that dies is re-run on another by the
scheduler. Workers need the tailforge package, and reach the checkpoints and datasets by URI
(shared or S3 storage). Before any batch is sent, the run checks that the scheduler answers and
that some worker offers the resource, so a wrong address or a cluster without GPUs is an error
that says what to do, not a wait without end; and a batch not done ``augment.batch_timeout_s``
after the run waits on it (every worker gone) fails the run, saying so (flows/augment.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

CONNECT_TIMEOUT_S = 30


class RunnerError(RuntimeError):
    """The configured cluster cannot take the batches (unreachable, or no worker offers the resource)."""


@contextmanager
def batch_submitter(task, runner: str, address: str | None, resource: str | None) -> Iterator[Callable]:
    """Yields ``submit(**parameters) -> future`` for ``task``: the flow's own task runner
    ("local") or the Dask cluster at ``address`` ("dask"), each batch holding one ``resource``
    (the settings were checked by tasks.augment.AugmentSettings)."""
    if runner == "local":
        yield lambda **parameters: task.submit(**parameters)
        return
    try:
        import dask
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise RunnerError("augment.runner 'dask' needs the dask extra: pip install 'tailforge[dask]' "
                          "(with -c constraints.txt)") from exc

    with DaskTaskRunner(address=address, client_kwargs={"timeout": f"{CONNECT_TIMEOUT_S}s"}) as dask_runner:
        try:
            workers = dask_runner.client.scheduler_info(n_workers=-1)["workers"]
        except (OSError, TimeoutError) as exc:
            raise RunnerError(f"the Dask scheduler at {address} did not answer within {CONNECT_TIMEOUT_S} s "
                              f"({type(exc).__name__}); start it with `dask scheduler`, or check "
                              f"augment.dask_address") from exc
        if resource and not any(resource in (w.get("resources") or {}) for w in workers.values()):
            raise RunnerError(f"no worker of the Dask cluster at {address} offers the resource {resource!r} "
                              f"({len(workers)} workers); start one per GPU with `dask worker {address} "
                              f"--resources {resource}=1`, or set augment.dask_resource: null")
        annotations = {"resources": {resource: 1}} if resource else {}

        def submit(**parameters):
            with dask.annotate(**annotations):
                return dask_runner.submit(task, parameters=parameters)

        yield submit
