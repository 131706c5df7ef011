"""Run one partitioned job for many partitions, as a backfill does: one Dagster run per partition,
at most `workers` runs at a time, each run in its own process with the job's own executor.

This is what the daemon's queued run coordinator does with `max_concurrent_runs`; it is here so
that a script or a test can do it on one machine without a daemon.
"""

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository

DEFINITIONS_MODULE = "embedding_assets.definitions"


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
