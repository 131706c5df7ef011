"""Launch runs of this code location's jobs through the Dagster instance, as `dagster job launch`,
the UI and the daemon do: each run is created from the code location's remote job, so it has a
code-location origin, shows under its job in the UI and can be re-executed there, and it is
launched by the instance's run launcher into its own process with the code location's executor.

`run_partitions` below runs partitions without a code server, for scripts that time the work.
"""

import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget

DEFINITIONS_MODULE = "embedding_assets.definitions"
# The location name of workspace.yaml: runs launched here are the UI's runs of that location.
LOCATION_NAME = "embedding_assets"
POLL_SECONDS = 0.5


@contextmanager
def code_location(instance: dg.DagsterInstance, output: str | None = None) -> Iterator[WorkspaceProcessContext]:
    """The code location served by its own code server, as `dagster dev -w workspace.yaml` serves it.

    The code server, and every run process it starts, inherit this process's environment and, when
    `output` is a file, write their console output (Dagster's event lines) there, not to the terminal.
    """
    target = ModuleTarget(module_name=DEFINITIONS_MODULE, attribute=None, working_directory=os.getcwd(), location_name=LOCATION_NAME)
    with _redirected(output):
        context = WorkspaceProcessContext(instance, target)
    with context:
        errors = context.create_request_context().get_code_location_error(LOCATION_NAME)
        if errors:
            raise RuntimeError(f"the code location {LOCATION_NAME} ({DEFINITIONS_MODULE}) did not load: {errors.to_string()}")
        yield context


@contextmanager
def _redirected(output: str | None):
    """Point file descriptors 1 and 2 at `output` while child processes are started, so they inherit it."""
    if output is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    target = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


def launch(
    context: WorkspaceProcessContext,
    job_name: str,
    partition: str | None = None,
    assets: Sequence[str] | None = None,
    run_config: Mapping | None = None,
    tags: Mapping[str, str] | None = None,
) -> dg.DagsterRun:
    """Create a run of `job_name` (one partition, a subset of its assets) from the code location and launch it."""
    instance = context.instance
    workspace = context.create_request_context()
    location = workspace.get_code_location(LOCATION_NAME)
    [repository] = location.get_repositories().values()
    selector = JobSubsetSelector(
        location_name=LOCATION_NAME,
        repository_name=repository.name,
        job_name=job_name,
        op_selection=None,
        asset_selection=[dg.AssetKey(a) for a in assets] if assets else None,
    )
    remote_job = location.get_job(selector)
    run_config = dict(run_config or {})
    plan = location.get_execution_plan(remote_job, run_config, step_keys_to_execute=None, known_state=None, instance=instance)
    run_tags = {**remote_job.tags, **(tags or {}), **({"dagster/partition": partition} if partition else {})}
    run = instance.create_run(
        job_name=job_name,
        run_id=None,
        run_config=run_config,
        status=dg.DagsterRunStatus.NOT_STARTED,
        tags=run_tags,
        root_run_id=None,
        parent_run_id=None,
        step_keys_to_execute=None,
        execution_plan_snapshot=plan.execution_plan_snapshot,
        job_snapshot=remote_job.job_snapshot,
        parent_job_snapshot=remote_job.parent_job_snapshot,
        op_selection=None,
        resolved_op_selection=None,
        asset_selection=frozenset(selector.asset_selection) if selector.asset_selection else None,
        asset_check_selection=None,
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
        asset_graph=repository.asset_graph,
    )
    # Launched directly, not queued: the caller paces its runs; pools still bound the steps inside them.
    return instance.launch_run(run.run_id, workspace)


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the process the run launcher started for the run, from its "Started process for run" event."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        if entry.message.startswith("Started process for run"):
            pid = entry.dagster_event.engine_event_data.metadata.get("pid")
            return int(pid.value) if pid is not None else None
    return None


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def wait(
    instance: dg.DagsterInstance, run_ids: Sequence[str], timeout: float | None = None, on_poll: Callable[[], None] | None = None
) -> dict[str, dg.DagsterRun]:
    """Poll the instance until every run has finished (or `timeout` seconds pass); the runs as they are then.
    `on_poll` is called at every poll (to show the runs' progress, say).

    A run whose process is gone while the run is still marked started (killed, out of memory) is
    marked failed, as the daemon's run monitoring would, so that no wait is endless.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pids: dict[str, int | None] = {}
    while True:
        runs = {run_id: instance.get_run_by_id(run_id) for run_id in run_ids}
        for run_id, run in runs.items():
            if run.status == dg.DagsterRunStatus.STARTED:
                if not pids.get(run_id):
                    pids[run_id] = worker_pid(instance, run_id)
                pid = pids[run_id]
                if pid is not None and not alive(pid) and not instance.get_run_by_id(run_id).is_finished:
                    instance.report_run_failed(run, f"its process (pid {pid}) is gone: it was killed or ran out of memory")
        if on_poll is not None:
            on_poll()
        if all(run.is_finished for run in runs.values()) or (deadline is not None and time.monotonic() > deadline):
            return {run_id: instance.get_run_by_id(run_id) for run_id in run_ids}
        time.sleep(POLL_SECONDS)


def terminate(instance: dg.DagsterInstance, run_ids: Sequence[str]) -> None:
    """Ask the run launcher to stop each run that has not finished, as the UI's Terminate button does."""
    for run_id in run_ids:
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            try:
                instance.run_launcher.terminate(run_id)
            except Exception:  # noqa: BLE001 - a code server already gone (Ctrl-C reaches it too): the run's own process still stops
                pass


@dataclass(frozen=True)
class PartitionRun:
    partition: str
    run_id: str
    success: bool
    seconds: float


def _execute(instance_ref, job_name: str, partition: str) -> PartitionRun:
    started = time.perf_counter()
    job = ReconstructableRepository.for_module(DEFINITIONS_MODULE, "defs").get_reconstructable_job(job_name)
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        result = dg.execute_job(job, instance=instance, tags={"dagster/partition": partition}, raise_on_error=False)
    return PartitionRun(partition, result.run_id, result.success, time.perf_counter() - started)


def run_partitions(instance: dg.DagsterInstance, job_name: str, partitions: list[str], workers: int) -> list[PartitionRun]:
    """One run per partition, `workers` at a time; results in the order of `partitions`."""
    # A fresh process per run (max_tasks_per_child=1), as the run launcher starts one per run.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, max_tasks_per_child=1) as pool:
        futures = [pool.submit(_execute, instance.get_ref(), job_name, partition) for partition in partitions]
        return [future.result() for future in futures]
