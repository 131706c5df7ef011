"""clusters, near_duplicates and selection materialised on the small corpus; bad input refused with nothing written; the audit of a duplicate."""

import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import dagster as dg

from conftest import failure_text, stored_file
from embedding_assets.assets.selection import DEFAULT_THRESHOLD
from embedding_assets.audit import audit, summary
from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS
from embedding_assets.engine import LexicalEmbedder, clustering
from embedding_assets.resources import CorpusSource
from embedding_assets.sample_corpus import SAMPLE_CORPUS_DIR


def metadata(instance, key):
    records = instance.fetch_materializations(dg.AssetKey(key), limit=1).records
    assert records, f"{key} was not materialised"
    return {k: getattr(v, "value", v) for k, v in records[0].asset_materialization.metadata.items()}


def scored(storage, shards) -> pa.Table:
    tables = [pq.read_table(stored_file(storage, "scored_corpus", s), columns=["id", "score", "keep"]) for s in shards]
    return pa.concat_tables([t.append_column("shard", pa.array([s] * t.num_rows)) for s, t in zip(shards, tables)])


def snapshot(root) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_scored_document_has_its_nearest_cluster(pipeline):
    storage = pipeline["storage"]
    model = LexicalEmbedder.load(stored_file(storage, "distilled_model.safetensors"))
    config, centroids, sizes = clustering.clusters_from_bytes((stored_file(storage, "clusters.safetensors")).read_bytes())
    assert config["model_version"] == model.version and centroids.shape == (8, model.dim) and (sizes > 0).all()
    raw = pq.read_table(stored_file(storage, "raw_corpus", "stdlib-docs-00"))
    table = pq.read_table(stored_file(storage, "scored_corpus", "stdlib-docs-00"))
    assert table.schema.field("cluster").type == pa.int32() and table.schema.field("centroid_cosine").type == pa.float32()
    cluster, cosine = clustering.assign_clusters(model.encode(raw["text"].to_pylist()), centroids)
    assert np.array_equal(table["cluster"].to_numpy(), cluster)
    assert np.allclose(table["centroid_cosine"].to_numpy(), cosine, atol=1e-6)
    meta = metadata(pipeline["instance"], "clusters")
    assert meta["k"] == 8 and meta["size_min"] > 0 and meta["sample_documents"] == sum(len(v) for v in pipeline["ids"].values())
    rows = meta["clusters"].records
    assert len(rows) == 8 and sum(r.data["size"] for r in rows) == meta["sample_documents"]
    assert all(r.data["top_ngrams"] and r.data["typical_documents"] for r in rows)


def test_near_duplicates_group_the_planted_copy_across_shards(pipeline):
    storage = pipeline["storage"]
    shards = sorted(pipeline["ids"])
    groups = pq.read_table(stored_file(storage, "near_duplicates.parquet"))
    copy = f"lines:{len(pipeline['ids']['lines'])}"
    row = groups.filter(pc.equal(groups["id"], copy)).to_pylist()
    assert row, "the planted near-duplicate was not found"
    members = groups.filter(pc.equal(groups["group"], row[0]["group"])).to_pylist()
    assert {m["shard"] for m in members} == {"lines", "stdlib-docs-00"}
    assert (groups["cosine_to_representative"].to_numpy() >= DEFAULT_THRESHOLD - 1e-6).all()
    # The representative of every group: highest score, then lowest id.
    table = scored(storage, shards).to_pandas().set_index("id")
    for _, group in groups.to_pandas().groupby("group"):
        candidates = table.loc[group["id"]].reset_index().sort_values(["score", "id"], ascending=[False, True])
        assert set(group["representative_id"]) == {candidates.iloc[0]["id"]}
        assert set(group["representative_shard"]) == {candidates.iloc[0]["shard"]}
    meta = metadata(pipeline["instance"], "near_duplicates")
    assert meta["compared_pairs"] <= meta["all_pairs"] and meta["duplicates"] >= 1
    assert {r.data["shard"] for r in meta["duplicate_share_by_shard"].records} == set(shards)


def test_selection_explains_every_drop(pipeline):
    storage = pipeline["storage"]
    shards = sorted(pipeline["ids"])
    selection = pq.read_table(stored_file(storage, "selection.parquet")).to_pandas().set_index("id")
    table = scored(storage, shards).to_pandas().set_index("id")
    assert sorted(selection.index) == sorted(table.index)
    groups = pq.read_table(stored_file(storage, "near_duplicates.parquet")).to_pandas().set_index("id")
    for doc, row in selection.iterrows():
        if not table.loc[doc, "keep"]:
            assert row["reason"] == "score" and not row["keep"]
        elif doc in groups.index and groups.loc[doc, "representative_id"] != doc:
            assert row["reason"] == f"duplicate_of:{groups.loc[doc, 'representative_id']}" and not row["keep"]
        else:
            assert row["keep"] and pd.isna(row["reason"])
    meta = metadata(pipeline["instance"], "selection")
    assert meta["dropped_duplicate"] == sum(str(r).startswith("duplicate_of:") for r in selection["reason"])
    assert meta["kept"] == int(selection["keep"].sum()) and meta["dropped_cluster_cap"] == 0


def test_audit_of_a_duplicate_names_its_representative_and_both_shards(pipeline):
    storage = pipeline["storage"]
    selection = pq.read_table(stored_file(storage, "selection.parquet")).to_pandas()
    groups = pq.read_table(stored_file(storage, "near_duplicates.parquet")).to_pandas().set_index("id")
    dropped = selection[selection["reason"].fillna("").str.startswith("duplicate_of:")]
    crossing = [d for d in dropped["id"] if groups.loc[d, "shard"] != groups.loc[d, "representative_shard"]]
    assert crossing, "no duplicate across shards was dropped"
    doc = crossing[0]
    report = audit(doc, pipeline["instance"], pipeline["resources"]["storage"])
    text = summary(report)
    representative, shard, other = groups.loc[doc, "representative_id"], groups.loc[doc, "representative_shard"], groups.loc[doc, "shard"]
    assert f"near-duplicate of {representative} in shard {shard}" in text and f"this document is in shard {other}" in text
    assert report["final_selection"]["reason"] == f"duplicate_of:{representative}"
    assert report["final_selection"]["selection"]["data_version"]


@pytest.fixture
def selectable(trained, pipeline):
    """A copy of the pipeline's storage and history, reading the pipeline's corpus."""
    trained["resources"]["corpus"] = trained["pipeline_corpus"]
    return trained


def run(workspace, selection, run_config=None):
    return dg.materialize(
        ALL_ASSETS + ALL_CHECKS, selection=selection, instance=workspace["instance"], resources=workspace["resources"], run_config=run_config or {}, raise_on_error=False
    )


def test_cluster_cap_drops_the_worst_of_big_clusters(selectable):
    result = run(selectable, ["selection"], {"ops": {"selection": {"config": {"cluster_cap": 5}}}})
    assert result.success
    table = pq.read_table(stored_file(selectable["storage"], "selection.parquet")).to_pandas()
    kept = table[table["keep"]]
    assert kept.groupby("cluster").size().max() <= 5
    assert (table["reason"] == "cluster_cap").sum() > 0
    assert set(table["reason"].dropna().map(lambda r: r.split(":")[0])) <= {"score", "duplicate_of", "cluster_cap"}


@pytest.mark.parametrize(
    "selection, config, expected",
    [
        (["clusters"], {"clusters": {"config": {"k": 5000}}}, "cluster count k=5000 is larger than the sample: the corpus has only 661 documents"),
        (["clusters"], {"clusters": {"config": {"k": 50, "sample_size": 20}}}, "cluster count k=50 is larger than sample_size=20"),
        (["near_duplicates"], {"near_duplicates": {"config": {"threshold": 0.0}}}, r"threshold must be in (0, 1], got 0.0"),
        (["near_duplicates"], {"near_duplicates": {"config": {"threshold": 1.5}}}, r"threshold must be in (0, 1], got 1.5"),
    ],
)
def test_bad_settings_are_refused_and_nothing_is_written(selectable, selection, config, expected):
    before = snapshot(selectable["storage"])
    result = run(selectable, selection, {"ops": config})
    assert not result.success
    assert expected in failure_text(result)
    assert snapshot(selectable["storage"]) == before


def test_a_shard_of_another_model_is_refused_by_name_and_nothing_is_written(selectable):
    path = stored_file(selectable["storage"], "scored_corpus", "notes")
    table = pq.read_table(path)
    current = table.schema.metadata[b"model_version"].decode()
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"model_version": b"0123456789abcdef"}), path)
    before = snapshot(selectable["storage"])
    result = run(selectable, ["near_duplicates"])
    assert not result.success
    message = failure_text(result)
    assert "scored_corpus[notes]" in message and "0123456789abcdef" in message and current in message
    assert snapshot(selectable["storage"]) == before


def late_rows(offset: int, prefix: str) -> list[dict]:
    """Documents of the built-in sample that the small corpus does not hold, ids prefixed."""
    table = pq.read_table(sorted(SAMPLE_CORPUS_DIR.glob("*.parquet"))[3])
    return [{"id": prefix + r["id"], "text": r["text"], "label": r["label"]} for r in table.to_pylist()[offset::45][:30]]


def test_ids_are_compared_across_shards_only_once_the_id_index_has_checked_them(trained, pipeline):
    """A shard the corpus sensor ingests and scores (refresh_shard) after the id index was built is
    not read by near_duplicates and selection until the index holds it, and one whose ids clash with
    another shard's stops them at the index's gate, with the last keep list left where it was."""
    workspace = {**trained, "resources": {**trained["resources"], "corpus": CorpusSource(location=str(trained["corpus"]))}}
    shutil.copytree(pipeline["resources"]["corpus"].location, trained["corpus"], dirs_exist_ok=True)
    instance = workspace["instance"]

    def refresh(shard):
        instance.add_dynamic_partitions("corpus_shards", [shard])
        for asset in ("raw_corpus", "scored_corpus"):
            result = dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=[asset], partition_key=shard, instance=instance, resources=workspace["resources"], raise_on_error=False)
            assert result.success, failure_text(result)

    def selected_shards():
        return set(pq.read_table(stored_file(workspace["storage"], "selection.parquet"))["shard"].to_pylist())

    pq.write_table(pa.Table.from_pylist(late_rows(1, "late-")), trained["corpus"] / "late.parquet")
    refresh("late")
    result = run(workspace, ["near_duplicates", "selection"])
    assert result.success, failure_text(result)
    assert "late" not in selected_shards()
    left_out = result.asset_materializations_for_node("selection")[0].metadata["shards_left_out"].records
    assert [r.data["shard"] for r in left_out] == ["late"] and "materialise corpus_id_index" in left_out[0].data["reason"]

    result = run(workspace, ["corpus_id_index", "near_duplicates", "selection"])
    assert result.success, failure_text(result)
    assert "late" in selected_shards()
    assert "shards_left_out" not in result.asset_materializations_for_node("selection")[0].metadata

    # Rewritten and refreshed again: its scored version is of raw ids the index has not checked.
    pq.write_table(pa.Table.from_pylist(late_rows(1, "late-")[:-1]), trained["corpus"] / "late.parquet")
    refresh("late")
    result = run(workspace, ["near_duplicates"])
    assert not result.success
    assert "scored_corpus[late] was scored from raw_corpus[late] version" in failure_text(result) and "materialise corpus_id_index" in failure_text(result)

    shared = pipeline["ids"]["notes"][0]
    pq.write_table(pa.Table.from_pylist(late_rows(2, "clash-") + [{"id": shared, "text": "a document under an id another shard holds", "label": "x"}]), trained["corpus"] / "clash.parquet")
    refresh("clash")
    before = snapshot(workspace["storage"] / "selection")
    result = run(workspace, ["corpus_id_index", "near_duplicates", "selection"])
    assert not result.success
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert [e.check_name for e in failed] == ["corpus_ids_unique_across_shards"]
    assert failed[0].metadata["clashing_shards"].value == ["clash", "notes"] and shared in failed[0].metadata["clashing_ids"].value
    assert not result.asset_materializations_for_node("near_duplicates") and snapshot(workspace["storage"] / "selection") == before
    result = run(workspace, ["near_duplicates"])
    assert not result.success
    message = failure_text(result)
    assert "corpus_id_index version" in message and "corpus_ids_unique_across_shards" in message
