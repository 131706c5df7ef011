"""The corpus sensor, and the automation sensor that keeps scored shards current."""

import json

import dagster as dg

from embedding_assets.assets.curation import scored_corpus
from embedding_assets.assets.report import corpus_report
from embedding_assets.engine.errors import InputError
from embedding_assets.jobs import refresh_shard
from embedding_assets.partitions import corpus_shards
from embedding_assets.resources import CorpusSource


@dg.sensor(
    job=refresh_shard,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a partition for each new shard file and requests refresh_shard for every new or rewritten shard.",
)
def corpus_shard_sensor(context: dg.SensorEvaluationContext, corpus: CorpusSource):
    # The cursor is the fingerprint of every shard seen; a shard is requested when its fingerprint differs.
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    try:
        current = corpus.fingerprints()
    except InputError as exc:
        return dg.SkipReason(str(exc))
    changed = sorted(key for key, fingerprint in current.items() if seen.get(key) != fingerprint)
    if changed:
        for name, why in corpus.listing().skipped.items():
            context.log.warning(f"{corpus.location}: {name} is not a shard: {why}")
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
