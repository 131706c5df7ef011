"""Real corpora that need no download, for the benches.

- `sample`: the docstrings of the built-in sample corpus.
- `python-docs`: the reStructuredText sources of the Python manual from Debian's `python3-doc`
  package (`apt-get install python3-doc`, under /usr/share/doc/python3*/html/_sources/).
  When the package is absent, this corpus is skipped with a message.
- `kernel-docs` (fidelity bench only): the reStructuredText sources of the Linux kernel's
  documentation from Debian's `linux-doc` package (`apt-get install linux-doc`), gzipped under
  /usr/share/doc/linux-doc/Documentation/. About 60k prose paragraphs: the training-set size
  a curation team typically has teacher vectors for.

For the speed benches, texts are joined into one stream and cut at WordPiece token boundaries,
so that every document has the same number of tokens (newlines become spaces: fastText reads
one line). The fidelity bench reads the manuals paragraph by paragraph instead.
"""

from __future__ import annotations

import glob
import gzip
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
from tokenizers import Tokenizer

from embedding_assets.sample_corpus import SAMPLE_CORPUS_DIR

LENGTHS = {"short": 15, "medium": 500, "long": 2000}
PYTHON_DOCS_GLOB = "/usr/share/doc/python3*/html/_sources/**/*.rst.txt"
KERNEL_DOCS_ROOT = "/usr/share/doc/linux-doc/Documentation/"


def sample_texts() -> list[str]:
    return [t for path in sorted(SAMPLE_CORPUS_DIR.glob("*.parquet")) for t in pq.read_table(path, columns=["text"])["text"].to_pylist()]


def sample_labels() -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for path in sorted(SAMPLE_CORPUS_DIR.glob("*.parquet")):
        table = pq.read_table(path, columns=["text", "label"])
        texts += table["text"].to_pylist()
        labels += table["label"].to_pylist()
    return texts, labels


def python_docs_files() -> list[Path]:
    """The manual's sources, once each: Debian links the same tree under several package names."""
    by_target = {}
    for path in sorted(glob.glob(PYTHON_DOCS_GLOB, recursive=True)):
        by_target.setdefault(os.path.realpath(path), Path(path))
    return sorted(by_target.values())


def kernel_docs_files() -> list[Path]:
    """The kernel's documentation sources in English (the translations are left out)."""
    files = sorted(Path(p) for p in glob.glob(KERNEL_DOCS_ROOT + "**/*.rst.gz", recursive=True))
    return [p for p in files if not p.as_posix().startswith(KERNEL_DOCS_ROOT + "translations/")]


def read_source(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            return f.read()
    return path.read_text(encoding="utf-8", errors="replace")


def python_docs_texts() -> list[str] | None:
    files = python_docs_files()
    if not files:
        return None
    paragraphs = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            paragraphs += [p.strip() for p in f.read().split("\n\n") if p.strip()]
    return paragraphs


def cut(tokenizer: Tokenizer, texts: list[str], tokens_per_doc: int, count: int) -> list[str]:
    """`count` documents of `tokens_per_doc` tokens, cut from the texts taken in order (cycled if short)."""
    docs: list[str] = []
    for piece in _pieces(texts):
        enc = tokenizer.encode(piece, add_special_tokens=False)
        offsets = enc.offsets
        for start in range(0, len(offsets) - tokens_per_doc + 1, tokens_per_doc):
            docs.append(piece[offsets[start][0] : offsets[start + tokens_per_doc - 1][1]])
            if len(docs) == count:
                return docs
    raise ValueError("the corpus is empty")


def _pieces(texts: list[str], chars: int = 200_000) -> Iterator[str]:
    """The texts joined into chunks of about `chars` characters, newlines as spaces, forever."""
    while True:
        buffer, size = [], 0
        for text in texts:
            buffer.append(" ".join(text.split()))
            size += len(buffer[-1])
            if size >= chars:
                yield " ".join(buffer)
                buffer, size = [], 0
        if buffer:
            yield " ".join(buffer)
        if not texts:
            return


# Unlabelled corpora from Debian documentation packages, for bench.curation: each is several
# manuals mixed, one of them the target; its reference set comes from another package on the
# same subject, as a user brings a handful of examples from elsewhere.
HTML_MANUALS = {
    "django": ("python-django-doc", "/usr/share/doc/python-django-doc/html/**/*.html", ("/_modules/", "/genindex", "/py-modindex", "/search.html")),
    "zsh": ("zsh-doc", "/usr/share/doc/zsh-doc/html/*.html", ("/index", "Concept-Index", "Variables-Index", "Options-Index", "Functions-Index", "Editor-Functions-Index", "Style-and-Tag-Index")),
    "bash": ("bash-doc", "/usr/share/doc/bash-doc/bashref.html", ()),
    "apache": ("apache2-doc", "/usr/share/doc/apache2-doc/manual/en/**/*.html", ()),
}
RST_MANUALS = {
    "flask": ("python-flask-doc", "/usr/share/doc/python-flask-doc/html/_sources/**/*.rst.txt"),
    "cmake": ("cmake-doc", "/usr/share/doc/cmake-doc/html/_sources/**/*.txt"),
}
BLOCK_TAGS = {"p", "li", "dd", "dt", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "td", "th", "div", "blockquote", "table", "tr", "ul", "ol", "dl", "br", "hr", "section"}


def html_paragraphs(html: str) -> list[str]:
    """The text of an HTML page cut at block elements (scripts, styles and navigation left out)."""
    from html.parser import HTMLParser

    class Blocks(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.blocks, self.current, self.skip = [], [], 0

        def flush(self):
            text = " ".join("".join(self.current).split())
            if text:
                self.blocks.append(text)
            self.current = []

        def handle_starttag(self, tag, attrs):
            if tag in ("script", "style", "nav", "head", "footer"):
                self.skip += 1
            elif tag in BLOCK_TAGS:
                self.flush()

        def handle_endtag(self, tag):
            if tag in ("script", "style", "nav", "head", "footer"):
                self.skip = max(0, self.skip - 1)
            elif tag in BLOCK_TAGS:
                self.flush()

        def handle_data(self, data):
            if not self.skip:
                self.current.append(data)

    parser = Blocks()
    parser.feed(html)
    parser.flush()
    return parser.blocks


def manual_paragraphs(name: str, min_words: int = 12) -> list[str] | None:
    """Prose paragraphs of one Debian manual (distinct, in file order); None when its package is absent."""
    if name in HTML_MANUALS:
        _, pattern, skip = HTML_MANUALS[name]
        files = [p for p in sorted(glob.glob(pattern, recursive=True)) if not any(s in p for s in skip)]
        blocks = [b for path in files for b in html_paragraphs(Path(path).read_text(encoding="utf-8", errors="replace"))]
    else:
        files = sorted(glob.glob(RST_MANUALS[name][1], recursive=True))
        blocks = []
        for path in files:
            for paragraph in Path(path).read_text(encoding="utf-8", errors="replace").split("\n\n"):
                if not paragraph.startswith(("    ", "\t")):
                    blocks.append(" ".join(paragraph.split()))
    if not files:
        return None
    seen, out = set(), []
    for text in blocks:
        if len(text.split()) < min_words or text.startswith(("..", ">>>", "$ ", "::", "|", "+-", "==", "--", "#")) or text in seen:
            continue
        seen.add(text)
        out.append(text)
    return out


def manual_package(name: str) -> str:
    return (HTML_MANUALS.get(name) or RST_MANUALS[name])[0]
