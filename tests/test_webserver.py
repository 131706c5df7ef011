"""`workspace.yaml` loads the code location into a real Dagster webserver, which shows the graph
and launches runs through its GraphQL API."""

import json
import re
import time
import urllib.request

import shutil

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from embedding_assets.sample_corpus import NETWORKING_LABELS

from conftest import ROOT, running_webserver, stored_file, write_small_corpus

ASSET_GRAPH_QUERY = """
{
  assetNodes {
    assetKey { path }
    groupName
    kinds
    assetChecksOrError { ... on AssetChecks { checks { name blocking } } }
  }
  repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } }
}
"""

ADD_PARTITION_MUTATION = """
mutation AddShard($repositorySelector: RepositorySelector!, $partitionsDefName: String!, $partitionKey: String!) {
  addDynamicPartition(repositorySelector: $repositorySelector, partitionsDefName: $partitionsDefName, partitionKey: $partitionKey) {
    __typename
    ... on AddDynamicPartitionSuccess { partitionKey }
    ... on PythonError { message }
  }
}
"""

LAUNCH_RUN_MUTATION = """
mutation LaunchAssets($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""

RUN_STATUS_QUERY = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status } }
}
"""

MATERIALIZATION_QUERY = """
query Materialization($partition: String!) {
  assetNodes(assetKeys: [{path: ["raw_corpus"]}]) {
    assetMaterializations(partitions: [$partition]) {
      partition
      metadataEntries {
        label
        ... on IntMetadataEntry { intValue }
        ... on FloatMetadataEntry { floatValue }
      }
    }
  }
}
"""

METADATA_QUERY = """
fragment entries on MetadataEntry {
  __typename
  label
  ... on TableMetadataEntry { table { schema { columns { name description } } } }
  ... on TableSchemaMetadataEntry { schema { columns { name description } } }
}
{
  assetNodes {
    assetKey { path }
    metadataEntries { ...entries }
    assetMaterializations { partition metadataEntries { ...entries } }
    assetChecksOrError { ... on AssetChecks { checks { name executionForLatestMaterialization { evaluation { metadataEntries { ...entries } } } } } }
  }
}
"""

# JSON entries that stay JSON, each with the reason. Lists of offending ids or shards on a failed
# gate (failed, failed_expectations, missing_ids, clashing_shards, ...) are JSON too, but a
# passing pipeline carries none.
ALLOWED_JSON = {
    ("scored_corpus", "score_bins"): "the shard's score histogram as counts, read back by scored_corpus_drift at the next scoring",
}

# Keeps runs out of the queue: with no daemon running, a queued run would never start.
INSTANCE_YAML = """\
run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
"""


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        data = json.loads(response.read())
    assert not data.get("errors"), data["errors"]
    return data["data"]


def wait_for_asset_graph(port: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        data = graphql(port, ASSET_GRAPH_QUERY)
        if data["assetNodes"] or time.monotonic() > deadline:
            return data
        time.sleep(1)


def warnings_about_project_code(log: str) -> list[str]:
    """Python warnings whose location is a file of this project."""
    return [line for line in log.splitlines() if re.search(r"Warning\b.*:", line) and str(ROOT) in line]


@pytest.fixture
def webserver(tmp_path):
    corpus = tmp_path / "corpus"
    ids = write_small_corpus(corpus, docs_per_shard=20)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    log_path = tmp_path / "webserver.log"
    env = {"EMBEDDING_ASSETS_CORPUS": str(corpus), "EMBEDDING_ASSETS_STORAGE": str(tmp_path / "storage"), "EMBEDDING_ASSETS_DEVICE": "cpu", "EMBEDDING_ASSETS_POSITIVE_LABELS": ",".join(NETWORKING_LABELS)}
    with running_webserver(home, log_path, env) as port:
        yield {"port": port, "ids": ids, "storage": tmp_path / "storage", "log": log_path}


def test_webserver_shows_the_graph_and_materialises_a_shard_through_graphql(webserver):
    from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS

    port = webserver["port"]
    data = wait_for_asset_graph(port)
    nodes = data["assetNodes"]
    by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert set(by_key) == {"raw_corpus", "corpus_id_index", "training_sample", "features", "teacher_model", "teacher_embeddings", "distilled_model", "reference_set", "annotations", "quality_classifier", "scored_corpus", "clusters", "near_duplicates", "selection", "corpus_report"}
    for spec in (spec for asset in ALL_ASSETS for spec in asset.specs):
        node = by_key[spec.key.to_user_string()]
        assert node["groupName"] == spec.group_name and set(node["kinds"]) == set(spec.kinds), spec.key
    assert {n["groupName"] for n in nodes} == {"ingest", "training", "curation", "selection"}
    assert "pytorch" in by_key["distilled_model"]["kinds"]
    checks = {(key, c["name"]): c["blocking"] for key, n in by_key.items() for c in n["assetChecksOrError"]["checks"]}
    assert set(checks) == {(k.asset_key.to_user_string(), k.name) for c in ALL_CHECKS for k in c.check_keys}
    assert len(checks) == 15 and all(checks.values())

    # Launch what the UI's "Materialize" button launches: raw_corpus and its checks for one new shard.
    (repository,) = data["repositoriesOrError"]["nodes"]
    selector = {"repositoryLocationName": repository["location"]["name"], "repositoryName": repository["name"]}
    shard = "lines"
    added = graphql(port, ADD_PARTITION_MUTATION, {"repositorySelector": selector, "partitionsDefName": "corpus_shards", "partitionKey": shard})
    assert added["addDynamicPartition"] == {"__typename": "AddDynamicPartitionSuccess", "partitionKey": shard}
    launched = graphql(port, LAUNCH_RUN_MUTATION, {"executionParams": {
        "selector": {**selector, "pipelineName": "__ASSET_JOB", "assetSelection": [{"path": ["raw_corpus"]}]},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": shard}]},
    }})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + 240
    status = None
    while time.monotonic() < deadline:
        status = graphql(port, RUN_STATUS_QUERY, {"runId": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(1)
    assert status == "SUCCESS", webserver["log"].read_text()[-5000:]

    (node,) = graphql(port, MATERIALIZATION_QUERY, {"partition": shard})["assetNodes"]
    (materialization,) = node["assetMaterializations"]
    metadata = {e["label"]: e.get("intValue", e.get("floatValue")) for e in materialization["metadataEntries"]}
    assert materialization["partition"] == shard
    assert metadata["dagster/row_count"] == len(webserver["ids"][shard])
    assert metadata["tokens_estimate"] > 0 and metadata["wall_seconds"] > 0
    assert (stored_file(webserver["storage"], "raw_corpus", shard)).is_file()
    assert warnings_about_project_code(webserver["log"].read_text()) == []


CHECK_STATUS_QUERY = """
{
  assetNodes(assetKeys: [{path: ["raw_corpus"]}, {path: ["scored_corpus"]}]) {
    assetKey { path }
    assetChecksOrError { ... on AssetChecks { checks {
      name
      partitionDefinition { name }
      partitionStatuses { __typename ... on AssetCheckDefaultPartitionStatuses { succeededPartitions failedPartitions } }
    } } }
  }
}
"""


def test_checks_of_shards_report_a_status_per_shard_over_graphql(pipeline, tmp_path):
    """On a copy of the materialised pipeline's instance, with one more shard whose raw gate fails."""
    from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS

    home, storage, corpus = tmp_path / "home", tmp_path / "storage", tmp_path / "corpus"
    shutil.copytree(pipeline["instance"].root_directory, home)
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    shutil.copytree(pipeline["storage"], storage)
    shutil.copytree(pipeline["resources"]["corpus"].location, corpus)
    pq.write_table(pa.table({"id": ["d1", "d1"], "text": ["one text", "another text"]}), corpus / "bad.parquet")
    from embedding_assets.resources import CorpusSource, Storage

    resources = {**pipeline["resources"], "storage": Storage(base=str(storage)), "corpus": CorpusSource(location=str(corpus))}
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        instance.add_dynamic_partitions("corpus_shards", ["bad"])
        assert not dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["raw_corpus"], partition_key="bad", instance=instance, resources=resources, raise_on_error=False).success
    env = {"EMBEDDING_ASSETS_CORPUS": str(corpus), "EMBEDDING_ASSETS_STORAGE": str(storage), "EMBEDDING_ASSETS_POSITIVE_LABELS": ",".join(NETWORKING_LABELS)}
    with running_webserver(home, tmp_path / "webserver.log", env) as port:
        wait_for_asset_graph(port)
        nodes = graphql(port, CHECK_STATUS_QUERY)["assetNodes"]
    statuses = {
        ("/".join(n["assetKey"]["path"]), c["name"]): c for n in nodes for c in n["assetChecksOrError"]["checks"]
    }
    shards = set(pipeline["ids"])
    assert set(statuses) == {("raw_corpus", "raw_corpus_contract"), ("scored_corpus", "scored_corpus_contract"), ("scored_corpus", "scored_corpus_drift")}
    for (asset, name), check in statuses.items():
        assert check["partitionDefinition"]["name"] == "corpus_shards", name
        partitions = check["partitionStatuses"]
        assert partitions["__typename"] == "AssetCheckDefaultPartitionStatuses", name
        assert shards <= set(partitions["succeededPartitions"]), (name, partitions)
    assert statuses[("raw_corpus", "raw_corpus_contract")]["partitionStatuses"]["failedPartitions"] == ["bad"]
    assert "bad" not in statuses[("scored_corpus", "scored_corpus_contract")]["partitionStatuses"]["succeededPartitions"]


def test_no_metadata_of_the_pipeline_is_a_json_blob_where_a_table_fits(pipeline_ui):
    """Every asset, partition and check of the materialised pipeline, as the UI gets them: JSON only
    where listed, and every column of every table and schema described."""
    nodes = graphql(pipeline_ui["port"], METADATA_QUERY)["assetNodes"]
    entries = []
    for node in nodes:
        key = "/".join(node["assetKey"]["path"])
        entries += [(key, "definition", e) for e in node["metadataEntries"]]
        entries += [(key, m["partition"], e) for m in node["assetMaterializations"] for e in m["metadataEntries"]]
        for check in node["assetChecksOrError"]["checks"]:
            execution = check["executionForLatestMaterialization"]
            if execution and execution["evaluation"]:
                entries += [(f"{key}:{check['name']}", "check", e) for e in execution["evaluation"]["metadataEntries"]]
    assert {"corpus_report", "distilled_model", "features", "scored_corpus:scored_corpus_drift"} <= {key for key, _, _ in entries}
    json_entries = {(key.split(":")[0], e["label"]) for key, _, e in entries if e["__typename"] == "JsonMetadataEntry"}
    assert json_entries <= set(ALLOWED_JSON), json_entries - set(ALLOWED_JSON)
    tables = {(key, e["label"]) for key, _, e in entries if e["__typename"] == "TableMetadataEntry"}
    assert {("distilled_model", "per_epoch"), ("distilled_model", "probe_accuracy"), ("features", "ngrams_by_idf_band"),
            ("scored_corpus", "code_versions"), ("quality_classifier", "positive_labels"), ("corpus_report", "shards")} <= tables
    undescribed = set()
    for key, where, e in entries:
        columns = (e.get("table") or {}).get("schema", {}).get("columns") or (e.get("schema") or {}).get("columns") or []
        undescribed |= {(key, e["label"], c["name"]) for c in columns if not c["description"]}
        assert "..." not in {c["name"] for c in columns}, (key, where, e["label"])
    assert undescribed == set()
