"""A backfill scores several shards per run, and each shard keeps its own materialisation, checks and published version."""

import math

import dagster as dg
import pyarrow.parquet as pq
import pytest
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.definitions.automation_tick_evaluation_context import build_run_requests_with_backfill_policies

from conftest import local_resources, materialize_pipeline, write_small_corpus
from embedding_assets import versions
from embedding_assets.assets.curation import SHARDS_PER_RUN
from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS, defs
from embedding_assets.paths import shard_file

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("backfill_corpus")
    ids = write_small_corpus(corpus)
    storage = tmp_path_factory.mktemp("backfill_storage")
    resources = local_resources(corpus, storage)
    with dg.instance_for_test() as instance:
        materialize_pipeline(instance, resources, sorted(ids))
        yield {"instance": instance, "resources": resources, "storage": storage, "ids": ids}


def test_a_backfill_of_many_shards_is_split_into_runs_of_several_shards(scored):
    instance = scored["instance"]
    shards = instance.get_dynamic_partitions("corpus_shards")
    many = [f"extra-{i:03d}" for i in range(2 * SHARDS_PER_RUN + 3)]
    instance.add_dynamic_partitions("corpus_shards", many)
    wanted = [AssetKeyPartitionKey(dg.AssetKey("scored_corpus"), shard) for shard in [*shards, *many]]
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        requests = build_run_requests_with_backfill_policies(wanted, defs.resolve_asset_graph(), instance)
    ranges = [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in requests]
    assert len(requests) == math.ceil((len(shards) + len(many)) / SHARDS_PER_RUN)
    assert ranges[0][0] == shards[0] and ranges[-1][1] == many[-1]
    for shard in many:
        instance.delete_dynamic_partition("corpus_shards", shard)


def test_one_run_scores_a_range_of_shards_with_a_version_and_checks_per_shard(scored):
    instance, storage = scored["instance"], scored["storage"]
    shards = instance.get_dynamic_partitions("corpus_shards")
    before = {shard: versions.latest_version(instance, "scored_corpus", shard) for shard in shards}
    result = dg.materialize(
        ALL_ASSETS + ALL_CHECKS, selection=["scored_corpus"], instance=instance, resources=scored["resources"],
        tags={RANGE_START: shards[0], RANGE_END: shards[-1]},
    )
    assert result.success
    events = result.get_asset_materialization_events()
    assert sorted(e.partition for e in events) == sorted(shards)
    for shard in shards:
        version = versions.resolve_published(instance, "scored_corpus", shard)  # every gate passed on this shard's version
        assert version.run_id == result.run_id and version != before[shard]
        table = pq.read_table(storage.joinpath(*version.file(shard_file(shard))))
        assert table["id"].to_pylist() == scored["ids"][shard]
        metadata = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("scored_corpus"), asset_partitions=[shard]), limit=1).records[0].asset_materialization.metadata
        assert metadata["dagster/row_count"].value == len(scored["ids"][shard])
    evaluations = result.get_asset_check_evaluations()
    for check in ("scored_corpus_contract", "scored_corpus_drift"):
        found = {e.partition: e for e in evaluations if e.check_name == check}
        assert sorted(found) == sorted(shards), check
        assert all(e.passed for e in found.values()), check
        assert all(e.metadata["shard"].value == shard for shard, e in found.items()), check
    # The drift check compared each shard with its own previous scoring, not with another shard's.
    drift = {e.partition: e for e in evaluations if e.check_name == "scored_corpus_drift"}
    assert all("previous scoring" in drift[shard].metadata["compared_with"].value for shard in shards)
