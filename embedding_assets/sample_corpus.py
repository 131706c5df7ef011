"""The built-in sample corpus: docstrings of the standard library and the pydoc topics.

Texts are read with `ast` from the interpreter's own source files, so nothing is imported
or executed. Each document is labelled with its top-level package (`email`, `asyncio`, ...);
a test module `test_socket` counts as `socket`. The committed parquet shards were built with
CPython 3.11; rebuild with `python -m embedding_assets.sample_corpus OUT_DIR`.

The sample's reference set (`data/sample_reference/`) holds networking documentation from
outside the standard library (see `reference_documents`); rebuild it with `--reference`.
"""

from __future__ import annotations

import argparse
import ast
import os
import sysconfig
import zlib
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SAMPLE_CORPUS_DIR = Path(__file__).parent / "data" / "sample_corpus"
SAMPLE_REFERENCE_DIR = Path(__file__).parent / "data" / "sample_reference"
REFERENCE_PACKAGES = ("urllib3", "requests", "cachecontrol")

NUM_SHARDS = 4
MIN_WORDS = 4
SKIPPED_DIRS = {"site-packages", "__pycache__", "dist-packages"}

# Packages a "networking" curation keeps: sockets, protocols, mail and the web.
NETWORKING_LABELS = (
    "asyncio", "email", "ftplib", "http", "imaplib", "ipaddress", "mailbox", "nntplib",
    "poplib", "selectors", "smtplib", "socket", "socketserver", "ssl", "telnetlib",
    "urllib", "wsgiref", "xmlrpc",
)


def _label_for(rel_path: Path, top_levels: set[str]) -> str:
    parts = rel_path.with_suffix("").parts
    label = parts[0]
    if label == "test" and len(parts) > 1:
        tested = parts[1].removeprefix("test_")
        if tested in top_levels:
            return tested
    return label


def _docstrings(path: Path) -> Iterator[tuple[str, str, str]]:
    """Yield (qualified name, kind, docstring) for a module and its classes and functions."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, str, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    kind = "class" if isinstance(child, ast.ClassDef) else "function"
                    yield name, kind, doc
                yield from walk(child, f"{name}.")
            elif not isinstance(child, ast.expr):
                yield from walk(child, prefix)

    doc = ast.get_docstring(tree)
    if doc:
        yield "", "module", doc
    yield from walk(tree, "")


def iter_documents(stdlib: Path | None = None) -> Iterator[dict[str, str]]:
    """Yield the corpus documents in a stable order."""
    stdlib = Path(stdlib or sysconfig.get_paths()["stdlib"])
    files = []
    for root, dirs, names in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        files += [Path(root) / n for n in sorted(names) if n.endswith(".py")]
    top_levels = {f.relative_to(stdlib).parts[0].removesuffix(".py") for f in files}

    seen_ids: set[str] = set()
    seen_texts: set[str] = set()
    for path in files:
        rel = path.relative_to(stdlib)
        label = _label_for(rel, top_levels)
        for qualname, kind, doc in _docstrings(path):
            text = doc.strip()
            if len(text.split()) < MIN_WORDS or text in seen_texts:
                continue
            doc_id = f"{rel.as_posix()}:{qualname}" if qualname else rel.as_posix()
            base, n = doc_id, 1
            while doc_id in seen_ids:
                n += 1
                doc_id = f"{base}#{n}"
            seen_ids.add(doc_id)
            seen_texts.add(text)
            yield {"id": doc_id, "text": text, "label": label, "source": "stdlib", "kind": kind}

    from pydoc_data.topics import topics

    for topic in sorted(topics):
        paragraphs = [p.strip() for p in topics[topic].split("\n\n")]
        for i, text in enumerate(p for p in paragraphs if len(p.split()) >= 8):
            if text in seen_texts:
                continue
            seen_texts.add(text)
            yield {
                "id": f"pydoc_data/topics:{topic}#{i}",
                "text": text,
                "label": "language",
                "source": "pydoc_topics",
                "kind": "topic",
            }


def build(out_dir: Path, num_shards: int = NUM_SHARDS) -> list[Path]:
    """Write the corpus as `num_shards` parquet files, a document's shard fixed by its id."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[list[dict[str, str]]] = [[] for _ in range(num_shards)]
    for doc in iter_documents():
        shards[zlib.crc32(doc["id"].encode()) % num_shards].append(doc)
    paths = []
    for i, rows in enumerate(shards):
        path = out_dir / f"stdlib-docs-{i:02d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path, compression="zstd")
        paths.append(path)
    return paths


def reference_documents(root: Path | None = None) -> Iterator[dict[str, str]]:
    """The sample's reference set: docstrings of the HTTP libraries pip vendors (urllib3, requests,
    cachecontrol). Networking documentation from outside the standard library, so none of it is
    in the corpus: the documents a team would bring to say "more like these"."""
    import pip

    root = Path(root or Path(pip.__file__).parent / "_vendor")
    seen: set[str] = set()
    ids: set[str] = set()
    for package in REFERENCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for qualname, _, doc in _docstrings(path):
                text = doc.strip()
                if len(text.split()) < MIN_WORDS or text in seen:
                    continue
                seen.add(text)
                base = f"pip-vendor/{rel}:{qualname}" if qualname else f"pip-vendor/{rel}"
                doc_id, n = base, 1
                while doc_id in ids:
                    n += 1
                    doc_id = f"{base}#{n}"
                ids.add(doc_id)
                yield {"id": doc_id, "text": text}


def build_reference(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "networking.parquet"
    pq.write_table(pa.Table.from_pylist(list(reference_documents())), path, compression="zstd")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, nargs="?", default=SAMPLE_CORPUS_DIR)
    parser.add_argument("--shards", type=int, default=NUM_SHARDS)
    parser.add_argument("--reference", action="store_true", help="write the sample's reference set instead (default directory: the package's)")
    args = parser.parse_args()
    if args.reference:
        path = build_reference(args.out_dir if args.out_dir != SAMPLE_CORPUS_DIR else SAMPLE_REFERENCE_DIR)
        print(path, pq.read_metadata(path).num_rows)
        return
    for path in build(args.out_dir, args.shards):
        print(path, pq.read_metadata(path).num_rows)


if __name__ == "__main__":
    main()
