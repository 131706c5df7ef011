"""Ingest: each corpus shard under the corpus contract, and the training sample drawn from them."""

import hashlib
import time

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from embedding_assets.engine.errors import InputError, SourceUnavailable
from embedding_assets.engine.tokenization import load_tokenizer
from embedding_assets.partitions import corpus_shards
from embedding_assets.paths import TRAINING_SAMPLE_FILE, raw_corpus_path
from embedding_assets.progress import throughput, token_counts
from embedding_assets.resources import CorpusSource, Storage, Teacher
from embedding_assets.resources.s3 import is_transient
from embedding_assets.resources.storage import STORAGE_RETRY_POLICY
from embedding_assets.lineage import CODE_VERSIONS, OWNERS, BatchHasher, latest_data_version, latest_metadata_value, short_hash

SAMPLE_COLUMNS = ("id", "text", "label", "shard", "split")


def retryable(exc: InputError) -> bool:
    """A shard that could not be reached for a passing reason is worth another try; bad content is not."""
    return isinstance(exc, SourceUnavailable) and is_transient(exc.__cause__)


def id_hash(ids: list[str], salt: str) -> np.ndarray:
    """A uint64 per id, stable across runs and machines."""
    salt_bytes = salt.encode()
    return np.array(
        [int.from_bytes(hashlib.blake2b(salt_bytes + i.encode(), digest_size=8).digest(), "little") for i in ids],
        dtype=np.uint64,
    )


@dg.asset(
    partitions_def=corpus_shards,
    group_name="ingest",
    kinds={"parquet"},
    owners=OWNERS,
    metadata={"dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn("id", "string", "unique document id"), dg.TableColumn("text", "string", "document text"), dg.TableColumn("...", "any", "every other column of the shard, kept as is")])},
    code_version=CODE_VERSIONS["raw_corpus"],
    retry_policy=STORAGE_RETRY_POLICY,
    description="One corpus shard, read in record batches and checked against the corpus contract (id, text, extra columns kept).",
)
def raw_corpus(context: dg.AssetExecutionContext, corpus: CorpusSource, storage: Storage, teacher: Teacher) -> dg.MaterializeResult:
    shard = context.partition_key
    try:
        shards = corpus.shards()
    except InputError as exc:
        raise dg.Failure(str(exc), allow_retries=retryable(exc)) from exc
    if shard not in shards:
        raise dg.Failure(f"shard {shard!r} is a partition but no such file is under {corpus.location}", allow_retries=False)
    tokenizer = load_tokenizer(teacher.tokenizer_json())
    tokens = 0
    started = time.perf_counter()
    batches = corpus.read(shards[shard])
    try:
        first = next(batches)
    except StopIteration:
        raise dg.Failure(f"shard {shard}: the file has no documents ({shards[shard]})", allow_retries=False) from None
    except InputError as exc:
        raise dg.Failure(str(exc), allow_retries=retryable(exc)) from exc

    def all_batches():
        nonlocal tokens
        tokens += int(token_counts(tokenizer, first.column("text").to_pylist()).sum())
        yield first
        for batch in batches:
            if batch.schema != first.schema:
                try:
                    batch = pa.Table.from_batches([batch]).cast(first.schema).to_batches()[0]
                except (pa.ArrowInvalid, ValueError, KeyError) as exc:
                    raise InputError(f"shard {shard}: columns change part-way through the file: {batch.schema} vs {first.schema}") from exc
            tokens += int(token_counts(tokenizer, batch.column("text").to_pylist()).sum())
            yield batch

    hasher = BatchHasher()
    try:
        uri, rows = storage.write_parquet(hasher.wrap(all_batches()), first.schema, *raw_corpus_path(shard))
    except InputError as exc:
        raise dg.Failure(str(exc), allow_retries=retryable(exc)) from exc
    seconds = time.perf_counter() - started
    return dg.MaterializeResult(
        data_version=dg.DataVersion(hasher.version),
        metadata={
            "dagster/row_count": rows,
            "source": dg.MetadataValue.path(shards[shard]),
            "uri": dg.MetadataValue.path(uri),
            "columns": list(first.schema.names),
            "tokens": tokens,
            **throughput(seconds, rows, tokens),
        }
    )


class SampleConfig(dg.Config):
    size: int = Field(default=6000, description="Documents in the training sample (the teacher embeds every one).")
    heldout_fraction: float = Field(default=0.15, description="Share of documents held out for evaluation, decided by a hash of the id.")
    seed: int = Field(default=0, description="Salt of the sampling hash: a different seed draws a different sample.")
    label_column: str = Field(default="label", description="Shard column whose values label the documents (for probes and the classifier).")


@dg.asset(
    deps=[raw_corpus],
    group_name="ingest",
    kinds={"parquet"},
    owners=OWNERS,
    metadata={"dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn("id", "string"), dg.TableColumn("text", "string"), dg.TableColumn("label", "string", "the label column, null where absent"), dg.TableColumn("shard", "string"), dg.TableColumn("split", "string", "train or heldout, by a hash of the id")])},
    code_version=CODE_VERSIONS["training_sample"],
    retry_policy=STORAGE_RETRY_POLICY,
    description=(
        "A deterministic sample across all shards: the documents with the smallest seeded hash of their id "
        "(bottom-k), so adding shards only ever swaps documents in, and a train / held-out split by a second hash."
    ),
)
def training_sample(context: dg.AssetExecutionContext, config: SampleConfig, storage: Storage, teacher: Teacher) -> dg.MaterializeResult:
    if config.size < 2 or not 0 < config.heldout_fraction < 1:
        raise dg.Failure(f"sample size must be >= 2 and heldout_fraction in (0, 1); got {config.size}, {config.heldout_fraction}", allow_retries=False)
    started = time.perf_counter()
    shards = sorted(context.instance.get_dynamic_partitions(corpus_shards.name))
    kept: pa.Table | None = None
    total = 0
    for shard in shards:
        if not storage.exists(*raw_corpus_path(shard)):
            raise dg.Failure(f"raw_corpus[{shard}] has not been materialised; materialise it first", allow_retries=False)
        with storage.open_parquet(*raw_corpus_path(shard)) as parquet:
            for batch in parquet.iter_batches(batch_size=8192):
                ids = batch.column("id").to_pylist()
                total += len(ids)
                names = batch.schema.names
                labels = batch.column(config.label_column) if config.label_column in names else pa.nulls(len(ids), pa.string())
                candidates = pa.table({
                    "id": batch.column("id"),
                    "text": batch.column("text"),
                    "label": labels.cast(pa.string()),
                    "shard": pa.array([shard] * len(ids), pa.string()),
                    "sample_hash": pa.array(id_hash(ids, f"sample:{config.seed}")),
                })
                kept = candidates if kept is None else pa.concat_tables([kept, candidates])
                if kept.num_rows > config.size:
                    order = np.lexsort((np.array(kept["id"].to_pylist(), dtype=object), kept["sample_hash"].to_numpy()))
                    kept = kept.take(order[: config.size])
    if kept is None or kept.num_rows == 0:
        raise dg.Failure("no documents to sample: no raw_corpus shard is materialised", allow_retries=False)
    order = np.lexsort((np.array(kept["id"].to_pylist(), dtype=object), kept["sample_hash"].to_numpy()))
    kept = kept.take(order)
    duplicates = pc.count_distinct(kept["id"]).as_py() != kept.num_rows
    if duplicates:
        raise dg.Failure("the same document id occurs in more than one shard; ids must be unique across shards", allow_retries=False)
    bucket = id_hash(kept["id"].to_pylist(), "split") % np.uint64(10_000)
    split = np.where(bucket < np.uint64(round(config.heldout_fraction * 10_000)), "heldout", "train")
    sample = kept.drop_columns(["sample_hash"]).append_column("split", pa.array(split, pa.string()))
    hasher = BatchHasher()
    uri, rows = storage.write_parquet(hasher.wrap(sample.to_batches()), sample.schema, TRAINING_SAMPLE_FILE)
    heldout = int((split == "heldout").sum())
    labels = pc.value_counts(sample["label"]).to_pylist()
    shard_versions = {shard: latest_data_version(context.instance, "raw_corpus", shard) for shard in shards}
    tokens = token_counts(load_tokenizer(teacher.tokenizer_json()), sample["text"].to_pylist())
    shard_tokens = [latest_metadata_value(context.instance, "raw_corpus", "tokens", shard) for shard in shards]
    corpus_tokens = sum(shard_tokens) if None not in shard_tokens else None
    return dg.MaterializeResult(
        data_version=dg.DataVersion(short_hash(hasher.version, str(config.size), str(config.seed))),
        metadata={
            "raw_shard_versions": shard_versions,
            "dagster/row_count": rows,
            "uri": dg.MetadataValue.path(uri),
            "shards": len(shards),
            "corpus_documents": total,
            "train_documents": rows - heldout,
            "heldout_documents": heldout,
            "labels": len([v for v in labels if v["values"] is not None]),
            "seed": config.seed,
            "tokens": int(tokens.sum()),
            "train_tokens": int(tokens[split == "train"].sum()),
            **throughput(time.perf_counter() - started, total, corpus_tokens),
        }
    )
