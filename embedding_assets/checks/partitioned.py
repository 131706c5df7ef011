"""Per-shard results of a partitioned check whose step covers several shards.

Under scored_corpus's BackfillPolicy a step scores a range of shards. Dagster turns an
AssetCheckResult into an evaluation of the step's one partition, and of none for a range; here
each shard gets an AssetCheckEvaluation of its own, aimed at that shard's materialisation, so the
UI, GraphQL and the publish rule see a status per shard whatever the step covered.
"""

from collections.abc import Callable, Iterator

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationTargetMaterializationData


def target(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str) -> AssetCheckEvaluationTargetMaterializationData | None:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1).records
    if not records:
        return None
    return AssetCheckEvaluationTargetMaterializationData(storage_id=records[0].storage_id, run_id=records[0].run_id, timestamp=records[0].timestamp)


def per_shard(context: dg.AssetCheckExecutionContext, evaluate: Callable[[str], dg.AssetCheckResult]) -> Iterator:
    """`evaluate(shard)` for each shard of the step: the result itself for one shard, else one evaluation per shard."""
    if context.has_partition_key:
        yield evaluate(context.partition_key)
        return
    (spec,) = context.check_specs
    for shard in context.partition_keys:
        result = evaluate(shard)
        yield dg.AssetCheckEvaluation(
            asset_key=spec.asset_key,
            check_name=spec.name,
            passed=result.passed,
            metadata=result.metadata,
            target_materialization_data=target(context.instance, spec.asset_key, shard),
            severity=result.severity,
            description=result.description,
            blocking=spec.blocking,
            partition=shard,
        )
    # The check's own output (what an AssetCheckResult would have yielded), so later steps can depend on it.
    (output,) = context.op_def.output_defs
    yield dg.Output(None, output_name=output.name)
