"""Byte-level BPE word encoders over the exact vocabulary of a trained HF ``tokenizers`` BPE (pure Python).

The shared machinery a tokenizer paper builds on (LBPE's encoder in ``replicate.papers.lbpe`` and Scaffold-BPE's
in ``replicate.tokenization.scaffold`` subclass it):

* ``bpe_encode_word``: standard rank-based BPE on one word's unit list (LBPE spec Sec. 3.3), the reference loop;
* ``WordEncoder``: vocabulary tables (V, merge ranks, token byte lengths), HF-identical word splitting, the
  per-word cache and decoding; a subclass implements ``_encode_units(word)``;
* ``BPEEncoder``: rank BPE with the word cache, equal to HF's Rust encoder's ids (tested).

Notation: units are the 256 byte symbols of the GPT-2 ByteLevel map, so a token string of length L covers L bytes;
``len(t)`` is measured on the mapped string, which equals bytes. m = max len(t), t in V. rank(t): index of the
merge that created t; base units rank before every merge.

Speed (pure Python; measured on the 38 plays, 5.3 MB, vocab 4,096, on the shared 2-core CPU): word splitting
dominates. HF's own ``pre_tokenize_str`` costs about as much as HF's whole Rust ``encode``, so words are split with
the same GPT-2 regex in the ``regex`` module wherever that is proven identical to HF's split
(``FAST_PRETOKENIZE_RANGES``; ``pretokenizer="hf"`` forces HF's), the cache is keyed by the raw word, and the
byte map runs only on a miss.

Scope: encoding only. Units absent from V (a BPE trained without ``initial_alphabet=ByteLevel.alphabet()``)
are handled as HF does (``unk_token`` if the model has one, else dropped), so the byte round trip is only
guaranteed when all 256 byte units are in V (``covers_all_bytes``) and the pre-tokenizer adds no prefix space.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

from tokenizers import Tokenizer

try:  # the `regex` module (a `transformers` dependency) runs the GPT-2 split pattern with \p{L} / \p{N}
    import regex as _regex
except ImportError:  # pragma: no cover - then every text goes through HF's own pre-tokenizer
    _regex = None

__all__ = [
    "FAST_PRETOKENIZE_RANGES",
    "GPT2_SPLIT_PATTERN",
    "PRETOKENIZERS",
    "BPEEncoder",
    "WordEncoder",
    "bpe_encode_word",
    "bytes_to_unicode",
    "merge_pair",
]

PRETOKENIZERS = ("auto", "hf")  # word splitting: "auto" (default) = fast exact path where proven, else "hf"


# The ByteLevel pre-tokenizer's split regex (HF `tokenizers`, GPT-2), for the fast path of `WordEncoder.encode`.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The fast path runs only on text whose characters all lie in these ranges. HF's Rust regex (Oniguruma) and the
# `regex` module ship different Unicode versions: a scan of every code point found the first disagreement of
# their letter/number classes at U+0558; Latin, Greek, Cyrillic (below it) and General Punctuation (U+2000-206F:
# dashes, curly quotes) split identically. The ranges are re-checked code point by code point in the tests.
FAST_PRETOKENIZE_RANGES = ((0x0000, 0x0557), (0x2000, 0x206F))


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 / HF ``ByteLevel`` map from the 256 byte values to printable unicode characters."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# ---------------------------------------------------------------------------------------------------------------
# Reference function (LBPE spec Sec. 3.3): a plain loop over one word's unit list, no cache, no tricks.
# ---------------------------------------------------------------------------------------------------------------


def bpe_encode_word(units: Sequence[str], merge_ranks: Mapping[tuple[str, str], int]) -> list[str]:
    """Standard rank-based BPE on one word (Sec. 3.3), the baseline.

    1. S = units.  2. Repeat: among adjacent pairs (S[j], S[j+1]) in the merge table pick the smallest rank;
    merge every occurrence of that pair left to right (GPT-2 / HF / tiktoken); stop when no pair qualifies.
    """
    s = list(units)  # step 1: S = w split into unit tokens
    while len(s) > 1:
        # step 2: the adjacent pair with the smallest merge rank
        best, best_rank = None, None
        for j in range(len(s) - 1):
            r = merge_ranks.get((s[j], s[j + 1]))
            if r is not None and (best_rank is None or r < best_rank):
                best, best_rank = (s[j], s[j + 1]), r
        if best is None:  # no pair qualifies: stop
            break
        s = merge_pair(s, *best)  # merge all occurrences of that pair, left to right
    return s


def merge_pair(s: list[str], a: str, b: str) -> list[str]:
    """Merge every non-overlapping adjacent occurrence of the pair (a, b), left to right (rank-BPE's step)."""
    merged, j, n = [], 0, len(s)
    while j < n:
        if j + 1 < n and s[j] == a and s[j + 1] == b:
            merged.append(a + b)
            j += 2
        else:
            merged.append(s[j])
            j += 1
    return merged


# ---------------------------------------------------------------------------------------------------------------
# Word-cached encoders over an HF `tokenizers.Tokenizer`
# ---------------------------------------------------------------------------------------------------------------


def _has_byte_level(node) -> bool:
    if not isinstance(node, dict):
        return False
    if node.get("type") == "ByteLevel":
        return True
    return any(_has_byte_level(p) for p in node.get("pretokenizers", []) or [])


class WordEncoder:
    """Shared machinery: vocabulary tables, HF-identical word splitting, the per-word cache, decoding.

    Subclasses implement ``_encode_units(word) -> list[str]`` for one run of in-vocabulary units.
    ``encode`` splits on the tokenizer's added tokens, applies its normaliser and its own pre-tokenizer
    (``pre_tokenize_str``), then encodes each word once and caches its ids (``cache_size`` words at most;
    ``None`` = unbounded, ``0`` = no cache).
    """

    name = "word"

    def __init__(self, tokenizer: Tokenizer, cache_size: int | None = None, pretokenizer: str = "auto"):
        spec = json.loads(tokenizer.to_str())
        model = spec["model"]
        if model.get("type") != "BPE":
            raise ValueError(f"need a BPE model, got {model.get('type')!r}")
        if not _has_byte_level(spec.get("pre_tokenizer")):
            raise ValueError("need a byte-level BPE (a ByteLevel pre-tokenizer)")
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                raise ValueError(f"BPE option {key}={model[key]!r} is not supported (not byte-level GPT-2 style)")
        if model.get("dropout"):
            raise ValueError("BPE dropout is stochastic; build the tokenizer with dropout=None")
        self.tokenizer = tokenizer
        if pretokenizer not in PRETOKENIZERS:
            raise ValueError(f"pretokenizer must be one of {PRETOKENIZERS}, got {pretokenizer!r}")
        self._pre = tokenizer.pre_tokenizer
        self._norm = tokenizer.normalizer
        # Fast word splitting (same words as HF's, proven by test): only for a plain ByteLevel pre-tokenizer with
        # the GPT-2 regex and no normaliser, and only on text inside FAST_PRETOKENIZE_RANGES; HF's otherwise.
        pre_spec = spec.get("pre_tokenizer") or {}
        self._fast_split = None
        self._prefix_space = bool(pre_spec.get("add_prefix_space"))
        if (
            pretokenizer == "auto"
            and _regex is not None
            and pre_spec.get("type") == "ByteLevel"
            and pre_spec.get("use_regex", True)
            and spec.get("normalizer") is None
        ):
            self._fast_split = _regex.compile(GPT2_SPLIT_PATTERN).findall
            inside = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in FAST_PRETOKENIZE_RANGES)
            self._unsafe_char = _regex.compile(f"[^{inside}]").search  # a character outside the proven ranges
        self.pretokenizer = "auto" if self._fast_split is not None else "hf"
        self._byte_table = {b: u for b, u in bytes_to_unicode().items()}

        # added tokens (special or not): split on them first, as HF does; they are not part of V
        self.added: dict[str, int] = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
        self._added_re = (
            re.compile("|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True)))
            if self.added
            else None
        )
        model_vocab: dict[str, int] = model["vocab"]
        # V: the model vocabulary without added/special tokens (Sec. 3.1)
        self.vocab: dict[str, int] = {t: i for t, i in model_vocab.items() if t not in self.added}
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        # rank(t): merge index; base units before every merge; other multi-unit entries after all merges
        self.merge_ranks: dict[tuple[str, str], int] = {}
        for r, (a, b) in enumerate(merges):
            self.merge_ranks.setdefault((a, b), r)
        rank: dict[str, int] = {}
        for r, (a, b) in enumerate(merges):
            rank.setdefault(a + b, r)
        self.rank: dict[str, int] = {
            t: (-1 if len(t) == 1 else rank.get(t, len(merges) + i)) for t, i in self.vocab.items()
        }
        self.max_len = max(len(t) for t in self.vocab)  # m
        self.ignore_merges = bool(model.get("ignore_merges"))
        self.unk_token = model.get("unk_token")
        self.unk_id = model_vocab.get(self.unk_token) if self.unk_token is not None else None
        self.fuse_unk = bool(model.get("fuse_unk"))

        size = max(max(model_vocab.values()), max(self.added.values(), default=-1)) + 1
        self.id_to_token: list[str | None] = [None] * size
        for t, i in model_vocab.items():
            self.id_to_token[i] = t
        for t, i in self.added.items():
            self.id_to_token[i] = t
        b2u = bytes_to_unicode()
        self._u2b = {u: b for b, u in b2u.items()}
        self.byte_units = set(b2u.values())
        self.covers_all_bytes = self.byte_units <= set(self.vocab)
        # id -> bytes it decodes to (added tokens: their utf-8 text, as HF's ByteLevel decoder does)
        self.id_bytes: list[bytes] = [b""] * size
        for i, t in enumerate(self.id_to_token):
            if t is None:
                continue
            if t in self.added or not all(c in self._u2b for c in t):
                self.id_bytes[i] = t.encode("utf-8")
            else:
                self.id_bytes[i] = bytes(self._u2b[c] for c in t)
        # len(t) in bytes for every id (the token length of the analyses)
        self.token_lengths: list[int] = [len(b) for b in self.id_bytes]
        self.special_ids = frozenset(self.added.values())

        self.cache_size = cache_size
        self._cache: dict[str, tuple[int, ...]] = {}  # ByteLevel-mapped word -> ids
        self._raw_cache: dict[str, tuple[int, ...]] = {}  # raw (unmapped) word -> ids, fast path only

    # -- per word ---------------------------------------------------------------------------------------------
    def _encode_units(self, word: str) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_word(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-token (a ByteLevel-mapped string).

        Units not in V (only when V lacks some of the 256 byte units) split the word into runs encoded on their
        own; each such unit becomes ``unk_token`` (fused if ``fuse_unk``) or is dropped, as HF does. LBPE never
        lets a token span a dropped unit (HF's BPE may: see ``BPEEncoder.encode_word``)."""
        vocab = self.vocab
        if self.ignore_merges and word in vocab:
            return (vocab[word],)
        if all(c in vocab for c in word):
            return tuple(vocab[t] for t in self._encode_units(word))
        ids: list[int] = []
        run: list[str] = []
        last_unk = False
        for c in [*word, None]:  # None flushes the last run
            if c is not None and c in vocab:
                run.append(c)
                continue
            if run:
                ids.extend(vocab[t] for t in self._encode_units("".join(run)))
                run, last_unk = [], False
            if c is None:
                break
            if self.unk_id is not None and not (self.fuse_unk and last_unk):
                ids.append(self.unk_id)
            last_unk = True
        return tuple(ids)

    def tokenize_word(self, word: str) -> list[str]:
        return [self.id_to_token[i] for i in self.encode_word(word)]

    # -- text ---------------------------------------------------------------------------------------------------
    def _segments(self, text: str) -> list[str | int]:
        """Split on the tokenizer's added tokens (longest first), as HF does before normalising: str | id."""
        if self._added_re is None:
            return [text]
        segments: list[str | int] = []
        pos = 0
        for mt in self._added_re.finditer(text):
            if mt.start() > pos:
                segments.append(text[pos : mt.start()])
            segments.append(self.added[mt.group()])
            pos = mt.end()
        if pos < len(text):
            segments.append(text[pos:])
        return segments

    def words(self, text: str) -> list[str | int]:
        """HF's word split: added tokens (as ids), then HF's normaliser and ``pre_tokenize_str`` (mapped words)."""
        pieces: list[str | int] = []
        for seg in self._segments(text):
            if isinstance(seg, int):
                pieces.append(seg)
                continue
            if self._norm is not None:
                seg = self._norm.normalize_str(seg)
            if self._pre is not None:
                pieces.extend(w for w, _ in self._pre.pre_tokenize_str(seg))
            elif seg:
                pieces.append(seg)
        return pieces

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS; HF's ``encode(text, add_special_tokens=False)``)."""
        out: list[int] = []
        extend, append = out.extend, out.append
        limit = self.cache_size
        fast = self._fast_split
        for seg in self._segments(text):
            if isinstance(seg, int):
                append(seg)
                continue
            if fast is not None and self._unsafe_char(seg) is None:
                # fast path: split raw text with the same regex, cache by the raw word, map bytes only on a miss
                if self._prefix_space and seg and seg[0] != " ":
                    seg = " " + seg  # ByteLevel(add_prefix_space=True) prepends a space unless one is there
                cache = self._raw_cache
                get, table = cache.get, self._byte_table
                for w in fast(seg):
                    ids = get(w)
                    if ids is None:
                        ids = self.encode_word(w.encode("utf-8").decode("latin-1").translate(table))
                        if limit is None or len(cache) < limit:
                            cache[w] = ids
                    extend(ids)
                continue
            if self._norm is not None:
                seg = self._norm.normalize_str(seg)
            if self._pre is None:
                words = [seg] if seg else []
            else:
                words = [w for w, _ in self._pre.pre_tokenize_str(seg)]
            cache = self._cache
            get = cache.get
            for w in words:
                ids = get(w)
                if ids is None:
                    ids = self.encode_word(w)
                    if limit is None or len(cache) < limit:
                        cache[w] = ids
                extend(ids)
        return out

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def tokenize(self, text: str) -> list[str]:
        return [self.id_to_token[i] for i in self.encode(text)]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        idb = self.id_bytes
        return b"".join(idb[i] for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; invalid UTF-8 is replaced, as HF's ByteLevel decoder does."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def clear_cache(self) -> None:
        self._cache.clear()
        self._raw_cache.clear()

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.name!r}, |V|={len(self.vocab)}, m={self.max_len})"


class BPEEncoder(WordEncoder):
    """Pure-Python rank BPE (Sec. 3.3) with a word cache: the baseline, equal to HF's Rust encoder's ids."""

    name = "bpe"

    def encode_word(self, word: str) -> tuple[int, ...]:
        """As HF's BPE: a unit not in V becomes ``unk_token`` (fused if ``fuse_unk``) or is dropped, and merges
        then run over the remaining symbols (so units around a dropped one can merge, as in HF)."""
        vocab = self.vocab
        if self.ignore_merges and word in vocab:
            return (vocab[word],)
        if all(c in vocab for c in word):
            return tuple(vocab[t] for t in self._encode_units(word))
        syms: list[str] = []
        last_unk = False
        for c in word:
            if c in vocab:
                syms.append(c)
                last_unk = False
            elif self.unk_token is not None:
                if not (self.fuse_unk and last_unk):
                    syms.append(self.unk_token)
                last_unk = True
        unk, unk_id = self.unk_token, self.unk_id
        return tuple(unk_id if t == unk else vocab[t] for t in self._encode_units(syms))

    def _encode_units(self, word: Sequence[str], counter: list | None = None) -> list[str]:
        """The naive rank BPE loop: each pass rescans every adjacent pair and merges the best-ranked one.
        ``counter`` (a one-element list): adds the pair lookups done, one per pair per pass (the loop's work)."""
        ranks = self.merge_ranks
        s = list(word)
        while len(s) > 1:
            if counter is not None:
                counter[0] += len(s) - 1
            best, best_rank = None, None
            for pair in zip(s, s[1:]):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = pair, r
            if best is None:
                break
            s = merge_pair(s, *best)
        return s
