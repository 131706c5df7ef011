"""Ingest: each corpus shard under the corpus contract, and the training sample drawn from them."""

import hashlib
import itertools
import json
import os
import tempfile
import time
from dataclasses import dataclass, field

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from embedding_assets.engine.config import DistillConfig
from embedding_assets.engine.errors import InputError, SourceUnavailable
from embedding_assets.engine.tokenization import load_tokenizer
from embedding_assets.partitions import corpus_shards
from embedding_assets.engine.threads import available_cpus
from embedding_assets.paths import CORPUS_ID_INDEX_FILE, TRAINING_SAMPLE_FILE, shard_file, shard_ids_file
from embedding_assets.progress import throughput, token_counts
from embedding_assets.resources import CorpusSource, Curation, Storage, Teacher
from embedding_assets.resources.curation import CurationSettingsError
from embedding_assets.resources.s3 import is_transient
from embedding_assets.resources.storage import STORAGE_RETRY_POLICY
from embedding_assets.interrupts import stop_on_interrupt
from embedding_assets.checks.reasons import failure_reason
from embedding_assets.lineage import CODE_VERSIONS, OWNERS, BatchHasher, short_hash
from embedding_assets import versions

SAMPLE_COLUMNS = ("id", "text", "label", "shard", "split")
CONTRACT_COLUMNS = {
    "id": dg.TableColumn("id", "string", "unique document id (non-null, unique across shards)"),
    "text": dg.TableColumn("text", "string", "document text (non-null)"),
    "label": dg.TableColumn("label", "string", "optional: the document's label, for probes and the labels curation mode"),
    "source": dg.TableColumn("source", "string", "optional: where the document comes from, for per-source drift references"),
}


def shard_schema(schema: pa.Schema) -> dg.TableSchema:
    """The columns a shard really has: the contract's, and every extra one, kept as is."""
    return dg.TableSchema(columns=[
        dg.TableColumn(f.name, str(f.type), CONTRACT_COLUMNS[f.name].description) if f.name in CONTRACT_COLUMNS
        else dg.TableColumn(f.name, str(f.type), "extra column of the shard, passed through as is")
        for f in schema
    ])
# Tokens per character are measured on this many characters of a shard's first documents.
TOKEN_ESTIMATE_CHARACTERS = 200_000


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


def heldout_mask(ids: list[str], fraction: float) -> np.ndarray:
    """Rows held out by a hash of the id, the same rule for every run and every asset."""
    return id_hash(ids, "split") % np.uint64(10_000) < np.uint64(round(fraction * 10_000))


@dataclass
class CorpusShards:
    """The shards of the corpus as its location holds them now, as the instance knows them.

    `current`: shards in the location whose raw_corpus is materialised from that very file.
    `departed`: partitions whose file is no longer in the location (another corpus, or a removed
    shard); their stored outputs stay, but nothing reads them. `failed`: current shards whose latest
    materialisation failed a raw_corpus gate (or shares ids with one that did), with the reason.
    `published`: the version to read of each usable shard. `tokens_estimate`: each current shard's
    token estimate, from its latest materialisation.
    """

    current: list[str]
    departed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    published: dict[str, versions.Version] = field(default_factory=dict)
    tokens_estimate: dict[str, int | None] = field(default_factory=dict)

    @property
    def usable(self) -> list[str]:
        return [shard for shard in self.current if shard not in self.failed]

    def report(self) -> dict:
        """Metadata entries: the shard count, and the departed and excluded shards when there are any."""
        entries: dict = {"corpus_shards": len(self.current)}
        if self.departed:
            entries["departed_shards"] = self.departed[:50]
        if self.failed:
            entries["excluded_shards"] = dg.MetadataValue.table(
                [dg.TableRecord({"shard": shard, "reason": why}) for shard, why in list(self.failed.items())[:50]],
                schema=dg.TableSchema(columns=[
                    dg.TableColumn("shard", "string", "corpus shard left out of the sample"),
                    dg.TableColumn("reason", "string", "the raw_corpus gate that failed on it, with what it found"),
                ]),
            )
        return entries


def shards_in_location(context, corpus: CorpusSource) -> dict[str, versions.Version]:
    """The published raw version of each partition whose file the corpus location holds now: what a
    corpus-wide lookup (the reference set's overlap, the annotations' join) reads; a departed
    shard, one never ingested and one whose latest version failed a gate are not."""
    try:
        listing = corpus.shards()
    except InputError as exc:
        raise dg.Failure(str(exc), allow_retries=retryable(exc)) from exc
    instance = context.instance
    latest = versions.latest_versions(instance, "raw_corpus", set(instance.get_dynamic_partitions(corpus_shards.name)) & set(listing))
    failed = versions.gate_problems_by_partition(instance, latest)
    return {shard: version for shard, version in latest.items() if shard not in failed}


def corpus_shards_now(context, corpus: CorpusSource) -> CorpusShards:
    """The shards a corpus-wide asset reads: refuses (naming the shard and what to run) when one of
    the location's shards is not ingested, or was ingested from another file than the one there now."""
    try:
        listing = corpus.shards()
    except InputError as exc:
        raise dg.Failure(str(exc), allow_retries=retryable(exc)) from exc
    instance = context.instance
    registered = set(instance.get_dynamic_partitions(corpus_shards.name))
    departed = sorted(registered - set(listing))
    current = sorted(listing)
    records = versions.latest_records(instance, "raw_corpus", [shard for shard in current if shard in registered])
    latest: dict[str, versions.Version] = {}
    for shard in current:
        record = records.get(shard)
        source = record.asset_materialization.metadata.get("source") if record is not None else None
        if source is None:
            raise dg.Failure(
                f"raw_corpus[{shard}] ({listing[shard]}) has not been materialised; "
                "materialise it first (ingest_corpus, or python -m embedding_assets.run)",
                allow_retries=False,
            )
        if str(source.value) != listing[shard]:
            raise dg.Failure(
                f"raw_corpus[{shard}] was read from {source.value}, but the corpus location {corpus.location} now holds {listing[shard]}; "
                f"re-materialise raw_corpus[{shard}] (ingest_corpus, or python -m embedding_assets.run), or use another DAGSTER_HOME and storage for another corpus",
                allow_retries=False,
            )
        latest[shard] = versions.version_of(record, "raw_corpus", shard)
    failed = {shard: "; ".join(problems.values()) for shard, problems in versions.gate_problems_by_partition(instance, latest).items()}
    for shard, why in shared_id_failures(instance).items():
        if shard in listing:
            failed.setdefault(shard, why)
    published = {shard: latest[shard] for shard in current if shard not in failed}
    estimates = {shard: getattr(records[shard].asset_materialization.metadata.get("tokens_estimate"), "value", None) for shard in current}
    return CorpusShards(current, departed, dict(sorted(failed.items())), published, estimates)


def shared_id_failures(instance: dg.DagsterInstance) -> dict[str, str]:
    """Shards that share ids with another, as the gate of the latest corpus_id_index found: shard -> why."""
    latest = versions.latest_version(instance, "corpus_id_index")
    if latest is None:
        return {}
    key = dg.AssetCheckKey(dg.AssetKey("corpus_id_index"), "corpus_ids_unique_across_shards")
    # Only the gate's result on the latest index counts: an older clash may have been fixed since.
    evaluation = versions.evaluation_for(instance, key, latest, partitioned=False)
    if evaluation is None or evaluation.passed:
        return {}
    problem = failure_reason(evaluation.check_name, evaluation.metadata)
    partners: dict[str, set[str]] = {}
    for pair in evaluation.metadata["clashing_shard_pairs"].value:
        a, b = pair.split(" & ")
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)
    return {
        shard: f"shares ids with raw_corpus[{', '.join(sorted(partners.get(shard, {'...'})))}]: {problem}"
        for shard in evaluation.metadata["clashing_shards"].value
    }


@dg.asset(
    partitions_def=corpus_shards,
    group_name="ingest",
    kinds={"parquet"},
    owners=OWNERS,
    # The contract's columns; each materialisation lists the shard's real columns, extra ones included.
    metadata={"dagster/column_schema": dg.TableSchema(columns=[CONTRACT_COLUMNS[name] for name in ("id", "text", "label", "source")])},
    code_version=CODE_VERSIONS["raw_corpus"],
    retry_policy=STORAGE_RETRY_POLICY,
    description="One corpus shard, read in record batches and checked against the corpus contract (id, text, extra columns kept).",
)
@stop_on_interrupt
def raw_corpus(context: dg.AssetExecutionContext, corpus: CorpusSource, storage: Storage, teacher: Teacher) -> dg.MaterializeResult:
    shard = context.partition_key
    try:
        listing = corpus.listing()
        shards = listing.shards
    except InputError as exc:
        raise dg.Failure(str(exc), allow_retries=retryable(exc)) from exc
    if shard not in shards:
        raise dg.Failure(f"shard {shard!r} is a partition but no such file is under {corpus.location}", allow_retries=False)
    started = time.perf_counter()
    batches = corpus.read(shards[shard])
    try:
        first = next(batches)
    except StopIteration:
        raise dg.Failure(f"shard {shard}: the file has no documents ({shards[shard]})", allow_retries=False) from None
    except InputError as exc:
        raise dg.Failure(str(exc), allow_retries=retryable(exc)) from exc
    characters = 0
    id_hashes: list[np.ndarray] = []

    def all_batches():
        nonlocal characters
        for batch in itertools.chain([first], batches):
            if batch.schema != first.schema:
                try:
                    batch = pa.Table.from_batches([batch]).cast(first.schema).to_batches()[0]
                except (pa.ArrowInvalid, ValueError, KeyError) as exc:
                    raise InputError(f"shard {shard}: columns change part-way through the file: {batch.schema} vs {first.schema}") from exc
            characters += text_characters(batch)
            id_hashes.append(corpus_id_hash(batch.column("id")))
            yield batch

    hasher = BatchHasher()
    version = versions.new_version(context, "raw_corpus", shard)
    try:
        uri, rows = storage.write_parquet(hasher.wrap(all_batches()), first.schema, *version.file(shard_file(shard)))
        write_id_hashes(storage, version, shard, id_hashes)
    except InputError as exc:
        raise dg.Failure(str(exc), allow_retries=retryable(exc)) from exc
    seconds = time.perf_counter() - started
    tokens = estimated_tokens(teacher, first, characters)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(hasher.version),
        metadata={
            "shard": shard,
            "dagster/row_count": rows,
            "dagster/column_schema": shard_schema(first.schema),
            "source": dg.MetadataValue.path(shards[shard]),
            # What the corpus sensor compares a listing with, to tell an ingested file from a new or rewritten one.
            "source_fingerprint": listing.fingerprints[shard],
            "uri": dg.MetadataValue.path(uri),
            **versions.record(context, storage, version),
            "characters": characters,
            "tokens_estimate": tokens,
            **throughput(seconds, rows, tokens),
        }
    )


def text_characters(batch: pa.RecordBatch) -> int:
    return int(pc.sum(pc.utf8_length(batch.column("text"))).as_py() or 0)


def estimated_tokens(teacher: Teacher, first: pa.RecordBatch, characters: int) -> int:
    """The shard's WordPiece tokens, estimated from its characters at the rate of its first documents
    (at most TOKEN_ESTIMATE_CHARACTERS of them): ingest never tokenises a whole shard only to count.
    Features, which tokenise the sample anyway, count exactly."""
    texts, seen = [], 0
    for text in first.column("text").to_pylist():
        if text is None:
            continue
        texts.append(text)
        seen += len(text)
        if seen >= TOKEN_ESTIMATE_CHARACTERS:
            break
    if not seen:
        return 0
    counted = int(token_counts(load_tokenizer(teacher.tokenizer_json()), texts).sum())
    return round(characters * counted / seen)


def corpus_id_hash(ids: pa.Array) -> np.ndarray:
    """The 64-bit hash of each (non-null) id that the corpus id index merges."""
    return id_hash(pc.drop_null(ids).cast(pa.string()).to_pylist(), "corpus-id")


def write_id_hashes(storage: Storage, version: versions.Version, shard: str, hashes: list[np.ndarray]) -> None:
    """The shard's id hashes, sorted, in the same version folder as the shard: written once, at ingest."""
    column = np.sort(np.concatenate(hashes)) if hashes else np.empty(0, np.uint64)
    schema = pa.schema([pa.field("id_hash", pa.uint64(), nullable=False)], metadata={"shard": shard})
    table = pa.table([pa.array(column, pa.uint64())], schema=schema)
    storage.write_parquet(table.to_batches(max_chunksize=1 << 20), schema, *version.file(shard_ids_file(shard)))


INDEX_SCHEMA = pa.schema([pa.field("id_hash", pa.uint64(), nullable=False), pa.field("shard", pa.string(), nullable=False)])


# The index's parquet footer names the raw version (data version) of each shard it holds, so a
# reader of ids across shards can tell which shard versions the uniqueness gate has checked.
INDEXED_VERSIONS_KEY = "raw_shard_versions"


def indexed_raw_versions(storage: Storage, index: versions.Version) -> dict[str, str]:
    """Shard -> the raw_corpus data version whose ids this corpus_id_index holds (read from its footer)."""
    with storage.open_parquet(*index.file(CORPUS_ID_INDEX_FILE)) as parquet:
        metadata = parquet.schema_arrow.metadata or {}
    found = metadata.get(INDEXED_VERSIONS_KEY.encode())
    if found is None:
        raise dg.Failure(f"corpus_id_index version {index.name} does not name the shard versions it holds: materialise corpus_id_index again", allow_retries=False)
    return json.loads(found)


def id_hash_batches(storage: Storage, shards: dict[str, versions.Version]):
    """Every shard's id hashes with its name, streamed from the files written beside the shards."""
    for shard, version in shards.items():
        with storage.open_parquet(*version.file(shard_ids_file(shard))) as parquet:
            for batch in parquet.iter_batches(batch_size=1 << 20, columns=["id_hash"]):
                yield pa.record_batch([batch.column(0), pa.repeat(pa.scalar(shard, pa.string()), batch.num_rows)], schema=INDEX_SCHEMA)


@dg.asset(
    deps=[raw_corpus],
    group_name="ingest",
    kinds={"duckdb", "parquet"},
    owners=OWNERS,
    metadata={"dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn("id_hash", "uint64", "64-bit hash of a document id"), dg.TableColumn("shard", "string", "the shard that holds the id")])},
    code_version=CODE_VERSIONS["corpus_id_index"],
    retry_policy=STORAGE_RETRY_POLICY,
    description=(
        "Every id hash of every published shard of the corpus location, with its shard, sorted by hash: merged once from the "
        "hashes each shard wrote at ingest, so checking ids across shards costs one pass over all ids, not one per shard."
    ),
)
@stop_on_interrupt
def corpus_id_index(context: dg.AssetExecutionContext, corpus: CorpusSource, storage: Storage) -> dg.MaterializeResult:
    import duckdb

    started = time.perf_counter()
    shards = shards_in_location(context, corpus)
    if not shards:
        raise dg.Failure(f"no shard of {corpus.location} is ingested with its gates passed: materialise raw_corpus first", allow_retries=False)
    reader = pa.RecordBatchReader.from_batches(INDEX_SCHEMA, id_hash_batches(storage, shards))
    version = versions.new_version(context, "corpus_id_index")
    with tempfile.TemporaryDirectory(prefix="corpus-id-index-") as scratch:
        merged = os.path.join(scratch, "index.parquet")
        with duckdb.connect(config={"temp_directory": scratch, "threads": available_cpus()}) as db:
            db.register("hashes", reader)
            db.execute(f"COPY (SELECT id_hash, shard FROM hashes ORDER BY id_hash, shard) TO '{merged}' (FORMAT parquet, COMPRESSION zstd)")
        index = pq.ParquetFile(merged)
        batches = (pa.RecordBatch.from_arrays(batch.columns, schema=INDEX_SCHEMA) for batch in index.iter_batches(batch_size=1 << 20))
        hasher = BatchHasher()
        indexed = json.dumps({shard: v.data_version for shard, v in shards.items()}, sort_keys=True)
        schema = INDEX_SCHEMA.with_metadata({INDEXED_VERSIONS_KEY: indexed})
        uri, rows = storage.write_parquet(hasher.wrap(batches), schema, *version.file(CORPUS_ID_INDEX_FILE))
    return dg.MaterializeResult(
        data_version=dg.DataVersion(hasher.version),
        metadata={
            "dagster/row_count": rows,
            "uri": dg.MetadataValue.path(uri),
            **versions.record(context, storage, version),
            "shards": len(shards),
            "raw_shard_versions": dg.MetadataValue.table(
                [dg.TableRecord({"shard": shard, "version": v.name}) for shard, v in list(shards.items())[:50]],
                schema=dg.TableSchema(columns=[
                    dg.TableColumn("shard", "string", "corpus shard whose ids the index holds (the first 50 listed)"),
                    dg.TableColumn("version", "string", "the raw_corpus version folder its id hashes were read from"),
                ]),
            ),
            **throughput(time.perf_counter() - started, rows),
        },
    )


class SampleConfig(dg.Config):
    size: int = Field(default=6000, description="Documents in the training sample (the teacher embeds every one).")
    heldout_fraction: float = Field(default=0.15, description="Share of documents held out for evaluation, decided by a hash of the id.")
    seed: int = Field(default=0, description="Salt of the sampling hash: a different seed draws a different sample.")
    label_column: str = Field(default="label", description="Shard column whose values label the documents (for probes and the classifier).")


def later_steps_config(context: dg.AssetExecutionContext, asset: str) -> dict | None:
    """The run config of `asset` when this run materialises it too, else None."""
    selection = context.run.asset_selection or context.job_def.asset_layer.executable_asset_keys
    if dg.AssetKey(asset) not in selection:
        return None
    return ((context.run.run_config.get("ops") or {}).get(asset) or {}).get("config") or {}


def refuse_untrainable(context, config: SampleConfig, kept: pa.Table, split: np.ndarray, mode: str, curation: Curation) -> None:
    """What would fail after the teacher, refused before it: too few training documents for one batch,
    and a labels curation the sample's labels cannot train."""
    train = int((split == "train").sum())
    training = later_steps_config(context, "distilled_model")
    if training is not None:
        batch = int(training.get("batch_size", DistillConfig.model_fields["batch_size"].default))
        if train < batch:
            raise dg.Failure(
                f"the training sample has {train} training documents, fewer than one batch of {batch}: "
                f"raise the sample size (training_sample size {config.size}, --sample-size) or lower the batch size "
                f"(distilled_model batch_size, --batch-size)",
                allow_retries=False,
            )
    if mode != "labels" or later_steps_config(context, "quality_classifier") is None:
        return
    labels = kept["label"].to_pylist()
    if all(label is None for label in labels):
        raise dg.Failure(
            f"curation mode labels needs a label column ({config.label_column!r}, training_sample label_column) in the corpus, and this corpus has none; "
            "use --reference with --curation reference-classifier or reference-similarity, or --annotations",
            allow_retries=False,
        )
    wanted = np.isin(np.array(labels, dtype=object), list(curation.positive_labels))[split == "train"]
    if wanted.all() or not wanted.any():
        found = sorted({label for label in labels if label is not None})
        raise dg.Failure(
            f"curation mode labels: {'every' if wanted.all() else 'no'} training document has one of the positive labels "
            f"{sorted(curation.positive_labels)} (--positive-labels), so there is nothing to tell apart; the sample's labels include {found[:20]}",
            allow_retries=False,
        )


@dg.asset(
    deps=[raw_corpus, corpus_id_index],
    group_name="ingest",
    kinds={"parquet"},
    owners=OWNERS,
    metadata={"dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn("id", "string", "document id"), dg.TableColumn("text", "string", "document text"), dg.TableColumn("label", "string", "the label column, null where absent"), dg.TableColumn("shard", "string", "the shard it was drawn from"), dg.TableColumn("split", "string", "train or heldout, by a hash of the id")])},
    code_version=CODE_VERSIONS["training_sample"],
    retry_policy=STORAGE_RETRY_POLICY,
    description=(
        "A deterministic sample across all shards: the documents with the smallest seeded hash of their id "
        "(bottom-k), so adding shards only ever swaps documents in, and a train / held-out split by a second hash."
    ),
)
@stop_on_interrupt
def training_sample(
    context: dg.AssetExecutionContext, config: SampleConfig, corpus: CorpusSource, storage: Storage, curation: Curation
) -> dg.MaterializeResult:
    if config.size < 2 or not 0 < config.heldout_fraction < 1:
        raise dg.Failure(f"sample size must be >= 2 and heldout_fraction in (0, 1); got {config.size}, {config.heldout_fraction}", allow_retries=False)
    try:
        mode = curation.check()
    except CurationSettingsError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    started = time.perf_counter()
    found = corpus_shards_now(context, corpus)
    for shard in found.departed:
        context.log.warning(f"raw_corpus[{shard}] is a partition whose file is no longer in {corpus.location}: not sampled")
    for shard, why in found.failed.items():
        context.log.warning(f"raw_corpus[{shard}] is left out of the sample: {why}")
    shards = found.usable
    if not shards:
        raise dg.Failure(f"no shard of {corpus.location} passed its raw_corpus gates: {found.failed or 'no shards'}", allow_retries=False)
    kept: pa.Table | None = None
    total = 0
    for shard in shards:
        with storage.open_parquet(*found.published[shard].file(shard_file(shard))) as parquet:
            has_label = config.label_column in parquet.schema_arrow.names
            columns = ["id", "text"] + ([config.label_column] if has_label else [])
            # Only the columns the sample keeps, a record batch at a time: memory holds the sample and one batch.
            for batch in parquet.iter_batches(batch_size=8192, columns=columns):
                ids = batch.column("id").to_pylist()
                total += len(ids)
                hashes = id_hash(ids, f"sample:{config.seed}")
                if kept is not None and kept.num_rows >= config.size:
                    # Rows above the k-th smallest hash so far can never enter the sample.
                    chosen = hashes <= kept["sample_hash"][config.size - 1].as_py()
                    if not chosen.any():
                        continue
                    batch, hashes = batch.filter(pa.array(chosen)), hashes[chosen]
                labels = batch.column(config.label_column) if has_label else pa.nulls(batch.num_rows, pa.string())
                candidates = pa.table({
                    "id": batch.column("id"),
                    "text": batch.column("text"),
                    "label": labels.cast(pa.string()),
                    "shard": pa.array([shard] * batch.num_rows, pa.string()),
                    "sample_hash": pa.array(hashes),
                })
                kept = candidates if kept is None else pa.concat_tables([kept, candidates])
                order = np.lexsort((np.array(kept["id"].to_pylist(), dtype=object), kept["sample_hash"].to_numpy()))
                kept = kept.take(order[: config.size])
    if kept is None or kept.num_rows == 0:
        raise dg.Failure("no documents to sample: no raw_corpus shard is materialised", allow_retries=False)
    order = np.lexsort((np.array(kept["id"].to_pylist(), dtype=object), kept["sample_hash"].to_numpy()))
    kept = kept.take(order)
    duplicates = pc.count_distinct(kept["id"]).as_py() != kept.num_rows
    if duplicates:
        raise dg.Failure("the same document id occurs in more than one shard; ids must be unique across shards", allow_retries=False)
    split = np.where(heldout_mask(kept["id"].to_pylist(), config.heldout_fraction), "heldout", "train")
    refuse_untrainable(context, config, kept, split, mode, curation)
    sample = kept.drop_columns(["sample_hash"]).append_column("split", pa.array(split, pa.string()))
    hasher = BatchHasher()
    version = versions.new_version(context, "training_sample")
    uri, rows = storage.write_parquet(hasher.wrap(sample.to_batches()), sample.schema, *version.file(TRAINING_SAMPLE_FILE))
    heldout = int((split == "heldout").sum())
    labels = pc.value_counts(sample["label"]).to_pylist()
    shard_versions = {shard: found.published[shard].data_version for shard in shards}
    shard_tokens = [found.tokens_estimate.get(shard) for shard in shards]
    corpus_tokens = sum(shard_tokens) if None not in shard_tokens else None
    return dg.MaterializeResult(
        data_version=dg.DataVersion(short_hash(hasher.version, str(config.size), str(config.seed))),
        metadata={
            "raw_shard_versions": dg.MetadataValue.table(
                [dg.TableRecord({"shard": shard, "data_version": version}) for shard, version in shard_versions.items()],
                schema=dg.TableSchema(columns=[
                    dg.TableColumn("shard", "string", "corpus shard the sample drew from"),
                    dg.TableColumn("data_version", "string", "data version of its raw_corpus materialisation that was read"),
                ]),
            ),
            **found.report(),
            "dagster/row_count": rows,
            "uri": dg.MetadataValue.path(uri),
            **versions.record(context, storage, version),
            "shards": len(shards),
            "corpus_documents": total,
            "train_documents": rows - heldout,
            "heldout_documents": heldout,
            "labels": len([v for v in labels if v["values"] is not None]),
            "seed": config.seed,
            **throughput(time.perf_counter() - started, total, corpus_tokens),
        }
    )
