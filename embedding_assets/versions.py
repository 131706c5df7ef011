"""Write, audit, publish: each materialisation writes a new version, and readers take it only once
its blocking checks have passed.

A version is a folder of the storage, `<asset>/[<shard>/]<UTC time>-<run id prefix>`, recorded on the
materialisation as `stored_at`; nothing is ever written over a version that readers use. The
checks of an asset audit its newest version (`latest`). Every other reader asks for `published`:
the newest version, refused with `GateFailed` when one of its blocking checks failed or has no
result for it. The instance's own check results decide, so the rule holds for every kind of run
(UI, sensor, automation, backfill, a script), and the previous good version stays readable where
it is. `prune` keeps the newest few versions and always the last good one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timezone

import dagster as dg
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES

from embedding_assets.checks.reasons import failure_reason

STORED_AT = "stored_at"
# How far back a failed version looks for the last good one, to name it.
HISTORY = 25


@dataclass(frozen=True)
class Version:
    """One stored version of an asset (partition): its folder, relative to the storage base."""

    asset: str
    partition: str | None
    folder: tuple[str, ...]
    run_id: str
    storage_id: int | None = None
    data_version: str | None = None

    @property
    def name(self) -> str:
        return self.folder[-1]

    @property
    def label(self) -> str:
        return f"{self.asset}[{self.partition}]" if self.partition else self.asset

    def file(self, name: str) -> tuple[str, ...]:
        return (*self.folder, name)


class GateFailed(dg.Failure):
    """An input's newest version did not pass a blocking check: nothing downstream may read it."""

    def __init__(self, description: str, metadata: dict | None = None):
        super().__init__(description=description, metadata=metadata or {}, allow_retries=False)


def asset_folder(asset: str, partition: str | None = None) -> tuple[str, ...]:
    return (asset, partition) if partition else (asset,)


def new_version(context, asset: str, partition: str | None = None) -> Version:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return Version(asset, partition, (*asset_folder(asset, partition), f"{stamp}-{context.run.run_id[:8]}"), context.run.run_id)


def stored_at(version: Version) -> dict:
    """The materialisation metadata that names where this version is."""
    return {STORED_AT: dg.MetadataValue.text("/".join(version.folder))}


def _materializations(instance: dg.DagsterInstance, asset: str, partition: str | None, limit: int):
    return instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None), limit=limit
    ).records


def version_of(record, asset: str, partition: str | None) -> Version:
    materialization = record.asset_materialization
    stored = materialization.metadata.get(STORED_AT)
    label = f"{asset}[{partition}]" if partition else asset
    if stored is None:
        raise dg.Failure(f"{label} (run {record.run_id}) names no stored version: materialise {label} again", allow_retries=False)
    return Version(asset, partition, tuple(stored.value.split("/")), record.run_id, record.storage_id, (materialization.tags or {}).get("dagster/data_version"))


@functools.cache
def gates() -> dict[str, list[tuple[dg.AssetCheckKey, bool]]]:
    """The code location's blocking checks per asset, each with whether it is per partition; a
    run's own selection does not matter, so a run that leaves a gate out cannot skip it."""
    from embedding_assets.definitions import ALL_CHECKS

    found: dict[str, list[tuple[dg.AssetCheckKey, bool]]] = {}
    for checks in ALL_CHECKS:
        for spec in checks.check_specs:
            if spec.blocking:
                found.setdefault(spec.asset_key.to_user_string(), []).append((spec.key, spec.partitions_def is not None))
    return found


def evaluation_for(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, version: Version, partitioned: bool = True):
    """The result of `check_key` aimed at this very version (an AssetCheckEvaluation), or None when
    none of its recent results is."""
    history = instance.event_log_storage.get_asset_check_execution_history(
        check_key,
        limit=HISTORY,
        status={AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED},
        partition_filter=PartitionKeyFilter(key=version.partition) if partitioned else None,
    )
    for record in history:
        evaluation = record.event.dagster_event.event_specific_data if record.event else None
        target = getattr(evaluation, "target_materialization_data", None)
        if target is not None and target.storage_id == version.storage_id:
            return evaluation
    return None


def gate_problems(instance: dg.DagsterInstance, version: Version) -> dict[str, str]:
    """Blocking check name -> why this version may not be read; empty when every one passed."""
    problems = {}
    for check_key, partitioned in gates().get(version.asset, []):
        evaluation = evaluation_for(instance, check_key, version, partitioned)
        if evaluation is None:
            problems[check_key.name] = f"{check_key.name} has no result for this version (it did not run, or its step failed): run the checks of {version.label}"
        elif not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
            problems[check_key.name] = failure_reason(check_key.name, evaluation.metadata)
    return problems


def gate_problems_by_partition(instance: dg.DagsterInstance, found: dict[str, Version]) -> dict[str, dict[str, str]]:
    """`gate_problems` of many partitions of one asset, only those with a problem: one query per
    blocking check finds the partitions whose latest result passed on the very version given; only
    the others are looked at one by one, so a corpus of thousands of passing shards costs a few queries."""
    if not found:
        return {}
    checks = gates().get(next(iter(found.values())).asset, [])
    unsure = set(found) if any(not partitioned for _, partitioned in checks) else set()
    for check_key, partitioned in checks:
        if not partitioned:
            continue
        passed = {
            info.partition_key
            for info in instance.event_log_storage.get_asset_check_partition_info([check_key], partition_keys=list(found))
            if info.partition_key in found
            and info.latest_execution_status == AssetCheckExecutionRecordStatus.SUCCEEDED
            and info.latest_target_materialization_storage_id == found[info.partition_key].storage_id
        }
        unsure |= set(found) - passed
    problems = {partition: gate_problems(instance, found[partition]) for partition in sorted(unsure)}
    return {partition: found_problems for partition, found_problems in problems.items() if found_problems}


def latest_records(instance: dg.DagsterInstance, asset: str, partitions) -> dict:
    """Partition -> the record of its latest materialisation, for each of `partitions` that has one: two queries for all."""
    key = dg.AssetKey(asset)
    latest = instance.get_latest_storage_id_by_partition(key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=set(partitions))
    if not latest:
        return {}
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, storage_ids=list(latest.values())), limit=len(latest)).records
    return {record.partition_key: record for record in records}


def latest_versions(instance: dg.DagsterInstance, asset: str, partitions) -> dict[str, Version]:
    """Partition -> its newest version, for each of `partitions` that has been materialised."""
    return {partition: version_of(record, asset, partition) for partition, record in sorted(latest_records(instance, asset, partitions).items())}


def published_many(context, asset: str, partitions) -> dict[str, Version]:
    """`published` for many partitions at once, in a few queries; refuses on the first that has no
    version or failed a gate, as `published` would."""
    instance = context.instance
    partitions = sorted(partitions)
    found = latest_versions(instance, asset, partitions)
    missing = [partition for partition in partitions if partition not in found]
    problems = gate_problems_by_partition(instance, found)
    if missing or problems:
        resolve_published(instance, asset, (missing or sorted(problems))[0])  # raises, with the full reason
    return found


def latest_version(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> Version | None:
    records = _materializations(instance, asset, partition, 1)
    return version_of(records[0], asset, partition) if records else None


def last_good_version(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> Version | None:
    for record in _materializations(instance, asset, partition, HISTORY):
        if STORED_AT in record.asset_materialization.metadata:
            version = version_of(record, asset, partition)
            if not gate_problems(instance, version):
                return version
    return None


def resolve_published(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> Version:
    label = f"{asset}[{partition}]" if partition else asset
    version = latest_version(instance, asset, partition)
    if version is None:
        raise dg.Failure(f"{label} has not been materialised yet: materialise it first", allow_retries=False)
    problems = gate_problems(instance, version)
    if not problems:
        return version
    good = last_good_version(instance, asset, partition)
    kept = f"the last version that passed, {good.name} (run {good.run_id[:8]}), stays at {'/'.join(good.folder)}" if good else "no earlier version passed"
    raise GateFailed(
        f"{label} version {version.name} (run {version.run_id[:8]}) failed its gate, so it is not read: "
        + "; ".join(problems.values())
        + f". {kept}. Fix the cause and materialise {label} again.",
        metadata={"input": label, "version": version.name, "failed_checks": sorted(problems), "last_good_version": good.name if good else "none"},
    )


def published(context, asset: str, partition: str | None = None) -> Version:
    """The version of `asset` (partition) every reader but its own checks uses; refused when it failed a gate."""
    return resolve_published(context.instance, asset, partition)


def latest(context, asset: str, partition: str | None = None) -> Version:
    """The newest version, passed or not: what the asset's own checks audit."""
    version = latest_version(context.instance, asset, partition)
    if version is None:
        label = f"{asset}[{partition}]" if partition else asset
        raise dg.Failure(f"{label} has not been materialised yet: there is nothing to check", allow_retries=False)
    return version


def record(context, storage, version: Version) -> dict:
    """Once a new version is written: prune the old ones, and the metadata that names this one."""
    removed = prune(context, storage, version, storage.keep_versions)
    if removed:
        context.log.info(f"{version.label}: removed {len(removed)} old version(s): {', '.join(removed)}")
    return stored_at(version)


def writing_runs(instance: dg.DagsterInstance) -> set[str]:
    """The run id prefixes (as in version folder names) of the runs still in progress."""
    return {run.run_id[:8] for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS_RUN_STATUSES))}


def prune(context, storage, version: Version, keep: int) -> list[str]:
    """Remove the versions of the asset (partition) beyond the newest `keep` (this one counted) and
    the folders no materialisation names, left by a killed or failed write; never the last good one,
    and never the folder of a run still in progress, which may be another run writing its version now."""
    folder = asset_folder(version.asset, version.partition)
    named = [
        record.asset_materialization.metadata[STORED_AT].value.rsplit("/", 1)[-1]
        for record in _materializations(context.instance, version.asset, version.partition, HISTORY)
        if STORED_AT in record.asset_materialization.metadata
    ]
    good = last_good_version(context.instance, version.asset, version.partition)
    protected = {version.name, *named[: max(keep, 1) - 1]} | ({good.name} if good else set())
    candidates = [name for name in storage.list_names(*folder) if name not in protected]
    unnamed = [name for name in candidates if name not in named]
    running = writing_runs(context.instance) if unnamed else set()
    removed = [name for name in candidates if name in named or name.rsplit("-", 1)[-1] not in running]
    for name in removed:
        storage.delete_folder(*folder, name)
    return removed
