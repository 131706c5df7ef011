"""Curation inputs: the reference set (documents to find more of) and annotations of corpus documents.

Both are read from their own location and checked before anything is written: a bad input
fails the step with a message that names the file, row or setting, and leaves the previous
version in place.
"""

import hashlib
import time
from pathlib import PurePosixPath

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.assets.ingest import heldout_mask, raw_corpus, shards_in_location
from embedding_assets.paths import ANNOTATIONS_FILE, REFERENCE_FILE, shard_file
from embedding_assets import versions
from embedding_assets.corpus import SHARD_SUFFIXES, list_shards, read_shard
from embedding_assets.engine.errors import InputError
from embedding_assets.lineage import CODE_VERSIONS, OWNERS, BatchHasher
from embedding_assets.resources import CorpusSource, QualityGates, Storage
from embedding_assets.resources.curation import Curation

REFERENCE = "reference"
NEGATIVE = "negative"
ANNOTATION_SUFFIXES = (".parquet", ".jsonl", ".csv")
BOOLEAN_LABELS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "keep": True, "drop": False}


def text_hash(texts: list[str]) -> list[bytes]:
    return [hashlib.blake2b(t.encode(), digest_size=12).digest() for t in texts]


def failure(message: str) -> dg.Failure:
    return dg.Failure(message, allow_retries=False)


def read_documents(location: str, fs, role: str) -> pa.Table:
    """Every document under `location` (a directory, an s3:// prefix or one file) under the corpus contract."""
    try:
        files = list_shards(location, fs)
    except InputError:
        name = PurePosixPath(location).name
        if PurePosixPath(name).suffix not in SHARD_SUFFIXES:
            raise
        files = {PurePosixPath(name).stem: location}
    tables = []
    for key, url in sorted(files.items()):
        for batch in read_shard(url, 8192, fs):
            tables.append(pa.table({"id": batch.column("id"), "text": batch.column("text"), "role": pa.array([role] * batch.num_rows), "file": pa.array([key] * batch.num_rows)}))
    if not tables:
        return pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string()), "role": pa.array([], pa.string()), "file": pa.array([], pa.string())})
    return pa.concat_tables(tables)


def row_in_file(table: pa.Table, index: int) -> str:
    """'file F, row R' (counting from 1 within its file) for row `index` of a concatenated table."""
    files = table["file"].to_pylist()
    return f"file {files[index]}, row {files[: index + 1].count(files[index])}"


def refuse_bad_documents(table: pa.Table, location: str, minimum: int, what: str) -> None:
    if table.num_rows == 0:
        raise failure(f"{what} at {location} has no documents")
    if table.num_rows < minimum:
        raise failure(
            f"{what} at {location} has {table.num_rows} document{'s' if table.num_rows != 1 else ''}; "
            f"at least {minimum} are needed (QualityGates.min_reference_documents)"
        )
    texts = table["text"].to_pylist()
    for i, text in enumerate(texts):
        if not text.strip():
            raise failure(f"{what} at {location}: {row_in_file(table, i)} (id {table['id'][i].as_py()!r}) has an empty text")
    for column in ("id", "text"):
        seen: dict = {}
        for i, value in enumerate(table[column].to_pylist()):
            if value in seen:
                raise failure(f"{what} at {location}: {row_in_file(table, i)} repeats the {column} of {row_in_file(table, seen[value])}")
            seen[value] = i


def corpus_overlap(context, corpus: CorpusSource, storage: Storage, table: pa.Table) -> dict:
    """Reference documents also in the corpus (same id, or same text). A shared id with another text is refused."""
    by_id = dict(zip(table["id"].to_pylist(), text_hash(table["text"].to_pylist())))
    texts = set(by_id.values())
    same_id = same_text = 0
    for shard, raw in shards_in_location(context, corpus).items():
        with storage.open_parquet(*raw.file(shard_file(shard))) as parquet:
            for batch in parquet.iter_batches(batch_size=65536, columns=["id", "text"]):
                ids = batch.column("id")
                hits = pc.is_in(ids, value_set=pa.array(list(by_id), pa.string())).to_numpy(zero_copy_only=False)
                hashes = text_hash(batch.column("text").to_pylist())
                for i in np.flatnonzero(hits):
                    doc_id = ids[int(i)].as_py()
                    if hashes[i] != by_id[doc_id]:
                        raise failure(
                            f"reference id {doc_id!r} is also the id of another document in raw_corpus[{shard}]; "
                            "ids name one document across the corpus and the reference set: rename the reference document"
                        )
                same_id += len(np.flatnonzero(hits))
                same_text += sum(1 for i, h in enumerate(hashes) if h in texts and not hits[i])
    return {"in_corpus_same_id": same_id, "in_corpus_same_text": same_text}


@dg.asset(
    deps=[raw_corpus],
    group_name="curation",
    kinds={"parquet"},
    owners=OWNERS,
    metadata={
        "dagster/column_schema": dg.TableSchema(
            columns=[
                dg.TableColumn("id", "string", "document id, unique across the reference set"),
                dg.TableColumn("text", "string", "document text"),
                dg.TableColumn("role", "string", "reference (wanted) or negative (not wanted)"),
                dg.TableColumn("file", "string", "the file it was read from, without its suffix"),
                dg.TableColumn("split", "string", "train or heldout, by a hash of the id; held-out references measure the head"),
            ]
        )
    },
    code_version=CODE_VERSIONS["reference_set"],
    description="The documents to find more of (and, optionally, documents not wanted), read from their own location; what the reference-classifier and reference-similarity modes learn from.",
)
def reference_set(context: dg.AssetExecutionContext, curation: Curation, corpus: CorpusSource, storage: Storage, gates: QualityGates) -> dg.MaterializeResult:
    mode = curation.resolved_mode()
    if not curation.reference:
        raise failure(f"no reference set is configured (curation mode {mode}): set --reference or EMBEDDING_ASSETS_REFERENCE to a directory or s3:// prefix of documents")
    started = time.perf_counter()
    try:
        positives = read_documents(curation.reference, curation.filesystem(curation.reference), REFERENCE)
        negatives = read_documents(curation.negative_reference, curation.filesystem(curation.negative_reference), NEGATIVE) if curation.negative_reference else None
    except InputError as exc:
        raise failure(f"reference set: {exc}") from exc
    refuse_bad_documents(positives, curation.reference, gates.min_reference_documents, "the reference set")
    table = positives
    if negatives is not None:
        refuse_bad_documents(negatives, curation.negative_reference, gates.min_reference_documents, "the negative reference set")
        table = pa.concat_tables([positives, negatives])
        refuse_bad_documents(table, f"{curation.reference} and {curation.negative_reference}", 1, "the reference sets together")
    overlap = corpus_overlap(context, corpus, storage, table)
    split = np.where(heldout_mask(table["id"].to_pylist(), curation.reference_holdout), "heldout", "train")
    table = table.append_column("split", pa.array(split, pa.string()))
    hasher = BatchHasher()
    version = versions.new_version(context, "reference_set")
    uri, rows = storage.write_parquet(hasher.wrap(table.to_batches()), table.schema, *version.file(REFERENCE_FILE))
    in_corpus = overlap["in_corpus_same_id"] + overlap["in_corpus_same_text"]
    return dg.MaterializeResult(
        data_version=dg.DataVersion(hasher.version),
        metadata={
            "dagster/row_count": rows,
            "uri": dg.MetadataValue.path(uri),
            **versions.record(context, storage, version),
            "location": dg.MetadataValue.path(curation.reference),
            "negative_location": dg.MetadataValue.path(curation.negative_reference or "none"),
            "reference_documents": positives.num_rows,
            "negative_documents": 0 if negatives is None else negatives.num_rows,
            "heldout_documents": int((split == "heldout").sum()),
            "in_corpus_same_id": overlap["in_corpus_same_id"],
            "in_corpus_same_text": overlap["in_corpus_same_text"],
            "in_corpus_share": round(in_corpus / max(rows, 1), 4),
            "wall_seconds": round(time.perf_counter() - started, 2),
        },
    )


def read_annotation_table(location: str, fs) -> pa.Table:
    """The annotations: one file, or every parquet / jsonl / csv file under a directory or prefix."""
    import fsspec
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    fs, root = (fsspec.core.url_to_fs(location) if fs is None else (fs, fs._strip_protocol(location)))
    paths = sorted(p for p in fs.find(root) if PurePosixPath(p).suffix in ANNOTATION_SUFFIXES) if fs.isdir(root) else [root]
    if not paths or not fs.exists(paths[0]):
        raise failure(f"annotations at {location}: no parquet, jsonl or csv file there")
    tables = []
    for path in paths:
        suffix = PurePosixPath(path).suffix
        try:
            with fs.open(path, "rb") as f:
                if suffix == ".parquet":
                    table = pq.read_table(f)
                elif suffix == ".jsonl":
                    table = pjson.read_json(f)
                elif suffix == ".csv":
                    table = pcsv.read_csv(f, convert_options=pcsv.ConvertOptions(column_types={"id": pa.string(), "label": pa.string()}))
                else:
                    raise failure(f"annotations file {path}: unsupported type {suffix!r} (expected one of {ANNOTATION_SUFFIXES})")
        except (pa.ArrowInvalid, OSError) as exc:
            raise failure(f"annotations file {path}: not readable as {suffix[1:]} ({exc})") from exc
        if "id" not in table.column_names or not ({"label", "score"} & set(table.column_names)):
            raise failure(f"annotations file {path}: needs an id column and a label or score column (has {table.column_names})")
        columns = {"id": table["id"].cast(pa.string())}
        if "score" in table.column_names:
            try:
                columns["score"] = table["score"].cast(pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise failure(f"annotations file {path}: score must be numeric ({exc})") from exc
        else:
            columns["label"] = table["label"].cast(pa.string())
        for name, column in columns.items():
            if column.null_count:
                row = column.is_null().to_pylist().index(True) + 1
                raise failure(f"annotations file {path}: row {row}: {name} is null")
        tables.append(pa.table(columns))
    kinds = {tuple(t.column_names) for t in tables}
    if len(kinds) > 1:
        raise failure(f"annotations at {location}: some files give a label and others a score; use one kind")
    return pa.concat_tables(tables)


def annotation_targets(labels: list[str], positive_labels: list[str]) -> np.ndarray:
    """Which annotated documents are wanted: a label among `positive_labels`, else a true/false label."""
    if positive_labels:
        return np.isin(np.array(labels, dtype=object), list(positive_labels))
    unknown = sorted({label for label in labels if label.lower() not in BOOLEAN_LABELS})
    if unknown:
        raise failure(
            f"annotation labels {unknown[:10]} are not true/false ({', '.join(BOOLEAN_LABELS)}); "
            "name the labels to keep with --positive-labels (EMBEDDING_ASSETS_POSITIVE_LABELS)"
        )
    return np.array([BOOLEAN_LABELS[label.lower()] for label in labels])


def curation_input_problems(curation: Curation, min_reference_documents: int) -> list[str]:
    """What is wrong with the reference sets and annotations the curation reads, found by reading
    them (they are small) before any run starts: each problem names the setting, file and row."""
    problems = []
    sets = [("the reference set", "--reference", curation.reference, REFERENCE)]
    if curation.negative_reference:
        sets.append(("the negative reference set", "--negative-reference", curation.negative_reference, NEGATIVE))
    if curation.resolved_mode() in ("reference-classifier", "reference-similarity"):
        for what, flag, location, role in sets:
            try:
                refuse_bad_documents(read_documents(location, curation.filesystem(location), role), location, min_reference_documents, what)
            except InputError as exc:
                problems.append(f"{flag} {location}: {exc}")
            except dg.Failure as exc:
                problems.append(f"{flag}: {exc.description}")
    if curation.resolved_mode() == "annotations" and curation.annotations:
        try:
            table = read_annotation_table(curation.annotations, curation.filesystem(curation.annotations))
            counts = pc.value_counts(table["id"])
            repeated = counts.filter(pc.greater(pc.struct_field(counts, "counts"), 1))
            if len(repeated):
                problems.append(f"--annotations {curation.annotations}: id {repeated[0]['values'].as_py()!r} is annotated more than once")
            if "label" in table.column_names:
                wanted = annotation_targets(table["label"].to_pylist(), curation.positive_labels)
                if wanted.all() or not wanted.any():
                    problems.append(
                        f"--annotations {curation.annotations}: {'every' if wanted.all() else 'no'} annotated document is wanted "
                        f"(labels {sorted(set(table['label'].to_pylist()))[:10]}); the head needs both wanted and unwanted examples"
                    )
        except dg.Failure as exc:
            problems.append(f"--annotations: {exc.description}")
    return problems


@dg.asset(
    deps=[raw_corpus],
    group_name="curation",
    kinds={"parquet"},
    owners=OWNERS,
    metadata={
        "dagster/column_schema": dg.TableSchema(
            columns=[
                dg.TableColumn("id", "string", "the corpus document annotated"),
                dg.TableColumn("text", "string", "its text, from raw_corpus"),
                dg.TableColumn("shard", "string", "the shard it is in"),
                dg.TableColumn("label", "string", "the annotation's label (label annotations)"),
                dg.TableColumn("score", "double", "the annotation's score (score annotations)"),
                dg.TableColumn("split", "string", "train or heldout, by a hash of the id"),
            ]
        )
    },
    code_version=CODE_VERSIONS["annotations"],
    description="Judgements on some corpus documents (id with a label or a score, from a person or a judge model), joined to their texts in raw_corpus; what the annotations mode learns from.",
)
def annotations(context: dg.AssetExecutionContext, curation: Curation, corpus: CorpusSource, storage: Storage) -> dg.MaterializeResult:
    if not curation.annotations:
        raise failure("no annotations are configured: set --annotations or EMBEDDING_ASSETS_ANNOTATIONS to a table of id with label or score")
    started = time.perf_counter()
    table = read_annotation_table(curation.annotations, curation.filesystem(curation.annotations))
    ids = table["id"].to_pylist()
    if len(set(ids)) != len(ids):
        repeated = next(i for i in ids if ids.count(i) > 1)
        raise failure(f"annotations at {curation.annotations}: id {repeated!r} is annotated more than once")
    wanted = pa.array(ids, pa.string())
    found: list[pa.Table] = []
    for shard, raw in shards_in_location(context, corpus).items():
        with storage.open_parquet(*raw.file(shard_file(shard))) as parquet:
            for batch in parquet.iter_batches(batch_size=65536, columns=["id", "text"]):
                hits = batch.filter(pc.is_in(batch.column("id"), value_set=wanted))
                if hits.num_rows:
                    found.append(pa.table({"id": hits.column("id"), "text": hits.column("text"), "shard": pa.array([shard] * hits.num_rows)}))
    texts = pa.concat_tables(found) if found else pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string()), "shard": pa.array([], pa.string())})
    unknown = sorted(set(ids) - set(texts["id"].to_pylist()))
    if unknown:
        raise failure(
            f"annotations at {curation.annotations} name {len(unknown)} id(s) that are in no materialised raw_corpus shard, "
            f"for example {unknown[:5]}; annotate corpus documents only"
        )
    joined = texts.join(table, "id").sort_by("id")
    split = np.where(heldout_mask(joined["id"].to_pylist(), 0.15), "heldout", "train")
    joined = joined.append_column("split", pa.array(split, pa.string()))
    hasher = BatchHasher()
    version = versions.new_version(context, "annotations")
    uri, rows = storage.write_parquet(hasher.wrap(joined.to_batches()), joined.schema, *version.file(ANNOTATIONS_FILE))
    kind = "score" if "score" in joined.column_names else "label"
    summary = (
        {f"score_{k}": round(float(v), 4) for k, v in zip(("min", "mean", "max"), (pc.min(joined["score"]).as_py(), pc.mean(joined["score"]).as_py(), pc.max(joined["score"]).as_py()))}
        if kind == "score"
        else {"labels": dg.MetadataValue.table(
            [dg.TableRecord({"label": v["values"], "documents": v["counts"]}) for v in pc.value_counts(joined["label"]).to_pylist()],
            dg.TableSchema(columns=[dg.TableColumn("label", "string", "annotation label"), dg.TableColumn("documents", "int", "annotated documents with that label")]),
        )}
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(hasher.version),
        metadata={
            "dagster/row_count": rows,
            "uri": dg.MetadataValue.path(uri),
            **versions.record(context, storage, version),
            "location": dg.MetadataValue.path(curation.annotations),
            "kind": kind,
            "heldout_documents": int((split == "heldout").sum()),
            "shards": len(set(joined["shard"].to_pylist())),
            "wall_seconds": round(time.perf_counter() - started, 2),
            **summary,
        },
    )
