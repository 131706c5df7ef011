"""The corpus sensor, and the automation sensor that keeps scored shards current."""

import json

import dagster as dg

from embedding_assets import versions
from embedding_assets.assets.curation import scored_corpus
from embedding_assets.assets.ingest import raw_corpus
from embedding_assets.assets.report import corpus_report
from embedding_assets.engine.errors import InputError
from embedding_assets.jobs import refresh_shard
from embedding_assets.partitions import corpus_shards
from embedding_assets.resources import CorpusSource


def ingested_files(instance: dg.DagsterInstance, shards: list[str]) -> dict[str, tuple[str, str]]:
    """Shard -> (source URL, file fingerprint) of the latest raw_corpus materialisation of each of
    `shards` that has one: two queries for all of them, not one per shard."""
    found = {}
    for shard, record in versions.latest_records(instance, "raw_corpus", shards).items():
        metadata = record.asset_materialization.metadata
        if "source" in metadata and "source_fingerprint" in metadata:
            found[shard] = (str(metadata["source"].value), str(metadata["source_fingerprint"].value))
    return found


@dg.sensor(
    job=refresh_shard,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Adds a partition for each new shard file and requests refresh_shard for every new or rewritten shard: "
        "one whose file differs from the one this sensor last saw and from the one its latest raw_corpus was read from."
    ),
)
def corpus_shard_sensor(context: dg.SensorEvaluationContext, corpus: CorpusSource):
    # The cursor is the fingerprint of every shard seen. A shard whose file is not the one in the
    # cursor is requested unless its latest raw_corpus was read from that very file (make run, the
    # UI or a backfill ingested it): so a first tick after those requests nothing.
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    try:
        listing = corpus.listing()
    except InputError as exc:
        return dg.SkipReason(str(exc))
    current = listing.fingerprints
    changed = sorted(key for key, fingerprint in current.items() if seen.get(key) != fingerprint)
    for name, why in listing.refused.items():
        context.log.warning(f"{corpus.location}: shard file {name!r} is left out until it is fixed: {why}")
    if changed:
        for name, why in listing.skipped.items():
            context.log.warning(f"{corpus.location}: {name} is not a shard: {why}")
        ingested = ingested_files(context.instance, changed)
        changed = [key for key in changed if ingested.get(key) != (listing.shards[key], current[key])]
    known = set(context.instance.get_dynamic_partitions(corpus_shards.name))
    new = [key for key in changed if key not in known]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"{key}@{current[key]}", partition_key=key) for key in changed],
        dynamic_partitions_requests=[corpus_shards.build_add_request(new)] if new else [],
        cursor=json.dumps(current, sort_keys=True),
    )


scored_corpus_refresh = dg.AutomationConditionSensorDefinition(
    "scored_corpus_refresh",
    target=dg.AssetSelection.assets(scored_corpus, corpus_report),
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Hourly: scores every shard that is missing, or whose raw shard, model or classifier changed since it was scored; then refreshes corpus_report.",
)
