"""What LBPE contributes, beside the spec (``../shared/papers/lbpe.md`` §3.4): the long-token-first encoding.

LBPE keeps the vocabulary V of an ordinary BPE (training is unchanged, §3.2) and replaces only the *encoding* of a
pre-token ("word"): tokens are produced longest first instead of by merge rank. Over the exact vocabulary of a
byte-level BPE trained with HF ``tokenizers``:

* the spec's reference loops, obviously correct: ``lbpe_encode_word`` (variant A, the sliding-window scan, the LBPE
  of this replication) and ``lbpe_merge_encode_word`` (variant B, the BPE merge loop keyed by length; ablation);
  the baseline ``bpe_encode_word`` lives in ``replicate.tokenization.words``;
* ``LBPEEncoder``: the word-cached encoder (``mode="scan"`` default, ``"merge"`` ablation) on the shared
  ``WordEncoder`` machinery, so word boundaries are HF's; ``make_encoder`` also gives the rank-BPE baseline;
* ``ScaffoldLBPEEncoder`` / ``make_scaffold_encoder``: LBPE on a Scaffold-BPE vocabulary (Table 4, §4.2);
* ``LBPETokenizer``: the same encoders as a ``transformers`` tokenizer.

Choices the paper does not pin down (UNCONFIRMED, spec §3.4), exposed as options:

* ``mode``: ``"scan"`` (default; variant A, the reading the reviews' O(m|T|) description matches) or
  ``"merge"`` (variant B: the BPE merge loop with key (-len(c), rank(c)) in place of rank(c)).
* ``tie_break`` for the scan at equal length: ``"leftmost"`` (default) or ``"rank"`` (lower BPE rank first).
* Variant B admits an adjacent pair when its *concatenation* c is in V (LBPE needs only the set V and the token
  lengths, §3.2), not only when (left, right) is the recorded merge pair; all non-overlapping occurrences of
  the chosen c are merged left to right, as BPE does for its chosen pair.
* ``compose`` on a Scaffold-BPE vocabulary: ``"exclude"`` (default; the scan over V minus the scaffolds) or
  ``"demolish"`` (the scan over the full V, then every scaffold split into its parts).

Windows of the scan are found with a prefix set (a trie flattened into a set), at most m checks per start
position: O(m·n) per word, as §3.4 / §7 ask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tokenizers import Tokenizer

from replicate.papers.lbpe import COMPOSES, MODES, TIE_BREAKS
from replicate.tokenization.hf import WordEncoderTokenizer
from replicate.tokenization.scaffold import ScaffoldBPE, ScaffoldBPEEncoder, demolisher
from replicate.tokenization.words import BPEEncoder, WordEncoder

SCAFFOLD_MODES = ("bpe", *MODES)  # Scaffold-BPE itself (rank BPE + demolish); LBPE variant A / B on it

# ---------------------------------------------------------------------------------------------------------------
# Reference functions (spec §3.4 and §7): plain loops over one word's unit list, no cache, no tricks.
# ---------------------------------------------------------------------------------------------------------------


def lbpe_encode_word(
    units: Sequence[str],
    vocab: Mapping[str, int] | set[str],
    max_len: int,
    tie_break: str = "leftmost",
) -> list[str]:
    """LBPE variant A, the sliding-window longest-first scan, exactly as the spec's Sec. 3.4 pseudocode.

    ``vocab`` is the set V (or a mapping token -> rank, needed for ``tie_break="rank"``); ``max_len`` is m.
    For L = m, m-1, ..., 2: accept every window of L free units whose string is in V, non-overlapping, in order
    (leftmost first, or lowest rank first at equal L). Leftover units are emitted as single-unit tokens.
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
    if tie_break == "rank" and not isinstance(vocab, Mapping):
        raise ValueError('tie_break="rank" needs vocab as a mapping token -> rank')
    n = len(units)
    taken = [False] * n  # unit already covered by an emitted token
    start_of: dict[int, str] = {}  # start index -> token string
    for L in range(min(max_len, n), 1, -1):  # lengths m, m-1, ..., 2  (priority = length)
        if tie_break == "leftmost":
            j = 0
            while j + L <= n:  # window scans left to right
                window = "".join(units[j : j + L])
                if not any(taken[j : j + L]) and window in vocab:
                    start_of[j] = window
                    for k in range(j, j + L):
                        taken[k] = True
                    j += L  # non-overlapping: move past the match
                else:
                    j += 1
        else:  # "rank": among the free windows of length L, repeatedly take the lowest-rank one
            cands = [
                (vocab["".join(units[j : j + L])], j)
                for j in range(n - L + 1)
                if not any(taken[j : j + L]) and "".join(units[j : j + L]) in vocab
            ]
            for _, j in sorted(cands):
                if not any(taken[j : j + L]):
                    start_of[j] = "".join(units[j : j + L])
                    for k in range(j, j + L):
                        taken[k] = True
    for j in range(n):  # leftover single units (always in V for byte-level BPE)
        if not taken[j]:
            start_of[j] = units[j]
    return [start_of[j] for j in sorted(start_of)]



def merge_occurrences(s: list[str], best: str) -> list[str]:
    """Merge every non-overlapping adjacent pair whose concatenation is ``best``, left to right."""
    merged, j, n = [], 0, len(s)
    while j < n:
        if j + 1 < n and s[j] + s[j + 1] == best:
            merged.append(best)
            j += 2
        else:
            merged.append(s[j])
            j += 1
    return merged


def lbpe_merge_encode_word(units: Sequence[str], vocab_rank: Mapping[str, int]) -> list[str]:
    """LBPE variant B (ablation): the BPE merge loop of Sec. 3.3 with key (-len(c), rank(c)) instead of rank(c).

    An adjacent pair qualifies when its concatenation c is in V. Path-dependent: a token is only built when its
    two halves already sit next to each other.
    """
    s = list(units)
    while len(s) > 1:
        best, best_key = None, None
        for j in range(len(s) - 1):
            c = s[j] + s[j + 1]
            if c in vocab_rank:
                key = (-len(c), vocab_rank[c])  # longest concatenation first, then BPE rank
                if best_key is None or key < best_key:
                    best, best_key = c, key
        if best is None:
            break
        s = merge_occurrences(s, best)
    return s



class LBPEEncoder(WordEncoder):
    """LBPE encoder (Sec. 3.4) over the exact vocabulary of a byte-level HF BPE.

    mode: ``"scan"`` (default, variant A) | ``"merge"`` (variant B, ablation).   [UNCONFIRMED which one the
    paper ran; the reviews' O(m|T|) scan matches A.]
    tie_break (scan only): ``"leftmost"`` (default) | ``"rank"``.                [UNCONFIRMED]
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        mode: str = "scan",
        tie_break: str = "leftmost",
        cache_size: int | None = None,
        pretokenizer: str = "auto",
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if tie_break not in TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
        super().__init__(tokenizer, cache_size=cache_size, pretokenizer=pretokenizer)
        self.mode = mode
        self.tie_break = tie_break
        self.name = "lbpe" if mode == "scan" else "lbpe_merge"
        # every prefix of a vocabulary string: a window walk stops at the first non-prefix (a trie as a set)
        self._prefixes = {t[:k] for t in self.vocab for k in range(2, len(t) + 1)}
        # variant B key: (-len(c), rank(c)) folded into one int
        big = len(self.rank) + len(self.merge_ranks) + 2
        self._merge_key = {t: (self.max_len - len(t)) * big + r + 1 for t, r in self.rank.items() if len(t) > 1}
        self._encode_units = self._scan if mode == "scan" else self._merge  # type: ignore[method-assign]

    def _scan(self, word: str) -> list[str]:
        """Variant A, equivalent to ``lbpe_encode_word`` in O(n·m) window checks (Sec. 3.4, Sec. 7).

        Every window (j, L) with word[j:j+L] in V is found in one pass (each walk from j stops at the first
        string that is no prefix of any vocabulary entry, so at most m checks per start). Accepting the windows
        in order of (-L, j) (or (-L, rank, j)) when all their units are free is the spec's scan: for each L,
        from m down to 2, the leftmost (or lowest-rank) free window first, never overlapping an accepted one.
        """
        n = len(word)
        if n < 2:
            return list(word)
        vocab, prefixes = self.vocab, self._prefixes
        cands = []
        for j in range(n - 1):
            for e in range(j + 2, n + 1):
                piece = word[j:e]
                if piece not in prefixes:
                    break
                if piece in vocab:
                    cands.append((j - (e - j) * n, j, e))  # key sorts by -L then j  (leftmost tie-break)
        if not cands:
            return list(word)
        if self.tie_break == "rank":
            rank = self.rank
            cands = [(-(e - j), rank[word[j:e]], j, e) for _, j, e in cands]
        cands.sort()
        taken = bytearray(n)
        starts: dict[int, int] = {}
        for c in cands:
            j, e = c[-2], c[-1]
            if not any(taken[j:e]):  # all units still free
                taken[j:e] = b"\x01" * (e - j)
                starts[j] = e
        out, j = [], 0
        while j < n:  # tokens in order; leftover single units in between
            e = starts.get(j)
            if e is None:
                out.append(word[j])
                j += 1
            else:
                out.append(word[j:e])
                j = e
        return out

    def _merge(self, word: str) -> list[str]:
        """Variant B, same semantics as ``lbpe_merge_encode_word``."""
        key = self._merge_key
        s = list(word)
        while len(s) > 1:
            best, best_key = None, None
            for a, b in zip(s, s[1:]):
                k = key.get(a + b)
                if k is not None and (best_key is None or k < best_key):
                    best, best_key = a + b, k
            if best is None:
                break
            s = merge_occurrences(s, best)
        return s


def make_encoder(
    tokenizer: Tokenizer,
    mode: str = "scan",
    tie_break: str = "leftmost",
    cache_size: int | None = None,
    pretokenizer: str = "auto",
) -> WordEncoder:
    """``mode``: ``"scan"`` (LBPE, default) | ``"merge"`` (LBPE variant B) | ``"bpe"`` (our rank-BPE baseline)."""
    if mode == "bpe":
        return BPEEncoder(tokenizer, cache_size=cache_size, pretokenizer=pretokenizer)
    return LBPEEncoder(tokenizer, mode=mode, tie_break=tie_break, cache_size=cache_size, pretokenizer=pretokenizer)


class ScaffoldLBPEEncoder(LBPEEncoder):
    """LBPE over a Scaffold-BPE vocabulary.                                        [UNCONFIRMED composition]

    compose: ``"exclude"`` (default; name "scaffold_lbpe"): LBPE over V minus the scaffolds;
    ``"demolish"`` (name "scaffold_lbpe_demolish"): LBPE over the full V, then ``demolish``.
    mode / tie_break: as ``LBPEEncoder`` (``"scan"`` default; ``"merge"`` = variant B, ablation).
    """

    def __init__(
        self,
        sb: ScaffoldBPE,
        mode: str = "scan",
        tie_break: str = "leftmost",
        compose: str = "exclude",
        cache_size: int | None = None,
        pretokenizer: str = "auto",
    ):
        if compose not in COMPOSES:
            raise ValueError(f"compose must be one of {COMPOSES}, got {compose!r}")
        super().__init__(sb.tokenizer, mode=mode, tie_break=tie_break, cache_size=cache_size, pretokenizer=pretokenizer)
        self.compose = compose
        self.scaffolds = sb.scaffolds
        self.scaffold_ids = sb.scaffold_ids
        base = "scaffold_lbpe" if mode == "scan" else "scaffold_lbpe_merge"
        self.name = base if compose == "exclude" else f"{base}_demolish"
        if compose == "exclude":
            # Drop the scaffolds from V. The prefix set keeps their prefixes: a superset only costs a few more
            # window checks (a window counts only when it is in V), so the scan stays exact.
            for t in sb.scaffolds:
                self.vocab.pop(t, None)
                self.rank.pop(t, None)
                self._merge_key.pop(t, None)
            self.max_len = max(len(t) for t in self.vocab)
        else:
            inner, run = self._encode_units, demolisher(sb)
            self._encode_units = lambda word: run(inner(word))  # type: ignore[method-assign]


def make_scaffold_encoder(
    sb: ScaffoldBPE,
    mode: str = "bpe",
    compose: str = "exclude",
    tie_break: str = "leftmost",
    cache_size: int | None = None,
    pretokenizer: str = "auto",
):
    """``mode``: ``"bpe"`` (Scaffold-BPE, default) | ``"scan"`` (LBPE on it) | ``"merge"`` (LBPE variant B on it)."""
    if mode not in SCAFFOLD_MODES:
        raise ValueError(f"mode must be one of {SCAFFOLD_MODES}, got {mode!r}")
    if mode == "bpe":
        return ScaffoldBPEEncoder(sb, cache_size=cache_size, pretokenizer=pretokenizer)
    return ScaffoldLBPEEncoder(
        sb, mode=mode, tie_break=tie_break, compose=compose, cache_size=cache_size, pretokenizer=pretokenizer
    )


class LBPETokenizer(WordEncoderTokenizer):
    """``transformers`` tokenizer whose segmentation is LBPE (``mode="scan"``, default; ``"merge"``: variant B) or
    our rank BPE (``mode="bpe"``) over a byte-level HF BPE vocabulary; ``tie_break`` as for the scan."""

    options = {"mode": "scan", "tie_break": "leftmost"}
    build_encoder = staticmethod(make_encoder)
