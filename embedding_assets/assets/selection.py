"""Selection: clusters of the corpus, semantic near-duplicates within them, and the final keep list."""

import json
import time

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from embedding_assets import versions
from embedding_assets.assets.ingest import corpus_id_index, corpus_shards_now, id_hash, indexed_raw_versions, raw_corpus
from embedding_assets.paths import shard_file
from embedding_assets.assets.training import distilled_model
from embedding_assets.engine import clustering
from embedding_assets.engine.errors import ArtifactError
from embedding_assets.engine.ngrams import PAD
from embedding_assets.lineage import CODE_VERSIONS, OWNERS, BatchHasher, short_hash
from embedding_assets.partitions import corpus_shards
from embedding_assets.progress import StepMemory, throughput
from embedding_assets.resources import CorpusSource, Storage
from embedding_assets.resources.storage import STORAGE_RETRY_POLICY

CLUSTERS_FILE = "clusters.safetensors"
NEAR_DUPLICATES_FILE = "near_duplicates.parquet"
SELECTION_FILE = "selection.parquet"
# From bench.dedup's planted pairs: 0.88 is the lowest threshold whose pairs keep precision >= 0.95;
# 0.9 leaves a margin (README).
DEFAULT_THRESHOLD = 0.9


def read_model(storage: Storage, version: versions.Version):
    # curation imports this module (scored_corpus depends on clusters), so its reader is fetched late.
    from embedding_assets.assets.curation import read_model as read

    return read(storage, version)


def read_clusters(storage: Storage, version: versions.Version, data: bytes | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """The stored clusters: (config with model_version, k, seed..., centroids, sample sizes)."""
    try:
        return clustering.clusters_from_bytes(storage.read_bytes(*version.file(CLUSTERS_FILE)) if data is None else data)
    except ArtifactError as exc:
        raise dg.Failure(f"{storage.uri(*version.file(CLUSTERS_FILE))}: {exc}", allow_retries=False) from exc


def current_centroids(context, storage: Storage, model_version: str) -> tuple[np.ndarray | None, str]:
    """The centroids and their version (the file's hash, the data version of `clusters`) when they
    were fitted on this model version; else (None, "none")."""
    if versions.latest_version(context.instance, "clusters") is None:
        return None, "none"
    version = versions.published(context, "clusters")
    data = storage.read_bytes(*version.file(CLUSTERS_FILE))
    config, centroids, _ = read_clusters(storage, version, data)
    return (centroids, short_hash(data)) if config.get("model_version") == model_version else (None, "none")


def corpus_sample(storage: Storage, shards: dict[str, versions.Version], size: int, seed: int) -> tuple[list[str], list[str]]:
    """Bottom-k of a seeded id hash across shards (ids, texts), reading only those two columns."""
    kept_ids: list[str] = []
    kept_texts: list[str] = []
    kept_hash = np.empty(0, dtype=np.uint64)
    for shard, raw in shards.items():
        with storage.open_parquet(*raw.file(shard_file(shard))) as parquet:
            for batch in parquet.iter_batches(batch_size=8192, columns=["id", "text"]):
                ids = batch.column("id").to_pylist()
                hashes = id_hash(ids, f"clusters:{seed}")
                candidates = np.flatnonzero(hashes < kept_hash.max()) if len(kept_hash) >= size else np.arange(len(ids))
                texts = batch.column("text").take(pa.array(candidates, pa.int64())).to_pylist()
                kept_ids += [ids[i] for i in candidates]
                kept_texts += texts
                kept_hash = np.concatenate([kept_hash, hashes[candidates]])
                if len(kept_hash) > size:
                    order = np.lexsort((np.array(kept_ids, dtype=object), kept_hash))[:size]
                    kept_ids = [kept_ids[i] for i in order]
                    kept_texts = [kept_texts[i] for i in order]
                    kept_hash = kept_hash[order]
    order = np.lexsort((np.array(kept_ids, dtype=object), kept_hash))
    return [kept_ids[i] for i in order], [kept_texts[i] for i in order]


class ClustersConfig(dg.Config):
    k: int = Field(default=32, description="Number of k-means clusters.")
    sample_size: int = Field(default=100_000, description="Most corpus documents k-means is fitted on (bottom-k of a seeded id hash).")
    seed: int = Field(default=0, description="Seed of the sample hash and of k-means.")
    iterations: int = Field(default=20, description="k-means iterations.")


def cluster_table(embedder, ids, texts, cluster, cosine, k) -> dg.TableMetadataValue:
    sizes = np.bincount(cluster, minlength=k)
    typical = clustering.typical_rows(cluster, cosine, k, per_cluster=3)
    top = clustering.top_columns(embedder.tfidf(texts), cluster, k, per_cluster=5)
    ngrams = embedder.vocabulary.ngrams
    rows = []
    for c in range(k):
        grams = [embedder.tokenizer.decode([int(t) for t in ngrams[i] if t != PAD]) for i in top[c]]
        docs = [f"{ids[i]}: {' '.join(texts[i].split())[:80]}" for i in typical[c]]
        rows.append(dg.TableRecord({"cluster": c, "size": int(sizes[c]), "typical_documents": " | ".join(docs), "top_ngrams": " ".join(f"«{g}»" for g in grams)}))
    schema = dg.TableSchema(columns=[
        dg.TableColumn("cluster", "int", "cluster id (centroid index)"), dg.TableColumn("size", "int", "corpus-sample documents nearest this centroid"),
        dg.TableColumn("typical_documents", "string", "closest to the centroid: id and first 80 characters"),
        dg.TableColumn("top_ngrams", "string", "n-grams, each in «», whose mean TF-IDF in the cluster is most above their corpus-sample mean"),
    ])
    return dg.MetadataValue.table(rows, schema=schema)


@dg.asset(
    deps=[distilled_model, raw_corpus],
    group_name="selection",
    kinds={"faiss", "safetensors"},
    owners=OWNERS,
    code_version=CODE_VERSIONS["clusters"],
    retry_policy=STORAGE_RETRY_POLICY,
    description="Spherical k-means (faiss, seeded) on student embeddings of a hashed corpus sample: the centroids every scored shard assigns its documents to.",
)
def clusters(context: dg.AssetExecutionContext, config: ClustersConfig, corpus: CorpusSource, storage: Storage) -> dg.MaterializeResult:
    if config.k < 1 or config.sample_size < 1:
        raise dg.Failure(f"k and sample_size must be >= 1; got k={config.k}, sample_size={config.sample_size}", allow_retries=False)
    if config.k > config.sample_size:
        raise dg.Failure(f"cluster count k={config.k} is larger than sample_size={config.sample_size}; lower k", allow_retries=False)
    found = corpus_shards_now(context, corpus)
    for shard, why in found.failed.items():
        context.log.warning(f"raw_corpus[{shard}] is left out of the clusters' sample: {why}")
    shards = found.published
    started = time.perf_counter()
    embedder = read_model(storage, versions.published(context, "distilled_model"))
    ids, texts = corpus_sample(storage, shards, config.sample_size, config.seed)
    if config.k > len(ids):
        raise dg.Failure(
            f"cluster count k={config.k} is larger than the sample: the corpus has only {len(ids)} documents across {len(shards)} shards; lower k",
            allow_retries=False,
        )
    vectors = embedder.encode(texts)
    centroids = clustering.spherical_kmeans(vectors, config.k, config.seed, config.iterations)
    cluster, cosine = clustering.assign_clusters(vectors, centroids)
    sizes = np.bincount(cluster, minlength=config.k)
    header = {"model_version": embedder.version, "k": config.k, "seed": config.seed, "sample_documents": len(ids), "sample_version": short_hash(*ids)}
    data = clustering.clusters_to_bytes(centroids, sizes, header)
    version = versions.new_version(context, "clusters")
    uri = storage.write_bytes(data, *version.file(CLUSTERS_FILE))
    return dg.MaterializeResult(
        data_version=dg.DataVersion(short_hash(data)),
        metadata={
            "uri": dg.MetadataValue.path(uri),
            **versions.record(context, storage, version),
            "model_version": embedder.version,
            "k": config.k,
            "sample_documents": len(ids),
            "size_min": int(sizes.min()),
            "size_median": float(np.median(sizes)),
            "size_max": int(sizes.max()),
            "size_entropy_bits": round(clustering.size_entropy(cluster, config.k), 4),
            "mean_centroid_cosine": round(float(cosine.mean()), 4),
            "clusters": cluster_table(embedder, ids, texts, cluster, cosine, config.k),
            **throughput(time.perf_counter() - started, len(ids)),
        },
    )


class NearDuplicatesConfig(dg.Config):
    threshold: float = Field(default=DEFAULT_THRESHOLD, description="Cosine at or above which two documents of a cluster are near-duplicates; in (0, 1].")
    max_block: int = Field(default=4096, description="Largest set of documents compared all-pairs; bigger clusters are split by k-means first.")
    seed: int = Field(default=0, description="Seed of the k-means that splits big clusters.")


NEAR_DUPLICATES_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("shard", pa.string(), nullable=False),
    pa.field("group", pa.int64(), nullable=False),
    pa.field("representative_id", pa.string(), nullable=False),
    pa.field("representative_shard", pa.string(), nullable=False),
    pa.field("cosine_to_representative", pa.float32(), nullable=False),
])


NEAR_DUPLICATES_COLUMNS = {
    "id": "document id of a group member",
    "shard": "the shard it is in",
    "group": "near-duplicate group id",
    "representative_id": "the group member that is kept for the group (best score)",
    "representative_shard": "the shard of the representative",
    "cosine_to_representative": "cosine of the member's student embedding to the representative's",
}


def scored_shards(context, storage: Storage, model_version: str) -> tuple[dict[str, versions.Version], dict[str, str]]:
    """The published scored version of each shard the published corpus_id_index holds, once each was
    scored from the very raw version whose ids the index checked, with the current model and clusters
    (read from the files' footers); and the registered shards left out, each with why.

    Near-duplicate groups and the keep list name documents by id across shards, so they read only
    shards whose ids the uniqueness gate has seen together: a shard ingested and scored after the
    index (by the corpus sensor, say) is not read until the index is built again (select_corpus does)."""
    index = versions.published(context, "corpus_id_index")
    indexed = indexed_raw_versions(storage, index)
    centroids, clusters_version = current_centroids(context, storage, model_version)
    if centroids is None:
        raise dg.Failure(f"clusters has not been materialised for model {model_version}; materialise clusters, then scored_corpus", allow_retries=False)
    registered = context.instance.get_dynamic_partitions(corpus_shards.name)
    left_out = {
        shard: f"not in corpus_id_index version {index.name}: not in the corpus location then, its raw_corpus failed a gate, or it was ingested since; materialise corpus_id_index to take it in"
        for shard in sorted(set(registered) - set(indexed))
    }
    for shard, why in left_out.items():
        context.log.warning(f"scored_corpus[{shard}] is left out: {why}")
    found = versions.published_many(context, "scored_corpus", indexed)
    for shard, scored in found.items():
        with storage.open_parquet(*scored.file(shard_file(shard))) as parquet:
            meta = {k.decode(): v.decode() for k, v in (parquet.schema_arrow.metadata or {}).items()}
        if meta.get("raw_shard_version") != indexed[shard]:
            raise dg.Failure(
                f"scored_corpus[{shard}] was scored from raw_corpus[{shard}] version {meta.get('raw_shard_version')}, but corpus_id_index "
                f"(version {index.name}) checked the ids of its version {indexed[shard]} against the other shards; materialise corpus_id_index "
                f"and scored_corpus[{shard}] so both hold the shard's current version (select_corpus builds the index first)",
                allow_retries=False,
            )
        if meta.get("model_version") != model_version:
            raise dg.Failure(
                f"scored_corpus[{shard}] holds embeddings of model {meta.get('model_version')}, but the current distilled_model is {model_version}; re-materialise scored_corpus[{shard}]",
                allow_retries=False,
            )
        if meta.get("clusters_version") != clusters_version:
            raise dg.Failure(
                f"scored_corpus[{shard}] holds cluster ids of clusters version {meta.get('clusters_version')}, but the current clusters are {clusters_version}; re-materialise scored_corpus[{shard}]",
                allow_retries=False,
            )
    return found, left_out


def left_out_table(left_out: dict[str, str]) -> dict:
    """The metadata entry naming the registered shards a corpus-wide asset did not read; none when it read them all."""
    if not left_out:
        return {}
    rows = [dg.TableRecord({"shard": shard, "reason": why}) for shard, why in list(left_out.items())[:50]]
    schema = dg.TableSchema(columns=[dg.TableColumn("shard", "string", "corpus shard not read (the first 50 listed)"), dg.TableColumn("reason", "string", "why it was not read")])
    return {"shards_left_out": dg.MetadataValue.table(rows, schema=schema)}


def read_columns(storage: Storage, shards: dict[str, versions.Version], columns: list[str]) -> tuple[pa.Table, np.ndarray]:
    """The named columns of every scored shard, one table, and each row's shard index."""
    tables, shard_index = [], []
    for i, (shard, scored) in enumerate(shards.items()):
        with storage.open_parquet(*scored.file(shard_file(shard))) as parquet:
            table = parquet.read(columns=columns)
        tables.append(table)
        shard_index.append(np.full(table.num_rows, i, dtype=np.int32))
    return pa.concat_tables(tables).combine_chunks(), np.concatenate(shard_index) if shard_index else np.empty(0, np.int32)


def scores_of(table: pa.Table) -> np.ndarray:
    """Scores as float64 with NaN where there is none (no curation configured)."""
    return pc.fill_null(table["score"].cast(pa.float64()), float("nan")).to_numpy()


def share_table(rows: list[dict], key: str) -> dg.TableMetadataValue:
    schema = dg.TableSchema(columns=[dg.TableColumn(key, "string", f"the {key}"), dg.TableColumn("documents", "int", f"documents in the {key}"), dg.TableColumn("duplicates", "int", "members dropped for a representative"), dg.TableColumn("duplicate_share", "float", "duplicates / documents, 4 decimals")])
    return dg.MetadataValue.table([dg.TableRecord(r) for r in rows], schema=schema)


@dg.asset(
    deps=["scored_corpus", corpus_id_index, clusters, distilled_model],
    group_name="selection",
    kinds={"faiss", "parquet"},
    owners=OWNERS,
    metadata={"dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type), NEAR_DUPLICATES_COLUMNS[f.name]) for f in NEAR_DUPLICATES_SCHEMA])},
    code_version=CODE_VERSIONS["near_duplicates"],
    retry_policy=STORAGE_RETRY_POLICY,
    description="Groups of documents whose student embeddings have cosine >= the threshold, searched only within clusters (big ones split further), each with a representative: highest score, then lowest id.",
)
def near_duplicates(context: dg.AssetExecutionContext, config: NearDuplicatesConfig, storage: Storage) -> dg.MaterializeResult:
    if not 0 < config.threshold <= 1:
        raise dg.Failure(f"near_duplicates threshold must be in (0, 1], got {config.threshold}", allow_retries=False)
    if config.max_block < 2:
        raise dg.Failure(f"max_block must be >= 2, got {config.max_block}", allow_retries=False)
    memory = StepMemory.start()
    started = time.perf_counter()
    model_version = read_model(storage, versions.published(context, "distilled_model")).version
    found, left_out = scored_shards(context, storage, model_version)
    shards = list(found)
    table, shard_index = read_columns(storage, found, ["id", "embedding", "cluster", "score"])
    dim = table.schema.field("embedding").type.list_size
    codes = table["embedding"].combine_chunks().flatten().to_numpy().reshape(-1, dim)
    cluster = table["cluster"].to_numpy()
    ids = table["id"]
    rank = clustering.rank_by_score(scores_of(table), ids.to_numpy(zero_copy_only=False))
    found = clustering.duplicates_by_cluster(codes, cluster, rank, config.threshold, config.max_block, config.seed)
    del codes
    members = np.flatnonzero(found.representative >= 0)
    representatives = found.representative[members]
    # Groups numbered by their representative's position in the corpus: stable for the same input.
    group = np.unique(representatives, return_inverse=True)[1]
    shard_names = pa.array(shards, pa.string())
    out = pa.table(
        {
            "id": ids.take(pa.array(members)),
            "shard": shard_names.take(pa.array(shard_index[members])),
            "group": pa.array(group.astype(np.int64)),
            "representative_id": ids.take(pa.array(representatives)),
            "representative_shard": shard_names.take(pa.array(shard_index[representatives])),
            "cosine_to_representative": pa.array(found.cosine[members], pa.float32()),
        },
        schema=NEAR_DUPLICATES_SCHEMA.with_metadata({"model_version": model_version, "threshold": repr(config.threshold), "shards": json.dumps(shards)}),
    )
    hasher = BatchHasher()
    version = versions.new_version(context, "near_duplicates")
    uri, rows = storage.write_parquet(hasher.wrap(out.to_batches()), out.schema, *version.file(NEAR_DUPLICATES_FILE))
    dropped = np.zeros(len(cluster), dtype=bool)
    dropped[members[representatives != members]] = True
    per_shard = [
        {"shard": s, "documents": int((shard_index == i).sum()), "duplicates": int(dropped[shard_index == i].sum())} for i, s in enumerate(shards)
    ]
    k = int(cluster.max()) + 1 if len(cluster) else 0
    sizes, dups = np.bincount(cluster, minlength=k), np.bincount(cluster[dropped], minlength=k)
    per_cluster = [{"cluster": str(c), "documents": int(sizes[c]), "duplicates": int(dups[c])} for c in range(k)]
    for r in per_shard + per_cluster:
        r["duplicate_share"] = round(r["duplicates"] / max(r["documents"], 1), 4)
    seconds = time.perf_counter() - started
    return dg.MaterializeResult(
        data_version=dg.DataVersion(short_hash(hasher.version, model_version)),
        metadata={
            "dagster/row_count": rows,
            "uri": dg.MetadataValue.path(uri),
            **versions.record(context, storage, version),
            "model_version": model_version,
            "threshold": config.threshold,
            "documents": len(cluster),
            "groups": int(group.max()) + 1 if len(group) else 0,
            "duplicates": int(dropped.sum()),
            "duplicate_share": round(float(dropped.mean()) if len(dropped) else 0.0, 4),
            "compared_pairs": found.compared_pairs,
            "all_pairs": len(cluster) * (len(cluster) - 1) // 2,
            "largest_block": found.largest_block,
            "duplicate_share_by_shard": share_table(per_shard, "shard"),
            "duplicate_share_by_cluster": share_table(sorted(per_cluster, key=lambda r: -r["duplicate_share"]), "cluster"),
            **left_out_table(left_out),
            **throughput(seconds, len(cluster)),
            **memory.report(),
        },
    )


class SelectionConfig(dg.Config):
    cluster_cap: int | None = Field(default=None, description="Most documents kept per cluster (best scores first); none: no cap.")
    temperature: float | None = Field(
        default=None,
        description="Balance clusters: keep shares proportional to cluster size**t, t in [0, 1] (1 keeps all, 0 the same number per cluster); none: no balancing.",
    )


SELECTION_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("shard", pa.string(), nullable=False),
    pa.field("cluster", pa.int32(), nullable=False),
    pa.field("keep", pa.bool_(), nullable=False),
    pa.field("reason", pa.string(), nullable=True),
])


@dg.asset(
    # Reads the scored shards and the clusters of the current model, besides the duplicate groups.
    deps=[near_duplicates, "scored_corpus", corpus_id_index, clusters, distilled_model],
    group_name="selection",
    kinds={"parquet"},
    owners=OWNERS,
    metadata={"dagster/column_schema": dg.TableSchema(columns=[
        dg.TableColumn("id", "string", "document id"), dg.TableColumn("shard", "string", "the shard it is in"),
        dg.TableColumn("cluster", "int32", "its nearest clusters centroid"), dg.TableColumn("keep", "bool", "whether the document is selected"),
        dg.TableColumn("reason", "string", "null when kept; else score, duplicate_of:<id> or cluster_cap"),
    ])},
    code_version=CODE_VERSIONS["selection"],
    retry_policy=STORAGE_RETRY_POLICY,
    description="The final keep list over every shard: the score threshold, then non-representative near-duplicates dropped, then an optional per-cluster cap or temperature; each drop with its reason.",
)
def selection(context: dg.AssetExecutionContext, config: SelectionConfig, storage: Storage) -> dg.MaterializeResult:
    if config.cluster_cap is not None and config.cluster_cap < 1:
        raise dg.Failure(f"cluster_cap must be >= 1 or unset, got {config.cluster_cap}", allow_retries=False)
    if config.temperature is not None and not 0 <= config.temperature <= 1:
        raise dg.Failure(f"temperature must be in [0, 1] or unset, got {config.temperature}", allow_retries=False)
    started = time.perf_counter()
    model_version = read_model(storage, versions.published(context, "distilled_model")).version
    with storage.open_parquet(*versions.published(context, "near_duplicates").file(NEAR_DUPLICATES_FILE)) as parquet:
        duplicates = parquet.read(columns=["id", "representative_id"])
        meta = {k.decode(): v.decode() for k, v in (parquet.schema_arrow.metadata or {}).items()}
    if meta.get("model_version") != model_version:
        raise dg.Failure(f"near_duplicates was found with model {meta.get('model_version')}, the current model is {model_version}; re-materialise near_duplicates", allow_retries=False)
    found, left_out = scored_shards(context, storage, model_version)
    shards = list(found)
    if json.loads(meta.get("shards", "[]")) != shards:
        raise dg.Failure(f"near_duplicates covers shards {meta.get('shards')}, the corpus has {shards}; re-materialise near_duplicates", allow_retries=False)
    table, shard_index = read_columns(storage, found, ["id", "cluster", "score", "keep"])
    n = table.num_rows
    cluster = table["cluster"].to_numpy()
    # A null keep means no curation is configured: the score stage passes every document.
    passes_score = pc.fill_null(table["keep"], True).to_numpy(zero_copy_only=False)
    dropped_members = duplicates.filter(pc.not_equal(duplicates["id"], duplicates["representative_id"]))
    position = pc.index_in(dropped_members["id"], value_set=table["id"].combine_chunks()).to_numpy(zero_copy_only=False)
    duplicate_of = np.full(n, None, dtype=object)
    duplicate_of[position] = dropped_members["representative_id"].to_numpy(zero_copy_only=False)
    is_duplicate = np.zeros(n, dtype=bool)
    is_duplicate[position] = True
    eligible = passes_score & ~is_duplicate
    rank = clustering.rank_by_score(scores_of(table), table["id"].to_numpy(zero_copy_only=False))
    k = int(cluster.max()) + 1 if n else 0
    keep = clustering.balanced_keep(cluster, eligible, rank, k, config.cluster_cap, config.temperature)
    reason = np.full(n, None, dtype=object)
    reason[~passes_score] = "score"
    duplicate_rows = passes_score & is_duplicate
    reason[duplicate_rows] = ["duplicate_of:" + r for r in duplicate_of[duplicate_rows]]
    reason[eligible & ~keep] = "cluster_cap"
    out = pa.table(
        {"id": table["id"], "shard": pa.array(shards, pa.string()).take(pa.array(shard_index)), "cluster": table["cluster"], "keep": pa.array(keep), "reason": pa.array(reason, pa.string())},
        schema=SELECTION_SCHEMA.with_metadata({"model_version": model_version, "near_duplicates_threshold": meta.get("threshold", ""), "config": config.model_dump_json()}),
    )
    hasher = BatchHasher()
    version = versions.new_version(context, "selection")
    uri, rows = storage.write_parquet(hasher.wrap(out.to_batches()), out.schema, *version.file(SELECTION_FILE))
    threshold_only = passes_score
    return dg.MaterializeResult(
        data_version=dg.DataVersion(short_hash(hasher.version, model_version)),
        metadata={
            "dagster/row_count": rows,
            "uri": dg.MetadataValue.path(uri),
            **versions.record(context, storage, version),
            "kept": int(keep.sum()),
            "keep_fraction": round(float(keep.mean()) if n else 0.0, 4),
            "dropped_score": int((~passes_score).sum()),
            "dropped_duplicate": int(duplicate_rows.sum()),
            "dropped_cluster_cap": int((eligible & ~keep).sum()),
            "cluster_cap": config.cluster_cap if config.cluster_cap is not None else "none",
            "temperature": config.temperature if config.temperature is not None else "none",
            "kept_cluster_entropy_bits": round(clustering.size_entropy(cluster[keep], k), 4),
            "threshold_only_cluster_entropy_bits": round(clustering.size_entropy(cluster[threshold_only], k), 4),
            "max_cluster_entropy_bits": round(float(np.log2(max(k, 1))), 4),
            "kept_by_shard": dg.MetadataValue.table(
                [dg.TableRecord({"shard": s, "documents": int((shard_index == i).sum()), "kept": int(keep[shard_index == i].sum())}) for i, s in enumerate(shards)],
                schema=dg.TableSchema(columns=[
                    dg.TableColumn("shard", "string", "corpus shard"),
                    dg.TableColumn("documents", "int", "its documents"),
                    dg.TableColumn("kept", "int", "its documents in the final keep list"),
                ]),
            ),
            **left_out_table(left_out),
            **throughput(time.perf_counter() - started, n),
        },
    )
