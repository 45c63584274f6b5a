"""Scaffold-BPE (Lian et al., AAAI 2025, arXiv 2404.17808): BPE training that demotes low-frequency "scaffold"
tokens, and encoders that never emit them.

Plain BPE keeps every token it ever merged, even one whose occurrences were almost all absorbed into longer tokens
(after "ab" + "c" -> "abc", a standalone "ab" may become rare). Scaffold-BPE flags such tokens during training and
removes them from the encoder's output. The project's specification, implemented here:

**Training** (``train_scaffold_bpe``, core ``train_word_counts``). Units are the 256 ByteLevel characters.

1. Word counts c(w): every document pre-tokenized with the tokenizer's own ByteLevel pre-tokenizer (HF's
   ``pre_tokenize_str``, what HF's trainer sees; ``count_words``).
2. freq(t) = sum_w c(w) * #occurrences of t in the current segmentation of w; freq(x, y) likewise for adjacent
   pairs. Each step picks the pair (a, b) of largest freq, ties broken as HF ``tokenizers``' BpeTrainer does (max-
   heap on count, then the smaller (id_a, id_b) first; ids: special tokens, then the 256 characters sorted by code
   point, then new tokens in creation order), and merges its occurrences left to right, non-overlapping, into
   t = a + b in every word (HF's ``Word::merge``). Pair counts are updated incrementally (pair -> words index).
3. After the merge, for each of a, b that is a merged token (never a single unit) and not already flagged: if
   freq(x) < freq(next best pair) (strictly; 0 when no pair is left), x is flagged as a scaffold. It stays in the
   vocabulary and its merges stay valid (later merges may use it).
4. Un-flagging, option ``unflag``.                                                      [UNCONFIRMED, ours]
   The spec (``lbpe.md`` Sec. 4 item 2) describes only flagging and demolishing, not whether a flag can be removed.
   Without un-flagging, tokens flagged early stay scaffolds though they end up frequent (full plays, 4,096: "Ġup"
   stays a scaffold with 1,170 occurrences at the end, while the last merged pair has 40).

   * ``unflag="requeue"`` (default): our reading of the Scaffold-BPE paper (as recalled, not checked against its
     text): a flagged token goes into the same priority queue as the candidate pairs, keyed by its own freq. Each
     step looks at the best pair (count c; c = 0 when no pair is left) and at the flagged token of largest freq f
     (ties to the smaller id, i.e. the earlier created). If f > c (STRICTLY: at f == c the pair wins and is
     merged), that token is un-flagged and counts again as a normal token toward the budget; nothing is merged at
     that step, and the next step looks again. Otherwise the pair is merged (steps 2-3). A token can be flagged
     again when a later merge of it drops its freq below the next best pair. Once no pair is left, every flagged
     token with freq > 0 is un-flagged (most frequent first) while the budget allows; one with freq 0 stays.
     Invariant: a pair is merged only when no flagged token is strictly more frequent; a flag is only added right
     after a merge, below the next pair's count (<= the merged pair's); and the freq of an existing token never
     grows (no token is created twice, see below). So at the end every scaffold x has freq(x) <= c_last, the count
     of the last merged pair when it was merged (equality possible: it happens on the plays at 4,096).
     Implementation: a second lazy max-heap of (freq, id) over the flagged tokens (a stale entry is re-pushed with
     the current freq, one of an un-flagged token is dropped), so a step costs O(log n) amortised.
   * ``unflag="never"``: the spec's literal reading: a flag is never removed (the behaviour before the option,
     output unchanged).
5. [ours] Budget: training stops as soon as the number of *non-scaffold* tokens (specials + 256 units + unflagged
   merged tokens) reaches ``vocab_size``, checked before every step: after a merge and its flags (a merge adds one
   token, each flag removes one), or after an un-flag (adds one, so an un-flag can end training), or when nothing
   is left to do (no pair and, with ``"requeue"``, no flagged token with freq > 0). So Scaffold-BPE has as many
   usable tokens as a plain BPE of the same size; scaffolds are extra entries. ``scaffold=False`` is plain BPE
   (stops when the whole vocabulary has ``vocab_size`` entries; ``unflag`` has no effect), equal to the project's
   ``train_bpe`` (HF ``BpeTrainer``), merges and ids.

Since flagging and un-flagging never change the segmentation during training, the merge sequence of Scaffold-BPE
(either option) equals that of plain BPE trained to ``vocab_size + |scaffolds|`` tokens (tested against HF).

**Equality with HF.** The merges, ids and serialised tokenizer of ``scaffold=False`` equal HF's byte for byte (tested
on the plays and on random small corpora). HF's trainer differs from the textbook bookkeeping used here in two ways:
each queue entry carries its own set of words (those where the pair occurred when the entry was pushed), and a merged
pair's own occurrences are never subtracted from its count. Both only matter once some token is created a second
time by a different pair (e.g. "a" + "bc" after "ab" + "c"), which cannot happen when every unit is present from the
start: a span that ends up as two adjacent tokens has had token boundaries at both ends ever since, so within it the
merges act as on the span alone and it was segmented as the first creating pair, hence merged, at that step.

**Output**: ``ScaffoldBPE``: an HF ``tokenizers.Tokenizer`` (BPE over the full vocabulary, ByteLevel pre-tokenizer and
decoder, ``<|endoftext|>`` at id 0, exactly as ``train_bpe``), the scaffold set and the merge that created each
token. [ours] Ids: special, units, then the non-scaffold merged tokens in creation order, then the scaffolds in
creation order, so the usable ids are exactly ``range(vocab_size)`` (an embedding of ``vocab_size`` rows suffices)
and scaffold ids are ``>= vocab_size``. The HF tokenizer's own ``encode`` is rank BPE over the full vocabulary and
may emit scaffold ids: encode Scaffold-BPE with the encoders below. ``ScaffoldBPE.unflag`` (and its JSON) records
the ``unflag`` option it was trained with (None for plain BPE and hand-built vocabularies).

**Encoding** (word-cached, on ``replicate.tokenization.words``' machinery): ``ScaffoldBPEEncoder``
("scaffold_bpe"): rank BPE over the full vocabulary (``BPEEncoder``, HF's ids), then every scaffold in the output is
replaced by its two components, recursively, until none is left (``demolish``). LBPE on a Scaffold-BPE vocabulary
(the LBPE paper's Table 4) is LBPE's: ``replicate.papers.lbpe.ScaffoldLBPEEncoder``.

Reference functions (plain loops, tests only): ``reference_train`` (recounts every pair and every token's freq
every step) and ``demolish`` composed with ``words.bpe_encode_word`` (or LBPE's ``lbpe_encode_word``).
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from replicate.tokenization.words import (
    FAST_PRETOKENIZE_RANGES,
    GPT2_SPLIT_PATTERN,
    BPEEncoder,
    bytes_to_unicode,
    merge_pair,
)

try:  # the GPT-2 split with \p{L} / \p{N}; identical to HF's inside FAST_PRETOKENIZE_RANGES (tested in the LBPE encoder's tests)
    import regex as _regex
except ImportError:  # pragma: no cover - then every text goes through HF's own pre-tokenizer
    _regex = None

__all__ = [
    "UNFLAGS",
    "ScaffoldBPE",
    "ScaffoldBPEEncoder",
    "build_scaffold_bpe",
    "count_words",
    "demolish",
    "demolisher",
    "reference_train",
    "train_scaffold_bpe",
    "train_word_counts",
]

EOS = "<|endoftext|>"  # the special token of replicate.data.tokenizer.train_bpe, id 0
CACHE_VERSION = "sbpe2"  # bump when the trainer's output changes (sbpe2: the unflag option)
UNFLAGS = ("requeue", "never")  # can a scaffold be un-flagged: the two readings, "requeue" default [UNCONFIRMED]
_K = 1 << 21  # pair (x, y) -> x * _K + y: ordering the ints orders the pairs lexicographically, as HF's (u32, u32)


# ---------------------------------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ScaffoldBPE:
    """A trained Scaffold-BPE: the HF tokenizer over the full vocabulary, its scaffold tokens, for every merged
    token the pair (left, right) whose merge created it (the first such merge, if a token was created twice), and
    the ``unflag`` option it was trained with (None: plain BPE or a hand-built vocabulary)."""

    tokenizer: Tokenizer
    scaffolds: frozenset[str]
    components: dict[str, tuple[str, str]]
    unflag: str | None = None

    @cached_property
    def merges(self) -> list[tuple[str, str]]:
        """The model's merges in rank order (HF's serialisation)."""
        model = json.loads(self.tokenizer.to_str())["model"]
        return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]

    @property
    def vocab_size(self) -> int:
        """Usable (non-scaffold) tokens, special token included: the ``vocab_size`` it was trained for."""
        return self.tokenizer.get_vocab_size() - len(self.scaffolds)

    @property
    def scaffold_ids(self) -> frozenset[int]:
        return frozenset(self.tokenizer.token_to_id(t) for t in self.scaffolds)

    def demolish(self, tokens: Iterable[str]) -> list[str]:
        return demolish(tokens, self.scaffolds, self.components)

    def to_json(self) -> dict:
        return {
            "version": CACHE_VERSION,
            "tokenizer": json.loads(self.tokenizer.to_str()),
            "scaffolds": sorted(self.scaffolds),
            "components": {t: list(c) for t, c in self.components.items()},
            "unflag": self.unflag,
        }

    @classmethod
    def from_json(cls, obj: dict) -> ScaffoldBPE:
        """Inverse of ``to_json``; raises ValueError on anything inconsistent (a corrupt cache file)."""
        if obj.get("version") != CACHE_VERSION:
            raise ValueError(f"version {obj.get('version')!r} != {CACHE_VERSION!r}")
        tok = Tokenizer.from_str(json.dumps(obj["tokenizer"]))
        vocab = tok.get_vocab()
        scaffolds = frozenset(obj["scaffolds"])
        components = {t: (a, b) for t, (a, b) in obj["components"].items()}
        if not all(t in vocab for t in scaffolds) or not all(
            t in vocab and a in vocab and b in vocab and a + b == t for t, (a, b) in components.items()
        ):
            raise ValueError("scaffolds / components not consistent with the vocabulary")
        if not scaffolds <= components.keys():
            raise ValueError("a scaffold without components")
        unflag = obj.get("unflag")
        if unflag is not None and unflag not in UNFLAGS:
            raise ValueError(f"unflag {unflag!r} not in {UNFLAGS}")
        return cls(tok, scaffolds, components, unflag)


def demolish(
    tokens: Iterable[str], scaffolds: frozenset[str] | set[str], components: Mapping[str, tuple[str, str]]
) -> list[str]:
    """Replace every scaffold token by its two components, recursively, until no scaffold is left (reference)."""
    out: list[str] = []
    for t in tokens:
        if t in scaffolds:
            out.extend(demolish(components[t], scaffolds, components))
        else:
            out.append(t)
    return out


def _alphabet() -> list[str]:
    return sorted(bytes_to_unicode().values())  # HF's compute_alphabet: sorted by code point


def build_scaffold_bpe(
    merges: Sequence[tuple[str, str]],
    scaffolds: Iterable[str] = (),
    special_tokens: Sequence[str] = (EOS,),
    unflag: str | None = None,
) -> ScaffoldBPE:
    """A ``ScaffoldBPE`` from merges in training order and a scaffold set (also for hand-built test vocabularies).
    Ids: specials, 256 units by code point, unflagged merged tokens, then scaffolds (each group in creation order).
    A repeated pair keeps the rank of its last record, as HF's trainer would (never happens in byte-level training)."""
    scaffolds = frozenset(scaffolds)
    base = [*special_tokens, *_alphabet()]
    created: list[str] = []
    components: dict[str, tuple[str, str]] = {}
    known = set(base)
    for a, b in merges:
        t = a + b
        if t not in known:
            known.add(t)
            created.append(t)
            components[t] = (a, b)
    if not scaffolds <= components.keys():
        raise ValueError(f"scaffolds must be merged tokens: {sorted(scaffolds - components.keys())[:5]}")
    order = [*base, *(t for t in created if t not in scaffolds), *(t for t in created if t in scaffolds)]
    vocab = {t: i for i, t in enumerate(order)}
    last: dict[tuple[str, str], int] = {}
    for r, m in enumerate(merges):
        last[tuple(m)] = r
    model_merges = sorted(last, key=last.__getitem__)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=model_merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if special_tokens:
        tok.add_special_tokens(list(special_tokens))
    return ScaffoldBPE(tok, scaffolds, components, unflag)


# ---------------------------------------------------------------------------------------------------------------
# Word counts (step 1)
# ---------------------------------------------------------------------------------------------------------------


def count_words(texts: Iterable[str], pretokenizer: str = "auto") -> Counter[str]:
    """c(w) over ByteLevel-mapped words, as HF's trainer counts them: each text through ``ByteLevel(
    add_prefix_space=False).pre_tokenize_str`` (no split on special tokens: HF's trainer does not split either).

    ``pretokenizer="auto"`` splits text whose characters all lie in ``FAST_PRETOKENIZE_RANGES`` with the same GPT-2
    regex in the ``regex`` module (proven identical there) and maps each distinct word once; ``"hf"`` always HF's."""
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    fast = _regex is not None and pretokenizer == "auto"
    if fast:
        split = _regex.compile(GPT2_SPLIT_PATTERN).findall
        inside = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in FAST_PRETOKENIZE_RANGES)
        unsafe = _regex.compile(f"[^{inside}]").search
    raw: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for text in texts:
        if fast and unsafe(text) is None:
            raw.update(split(text))
        else:
            counts.update(w for w, _ in pre.pre_tokenize_str(text))
    table = bytes_to_unicode()
    for w, c in raw.items():
        counts[w.encode("utf-8").decode("latin-1").translate(table)] += c
    return counts


# ---------------------------------------------------------------------------------------------------------------
# Training (steps 2-4)
# ---------------------------------------------------------------------------------------------------------------


def train_word_counts(
    word_counts: Mapping[str, int],
    vocab_size: int,
    *,
    scaffold: bool = True,
    special_tokens: Sequence[str] = (EOS,),
    unflag: str = "requeue",
) -> ScaffoldBPE:
    """Scaffold-BPE (or plain BPE with ``scaffold=False``) on ByteLevel-mapped word counts; no cache.
    ``unflag``: ``"requeue"`` (default) | ``"never"``, see the module docstring.

    Pair counts live in a dict updated per merged occurrence (the neighbour changes of HF's ``Word::merge`` plus the
    pair's own), with an index pair -> words. A lazy max-heap of (count, pair) as HF's: a popped entry whose count is
    stale is pushed back with the current count; the first popped with a current count is the most frequent pair,
    ties to the smaller (id_a, id_b). After each merge the heap's next valid top gives the scaffold threshold.
    With ``"requeue"`` a second lazy max-heap of (freq, id) holds the flagged tokens (see the module docstring).
    """
    _check_unflag(unflag)
    merges, flagged, id_to_tok = _train(word_counts, vocab_size, scaffold, special_tokens, unflag)
    return build_scaffold_bpe(
        [(id_to_tok[a], id_to_tok[b]) for a, b, _ in merges],
        (id_to_tok[i] for i in flagged),
        special_tokens,
        unflag=unflag if scaffold else None,
    )


def _check_unflag(unflag: str) -> None:
    if unflag not in UNFLAGS:
        raise ValueError(f"unflag must be one of {UNFLAGS}, got {unflag!r}")


def _train(word_counts, vocab_size, scaffold, special_tokens, unflag="requeue"):
    id_to_tok: list[str] = [*special_tokens, *_alphabet()]
    tok_to_id = {t: i for i, t in enumerate(id_to_tok)}
    first_merged = len(id_to_tok)  # ids >= this are merged tokens (the only ones that can be scaffolds)
    words: list[list[int]] = []
    counts: list[int] = []
    for w, c in word_counts.items():
        if c <= 0:
            continue
        try:
            words.append([tok_to_id[ch] for ch in w])
        except KeyError as e:
            raise ValueError(f"word {w!r} holds a character outside the 256 ByteLevel units: {e}") from None
        counts.append(c)
    freq: list[int] = [0] * len(id_to_tok)  # freq(t), exact for merged tokens (units are never flagged)
    pc: dict[int, int] = {}  # pair -> freq(pair)
    where: dict[int, set[int]] = {}  # pair -> words that hold (or once held) it
    for wi, w in enumerate(words):
        n = counts[wi]
        for x, y in zip(w, w[1:]):
            p = x * _K + y
            pc[p] = pc.get(p, 0) + n
            s = where.get(p)
            if s is None:
                where[p] = {wi}
            else:
                s.add(wi)
    heap = [(-c, p) for p, c in pc.items()]  # max count first, then the smaller pair
    heapq.heapify(heap)

    def best() -> tuple[int, int] | None:  # HF's lazy fix-up: the top once its count is current; None when none left
        while heap:
            negc, p = heap[0]
            c = pc[p]
            if -negc == c:
                return heap[0] if c > 0 else None
            if c > 0:
                heapq.heapreplace(heap, (-c, p))
            else:  # HF pushes it back with 0; it could only be popped once nothing is left: same as dropping it
                heapq.heappop(heap)
        return None

    requeue = scaffold and unflag == "requeue"
    fheap: list[tuple[int, int]] = []  # (-freq, id) of flagged tokens; lazy: stale freqs re-pushed, unflagged dropped

    def best_flagged() -> tuple[int, int] | None:  # the flagged token of largest freq (ties: smaller id), or None
        while fheap:
            negf, x = fheap[0]
            if x not in flagged:
                heapq.heappop(fheap)
            elif -negf != freq[x]:  # freq of a flagged token only decreases: the entry is an upper bound
                heapq.heapreplace(fheap, (-freq[x], x))
            else:
                return fheap[0]
        return None

    merges: list[tuple[int, int, int]] = []
    flagged: set[int] = set()
    usable = len(id_to_tok)
    while usable < vocab_size:
        top = best()
        if requeue and fheap:
            ftop = best_flagged()
            if ftop is not None and -ftop[0] > (-top[0] if top is not None else 0):  # strictly more frequent
                heapq.heappop(fheap)
                flagged.discard(ftop[1])
                usable += 1
                continue
        if top is None:
            break
        heapq.heappop(heap)
        p = top[1]
        a, b = divmod(p, _K)
        t_str = id_to_tok[a] + id_to_tok[b]
        t = tok_to_id.get(t_str)
        if t is None:  # always, in byte-level training (see the module docstring); kept for robustness
            t = len(id_to_tok)
            id_to_tok.append(t_str)
            tok_to_id[t_str] = t
            freq.append(0)
            usable += 1
        merges.append((a, b, t))
        gained: dict[int, set[int]] = {}  # pairs that gained occurrences -> those words (HF's where_to_update)
        tK = t * _K
        for wi in where[p]:
            w = words[wi]
            try:
                i = w.index(a)
            except ValueError:
                continue
            L = len(w)
            n = counts[wi]
            new = w[:i]
            occ = 0
            while i < L:
                x = w[i]
                if x == a and i + 1 < L and w[i + 1] == b:  # one occurrence; neighbour changes as HF's Word::merge
                    occ += 1
                    if new:
                        pv = new[-1]
                        pc[pv * _K + a] -= n
                        q = pv * _K + t
                        pc[q] = pc.get(q, 0) + n
                        s = gained.get(q)
                        if s is None:
                            gained[q] = {wi}
                        else:
                            s.add(wi)
                    if i + 2 < L:
                        nx = w[i + 2]
                        pc[b * _K + nx] -= n
                        q = tK + nx
                        pc[q] = pc.get(q, 0) + n
                        s = gained.get(q)
                        if s is None:
                            gained[q] = {wi}
                        else:
                            s.add(wi)
                    new.append(t)
                    i += 2
                else:
                    new.append(x)
                    i += 1
            if occ:
                words[wi] = new
                m = occ * n
                pc[p] -= m
                freq[a] -= m
                freq[b] -= m
                freq[t] += m
        if requeue and t in flagged:  # t created again (never in byte-level training): its freq grew, re-push it
            heapq.heappush(fheap, (-freq[t], t))
        for q, s in gained.items():  # pairs holding t (never p itself: t differs from a and b)
            where.setdefault(q, set()).update(s)
            c = pc[q]
            if c > 0:
                heapq.heappush(heap, (-c, q))
        if scaffold:
            nxt = best()
            cand = -nxt[0] if nxt is not None else 0  # freq of the next pair to merge
            for x in {a, b}:
                if x >= first_merged and x not in flagged and freq[x] < cand:
                    flagged.add(x)
                    usable -= 1
                    if requeue:
                        heapq.heappush(fheap, (-freq[x], x))
    return merges, flagged, id_to_tok


def train_scaffold_bpe(
    docs, vocab_size: int, *, name: str = "corpus", scaffold: bool = True, unflag: str = "requeue"
) -> ScaffoldBPE:
    """Scaffold-BPE with ``vocab_size`` usable tokens trained on ``docs`` (``replicate.data.corpora.Document``s);
    cached under ``runs/cache/tokenizers`` as one JSON file (tokenizer + scaffolds + components + unflag), keyed by
    name, vocabulary size, options, corpus fingerprint and ``CACHE_VERSION``. A corrupt cache file is reported and
    rebuilt. ``unflag`` (``"requeue"`` default | ``"never"``, see the module docstring) is part of the key of a
    Scaffold-BPE file (``{name}-scaffold-{unflag}-v...``); plain BPE (``scaffold=False``) ignores it: one file.
    """
    from replicate.data.corpora import fingerprint
    from replicate.io import atomic_write, discard_corrupt
    from replicate.paths import cache_dir

    if vocab_size < 257:
        raise ValueError(f"vocab_size: must be >= 257 (256 bytes + {EOS}), got {vocab_size}")
    _check_unflag(unflag)
    kind = f"scaffold-{unflag}" if scaffold else "plain"
    recorded = unflag if scaffold else None
    path = cache_dir("tokenizers") / f"{name}-{kind}-v{vocab_size}-{fingerprint(docs)}-{CACHE_VERSION}.json"
    if path.exists():
        try:
            sb = ScaffoldBPE.from_json(json.loads(path.read_text()))
            if sb.unflag != recorded:
                raise ValueError(f"unflag {sb.unflag!r} != {recorded!r}")
            return sb
        except Exception as e:  # a corrupt cache file is reported in one line and rebuilt
            discard_corrupt(path, e)
    sb = train_word_counts(count_words(d.text for d in docs), vocab_size, scaffold=scaffold, unflag=unflag)
    atomic_write(path, lambda p: p.write_text(json.dumps(sb.to_json())))
    return sb


def reference_train(
    word_counts: Mapping[str, int],
    vocab_size: int,
    scaffold: bool = True,
    special_tokens: Sequence[str] = (EOS,),
    unflag: str = "requeue",
) -> tuple[list[tuple[str, str]], set[str]]:
    """Slow, obviously correct Scaffold-BPE training (tests only): (merges in order, scaffold set).

    Every step recounts all pairs and, with ``unflag="requeue"``, every token's freq: if the most frequent scaffold
    (ties to the smaller id) is strictly more frequent than the best pair (0 when none is left), it is un-flagged
    and the step ends. Otherwise the best pair (max count, ties to the smaller (id_a, id_b)) is merged in every word
    (``merge_pair``), all pairs and freqs are recounted, and a / b (merged tokens, not yet flagged) whose freq is
    below the next best pair's are flagged. Stops when the non-scaffold tokens number ``vocab_size`` (the whole
    vocabulary when ``scaffold=False``), or when nothing is left to do.
    """
    _check_unflag(unflag)
    ids = {t: i for i, t in enumerate([*special_tokens, *_alphabet()])}
    words = {tuple(w): c for w, c in word_counts.items() if c > 0}

    def pairs() -> Counter:
        pc: Counter = Counter()
        for w, c in words.items():
            for x, y in zip(w, w[1:]):
                pc[(x, y)] += c
        return pc

    def freqs() -> Counter:
        freq: Counter = Counter()
        for w, c in words.items():
            for x in w:
                freq[x] += c
        return freq

    def top(pc: Counter):
        if not pc:
            return None, 0
        pair = min(pc, key=lambda xy: (-pc[xy], ids[xy[0]], ids[xy[1]]))
        return pair, pc[pair]

    merges: list[tuple[str, str]] = []
    scaffolds: set[str] = set()
    while len(ids) - len(scaffolds) < vocab_size:
        (pair, count) = top(pairs())
        if scaffold and unflag == "requeue" and scaffolds:
            freq = freqs()
            x = min(scaffolds, key=lambda t: (-freq[t], ids[t]))
            if freq[x] > count:  # popped before the best pair: un-flagged, no merge at this step
                scaffolds.remove(x)
                continue
        if pair is None or count < 1:
            break
        a, b = pair
        ids.setdefault(a + b, len(ids))
        merges.append(pair)
        merged: dict[tuple[str, ...], int] = Counter()
        for w, c in words.items():
            merged[tuple(merge_pair(list(w), a, b))] += c
        words = dict(merged)
        if scaffold:
            _, cand = top(pairs())
            freq = freqs()
            for x in (a, b):
                if len(x) > 1 and freq[x] < cand:
                    scaffolds.add(x)
    return merges, scaffolds


# ---------------------------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------------------------


def demolisher(sb: ScaffoldBPE):
    """Token list -> token list with every scaffold demolished; each scaffold's expansion computed once."""
    expand = {t: tuple(demolish([t], sb.scaffolds, sb.components)) for t in sb.scaffolds}

    def run(tokens: list[str]) -> list[str]:
        if not any(t in expand for t in tokens):
            return tokens
        out: list[str] = []
        for t in tokens:
            e = expand.get(t)
            if e is None:
                out.append(t)
            else:
                out.extend(e)
        return out

    return run


class ScaffoldBPEEncoder(BPEEncoder):
    """Scaffold-BPE encoding: rank BPE over the full vocabulary (HF's ids), then ``demolish`` every scaffold."""

    name = "scaffold_bpe"

    def __init__(self, sb: ScaffoldBPE, cache_size: int | None = None, pretokenizer: str = "auto"):
        super().__init__(sb.tokenizer, cache_size=cache_size, pretokenizer=pretokenizer)
        self.scaffolds = sb.scaffolds
        self.scaffold_ids = sb.scaffold_ids
        self._demolish = demolisher(sb)

    def _encode_units(self, word: Sequence[str]) -> list[str]:
        return self._demolish(super()._encode_units(word))
