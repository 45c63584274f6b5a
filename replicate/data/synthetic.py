"""Synthetic tasks with exact answers: long-context retrieval (passkey, RULER) and instruction-style QA on a play.

Every generator is pure: ``task(seed, index, ...)`` draws only from ``numpy.random.default_rng([seed, index,
task id])`` (task id: CRC-32 of the task name), so the same arguments give the same :class:`Sample` on every machine.
Length and depth are not part of the key, and every draw is made whatever the parameters: sample ``(seed, index)``
keeps its needle, key and haystack start across a length x depth grid, so the cells of a heat map are paired.

Tasks (``prompt`` ... ``answer``; an answer starts with one space, a prompt never ends with whitespace):

- ``passkey`` (Mohtashami & Jaggi 2023): "The grass is green. The sky is blue. ..." repeated (or corpus text) with
  "The pass key is 71432. Remember it. 71432 is the pass key." inside; "What is the pass key? The pass key is"
  -> " 71432".
- ``niah`` and RULER's eight NIAH tasks (:data:`RULER_NIAH`, Hsieh et al. 2024): needles "The special magic number
  for quiet-river is 48213." in filler, corpus text or other needles; "What is the special magic number for
  quiet-river? The special magic number for quiet-river is" -> " 48213". Multi-value / multi-query: " 48213, 90071,
  11532, 67220". Keys are adjective-noun pairs (as in RULER) or 8 hex digits; values 5 digits or 8 hex digits.
- ``variable_tracking`` (RULER ``vt``): "VAR QKT = 48213." "VAR BRZ = QKT." ... hidden in filler; "Find all variables
  that are assigned the value 48213 in the text above. The variables assigned the value 48213 are:" -> " QKT, BRZ".
- ``common_words`` (RULER ``cwe``): a list of corpus words, a few of them repeated; "What are the 5 most common
  words in the list above? The 5 most common words are:" -> " honour, night, gold, sword, queen" (first-seen order).
- ``frequent_words`` (RULER ``fwe``): Zipf-distributed coded words; the 3 most frequent, most frequent first.
- ``instruction_qa`` (``qa_speaker``, ``qa_next_line``, ``qa_word_count``): a passage of a play, then
  'Who speaks the line "..."?' -> " HAMLET", 'Which line comes right after "..."?' -> " <the next line>",
  'How many times does the word "love" appear in the passage?' -> " 3". Answers are read off the play markup (a
  block whose first line is an upper-case speaker name), so they are correct in the source text.

Length. ``length`` is counted in tokens of ``tokenizer`` (a ``tokenizers.Tokenizer``, or a ``transformers`` fast
tokenizer) or in characters without one. The prompt is never longer than asked: text haystacks are cut at a token
boundary of the source text and fall at most :data:`LENGTH_TOLERANCE` tokens short; a haystack made of whole units
(``haystack="needles"``, the word lists of cwe / fwe) falls at most one unit short. ``n_tokens`` is what it came to.

Depth. The needle goes in at the line (corpus, needles) or sentence (filler) boundary whose share of the haystack's
tokens before it is nearest ``depth``; 0 is before the first line, 1 after the last. The header and question are not
haystack. ``depths`` holds the realised depth of every needle (off by at most half a unit).

Encoding. :func:`encode` tokenises prompt and answer separately; ids are ``prompt ids + answer ids``. This equals the
ids of ``prompt + answer`` because the prompt ends in a non-space and the answer starts with one space: the byte-level
(GPT-2) pre-tokenizer splits there. :func:`encode` checks it (``check=True``) and says so if a tokenizer disagrees.
:func:`sft_batch` pads rows into (B, T+1) ``ids`` with a ``loss_mask`` on the answer tokens only; inputs are
``ids[:, :-1]`` and targets ``ids[:, 1:]``, as in :mod:`replicate.data.lm`.

Scoring. :func:`score` cuts the prediction at its first line break and strips whitespace. ``metric="exact"`` (QA):
1.0 when it equals the stripped answer, else 0.0. ``metric="all"`` (retrieval, RULER's string-match-all): the fraction
of gold ``values`` that occur in it as whole words, case-insensitive. :func:`exact_match_teacher_forced`: a sample is
right when the argmax at every answer position is the gold token.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from replicate.data.corpora import Document, shakespeare

LENGTH_TOLERANCE = 3  # tokens (or characters) a text-haystack prompt may fall short of ``length``; never over

FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
NOUNS = tuple(
    "apple river stone cloud tiger lemon candle window garden bridge pencil rabbit forest button carpet castle "
    "cherry dragon engine falcon feather finger flower guitar hammer island jacket kettle ladder lizard magnet "
    "marble meadow mirror monkey needle orange parrot pepper pillow planet pocket puzzle rocket saddle salmon "
    "shadow silver spider spoon statue summer sunset table tunnel turtle valley violin wagon walnut whale wizard "
    "anchor basket beaver blanket bottle canyon carrot circle coffee copper cotton dinner dolphin donkey falcon "
    "galaxy ginger goblet helmet hollow jungle kitten lantern melon mitten muffin noodle oyster pebble penguin "
    "pirate pumpkin radish ribbon rubber sailor".split()
)
NOUNS = tuple(dict.fromkeys(NOUNS))  # ordered, distinct
ADJECTIVES = tuple("red blue green quiet happy brave calm dark early fancy gentle lucky proud silly tall tiny wild "
                   "young bright cold".split())
WORD_KEYS = tuple(f"{a}-{b}" for a in ADJECTIVES for b in NOUNS)  # RULER's keys are adjective-noun pairs too
_CONSONANTS = "BCDFGHJKLMNPQRSTVWXZ"
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
_SPEAKER = re.compile(r"[A-Z][A-Z'\-]*(?: [A-Z][A-Z'\-]*)*")
_NOT_SPEAKERS = {"SONG", "THE SONG", "EPILOGUE", "PROLOGUE"}  # titles as often as speaker names
_DIRECTION = ("Enter", "Exit", "Exeunt", "Re-enter", "#")


@dataclass(frozen=True)
class Sample:
    """One prompt with its exact gold continuation.

    ``values``: the gold items the answer lists (one for single-answer tasks), in answer order. ``metric``: how
    :func:`score` compares (``"all"`` or ``"exact"``). ``length``/``n_tokens``: requested and realised prompt length
    in ``unit``. ``depth``: the depth asked for the queried needle (the one drawn when none was asked);
    ``needles``/``depths``: every inserted needle sentence and its realised depth, in prompt order. ``source``: where
    the haystack or passage starts (doc:line)."""

    task: str
    prompt: str
    answer: str
    values: tuple[str, ...]
    metric: str
    seed: int
    index: int
    length: int | None = None
    n_tokens: int | None = None
    unit: str = "chars"
    depth: float | None = None
    needles: tuple[str, ...] = ()
    depths: tuple[float, ...] = ()
    source: str = ""

    def __post_init__(self):
        if not (self.answer.startswith(" ") and self.answer[1:2].strip()):
            raise ValueError(f"answer: must start with exactly one space, got {self.answer!r}")
        if self.prompt != self.prompt.rstrip():
            raise ValueError("prompt: must not end with whitespace")
        if self.metric not in ("all", "exact"):
            raise ValueError(f"metric: must be 'all' or 'exact', got {self.metric!r}")


# ---------------------------------------------------------------------------------------------- measuring text


class _Measure:
    """Counts a text in tokens of a tokenizer, or in characters."""

    def __init__(self, tokenizer):
        self.tok = None if tokenizer is None else getattr(tokenizer, "backend_tokenizer", tokenizer)
        if self.tok is not None and not hasattr(self.tok, "encode_batch"):
            raise ValueError(f"tokenizer: expected a tokenizers.Tokenizer or a transformers fast tokenizer, "
                             f"got {type(tokenizer).__name__}")
        self.unit = "chars" if self.tok is None else "tokens"

    def ids(self, text: str) -> list[int]:
        if self.tok is None:
            raise ValueError("tokenizer: encoding needs a tokenizer")
        return self.tok.encode(text, add_special_tokens=False).ids

    def count(self, text: str) -> int:
        return len(text) if self.tok is None else len(self.ids(text))

    def ends(self, text: str) -> np.ndarray:
        """Character offset where each token of ``text`` ends (non-decreasing)."""
        if self.tok is None:
            return np.arange(1, len(text) + 1)
        offs = self.tok.encode(text, add_special_tokens=False).offsets
        return np.maximum.accumulate(np.asarray([e for _, e in offs] or [0], dtype=np.int64))


def _check(seed, index, length=None, depth=None):
    for name, v in (("seed", seed), ("index", index)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name}: must be a non-negative integer, got {v!r}")
    if length is not None and (not isinstance(length, (int, np.integer)) or length < 1):
        raise ValueError(f"length: must be a positive integer, got {length!r}")
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth: must be in [0, 1], got {depth}")


def _rng(seed: int, index: int, task: str, *more: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), zlib.crc32(task.encode()), *more])


def _fit(n_of: Callable[[int], int], m: int, guess: int, length: int) -> int:
    """Largest i in [0, m] with n_of(i) <= length, for n_of non-decreasing with n_of(0) <= length; gallops from
    ``guess``, so a good guess costs a few evaluations."""
    i = min(max(guess, 0), m)
    if n_of(i) <= length:
        lo, step = i, 1
        while lo < m:
            j = min(lo + step, m)
            if n_of(j) > length:
                hi = j
                break
            lo, step = j, step * 2
        else:
            return m
    else:
        hi, step = i, 1
        while True:
            j = max(hi - step, 0)
            if n_of(j) <= length:
                lo = j
                break
            hi, step = j, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if n_of(mid) <= length:
            lo = mid
        else:
            hi = mid
    return lo


def _memo(f):
    cache = {}
    return lambda i: cache[i] if i in cache else cache.setdefault(i, f(i))


# --------------------------------------------------------------------------------------------------- haystacks


@dataclass(frozen=True)
class _Hay:
    text: str
    boundaries: np.ndarray  # char positions a needle may go in at (unit starts), sorted, from 0
    sep: str  # what follows a unit: "\n" (lines) or " " (sentences)
    whole_units: bool  # cut only at unit ends
    source: str


def _filler_hay(measure: _Measure, min_tokens: int) -> _Hay:
    block = " ".join(FILLER) + " "
    reps = max(1, -(-min_tokens // max(1, measure.count(block))) + 1)
    while measure.count(text := block * reps) < min_tokens:  # a block repeated may take fewer tokens than alone
        reps = reps * 5 // 4 + 1
    starts = [0] + [m.end() for m in re.finditer(r"\. ", text)][:-1]
    return _Hay(text, np.asarray(starts), " ", False, "filler")


@lru_cache(maxsize=256)
def _line_starts(text: str) -> tuple[int, ...]:
    """Char positions of the lines of ``text`` (a document's, read again for every haystack cut from it)."""
    return tuple([0] + [m.end() for m in re.finditer("\n", text) if m.end() < len(text)])


def _corpus_hay(rng: np.random.Generator, docs: Sequence[Document], measure: _Measure, min_tokens: int) -> _Hay:
    d = int(rng.integers(len(docs)))
    text0 = docs[d].text
    line_starts = _line_starts(text0)
    start = line_starts[int(rng.integers(len(line_starts)))]
    chunks, n_chars, k = [text0[start:]], len(text0) - start, d
    target = (1 if measure.tok is None else 5) * min_tokens + 64  # BPE: ~3.5-4.5 characters a token
    while True:
        while n_chars < target and len(chunks) <= len(docs):  # on into the next documents, round once at most
            k = (k + 1) % len(docs)
            chunks.append(docs[k].text)
            n_chars += len(docs[k].text)
        stream = "".join(c if c.endswith("\n") else c + "\n" for c in chunks)
        cut = stream.find("\n", target)
        text = stream if cut < 0 else stream[: cut + 1]  # whole lines, about `target` characters
        if measure.count(text) >= min_tokens:
            break
        if len(text) == len(stream) and len(chunks) > len(docs):
            raise ValueError(f"docs: too little text for a haystack of {min_tokens} {measure.unit}")
        target *= 2
    starts = [0] + [m.end() for m in re.finditer("\n", text) if m.end() < len(text)]
    line = text0.count("\n", 0, start) + 1
    return _Hay(text, np.asarray(starts), "\n", False, f"{docs[d].name}:{line}")


def _lines_hay(lines: Sequence[str], source: str) -> _Hay:
    text = "".join(line + "\n" for line in lines)
    starts = np.cumsum([0] + [len(line) + 1 for line in lines])[:-1]
    return _Hay(text, starts, "\n", True, source)


def _haystack(rng, kind: str, docs, measure, min_tokens) -> _Hay:
    if kind == "filler":
        return _filler_hay(measure, min_tokens)
    if kind == "corpus":
        return _corpus_hay(rng, docs if docs is not None else shakespeare(), measure, min_tokens)
    raise ValueError(f"haystack: must be 'filler' or 'corpus', got {kind!r}")


def _fill(measure: _Measure, length: int, hay: _Hay, needles: Sequence[str], depths: Sequence[float], head: str,
          question: str):
    """The prompt ``head + haystack with needles + "\\n" + question`` of at most ``length``: (prompt, n, realised
    depths, insertion position of each needle in the prompt)."""
    text, bounds = hay.text, hay.boundaries
    ends = measure.ends(text)
    cuts = np.concatenate([[0], np.append(bounds[1:], len(text)) if hay.whole_units else ends])
    cut_tok = np.searchsorted(ends, cuts, side="right")
    bound_tok = np.searchsorted(ends, bounds, side="right")

    def assemble(i):
        c, h = int(cuts[i]), int(cut_tok[i])
        nb = int(np.searchsorted(bounds, c, side="right"))
        pos, tok = list(bounds[:nb]), list(bound_tok[:nb])
        if not pos or pos[-1] != c:
            pos.append(c)
            tok.append(h)
        tok_a = np.asarray(tok, dtype=float)
        picks = [int(np.argmin(np.abs(tok_a - d * h))) for d in depths]
        order = sorted(range(len(needles)), key=lambda j: (picks[j], j))
        out, prev, at = [head], 0, [0] * len(needles)
        for j in order:
            p = int(pos[picks[j]])
            out.append(text[prev:p])
            if p > 0 and not text[p - 1].isspace():
                out.append(hay.sep)
            at[j] = sum(map(len, out))
            out.append(needles[j] + hay.sep)
            prev = p
        out.append(text[prev:c])
        prompt = "".join(out).rstrip() + "\n" + question
        real = tuple(float(tok[picks[j]] / h) if h else 0.0 for j in range(len(needles)))
        return prompt, real, at

    n_of = _memo(lambda i: measure.count(assemble(i)[0]))
    n0 = n_of(0)
    if n0 > length:
        raise ValueError(f"length: {length} {measure.unit} cannot hold the prompt without haystack "
                         f"({n0} {measure.unit})")
    guess = int(np.searchsorted(cut_tok, length - n0, side="right")) - 1
    i = _fit(n_of, len(cuts) - 1, guess, length)
    prompt, real, at = assemble(i)
    return prompt, n_of(i), real, at


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _distinct_values(rng, n: int, kind: str, size: int) -> list[str]:
    if kind == "digits":
        if not 1 <= size <= 12:
            raise ValueError(f"value_len: digits must be 1..12 long, got {size}")
        lo = 10 ** (size - 1)
        if n > 9 * lo:
            raise ValueError(f"value_len: {size} digits give fewer than {n} distinct values")
        return [str(lo + int(x)) for x in rng.choice(9 * lo, size=n, replace=False)]
    if kind == "hex":
        if not 4 <= size <= 15:
            raise ValueError(f"value_len: hex values must be 4..15 long, got {size}")
        seen: dict[str, None] = {}
        while len(seen) < n:
            for x in rng.integers(0, 16**size, size=n):
                seen.setdefault(f"{int(x):0{size}x}", None)
        return list(seen)[:n]
    raise ValueError(f"value_type: must be 'digits' or 'hex', got {kind!r}")


# ------------------------------------------------------------------------------------------- retrieval tasks


def passkey(seed: int, index: int, length: int, depth: float | None = None, *, tokenizer=None,
            haystack: str = "filler", docs: Sequence[Document] | None = None, digits: int = 5,
            header: bool = True) -> Sample:
    """Passkey retrieval: a ``digits``-digit key hidden at ``depth`` (uniform at random when None) in repeated
    filler sentences (``haystack="filler"``) or corpus text (``"corpus"``)."""
    _check(seed, index, length, depth)
    if not (isinstance(digits, (int, np.integer)) and 1 <= digits <= 12):
        raise ValueError(f"digits: must be an integer in 1..12, got {digits!r}")
    m = _Measure(tokenizer)
    rng = _rng(seed, index, "passkey")
    u = float(rng.random())
    key = _distinct_values(rng, 1, "digits", digits)[0]
    hay = _haystack(np.random.default_rng(rng.integers(1 << 62)), haystack, docs, m, length)
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    head = ("There is important information hidden inside a lot of irrelevant text. Find it and memorize it. "
            "I will quiz you about it.\n") if header else ""
    d = u if depth is None else depth
    prompt, n, real, _ = _fill(m, length, hay, [needle], [d], head, "What is the pass key? The pass key is")
    return Sample("passkey", prompt, " " + key, (key,), "all", seed, index, length, n, m.unit, d, (needle,), real,
                  hay.source)


def niah(seed: int, index: int, length: int, depth: float | None = None, *, tokenizer=None,
         haystack: str = "corpus", key_type: str = "word", value_type: str = "digits", n_keys: int = 1,
         n_values: int = 1, n_queries: int = 1, value_len: int | None = None,
         docs: Sequence[Document] | None = None, header: bool = True, task: str = "niah") -> Sample:
    """Needle in a haystack, RULER's family. ``n_keys`` keys each with ``n_values`` needles; the first ``n_queries``
    keys are asked. ``haystack``: ``"filler"``, ``"corpus"`` (text of ``docs``, default Shakespeare) or ``"needles"``
    (only needles of other keys). ``key_type``: ``"word"`` (a noun) or ``"hex"``; ``value_type``: ``"digits"`` (5 by
    default) or ``"hex"`` (8). The first asked needle goes at ``depth`` (uniform when None), the rest uniformly.
    The answer lists the asked values, key by key in question order, each key's values in prompt order."""
    _check(seed, index, length, depth)
    for name, v in (("n_keys", n_keys), ("n_values", n_values), ("n_queries", n_queries)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: must be a positive integer, got {v!r}")
    if n_queries > n_keys:
        raise ValueError(f"n_queries: {n_queries} is more than n_keys ({n_keys})")
    if key_type not in ("word", "hex"):
        raise ValueError(f"key_type: must be 'word' or 'hex', got {key_type!r}")
    if haystack not in ("filler", "corpus", "needles"):
        raise ValueError(f"haystack: must be 'filler', 'corpus' or 'needles', got {haystack!r}")
    size = value_len if value_len is not None else (5 if value_type == "digits" else 8)
    noun = {"digits": "number", "hex": "uuid"}.get(value_type)
    if noun is None:
        raise ValueError(f"value_type: must be 'digits' or 'hex', got {value_type!r}")
    m = _Measure(tokenizer)
    rng = _rng(seed, index, task)
    u = rng.random(n_keys * n_values)
    hay_rng = np.random.default_rng(rng.integers(1 << 62))

    def needle(k, v):
        return f"The special magic {noun} for {k} is {v}."

    n_fixed = n_keys * n_values
    n_more = 0  # distractor needles of a needle-only haystack
    if haystack == "needles":
        per_line = max(1, m.count(needle("quiet-x" if key_type == "word" else "0" * 8, "0" * size) + "\n"))
        n_more = int(length / per_line * 1.3) + 4
    n_all = n_fixed // n_values + n_more  # keys needed
    if key_type == "word":
        if n_all > len(WORD_KEYS):
            raise ValueError(f"length: {length} needs {n_all} keys, more than the {len(WORD_KEYS)} word keys")
        keys = [WORD_KEYS[int(i)] for i in rng.permutation(len(WORD_KEYS))[:n_all]]
    else:
        keys = _distinct_values(rng, n_all, "hex", 8)
    values = _distinct_values(rng, n_fixed + n_more, value_type, size)
    asked, fixed_vals = keys[:n_queries], values[:n_fixed]
    needles = [needle(keys[i // n_values], fixed_vals[i]) for i in range(n_fixed)]
    depths = [float(x) for x in u]
    if depth is not None:
        depths[0] = depth
    if haystack == "needles":
        hay = _lines_hay([needle(k, v) for k, v in zip(keys[n_keys:], values[n_fixed:])], "needles")
    else:
        hay = _haystack(hay_rng, haystack, docs, m, length)
    head = (f"Some special magic {noun}s are hidden within the following text. Memorize them. "
            f"I will quiz you about the {noun}s afterwards.\n") if header else ""
    if n_values == 1 and n_queries == 1:
        q = f"What is the special magic {noun} for {asked[0]}? The special magic {noun} for {asked[0]} is"
    else:
        ks = _and(asked)
        q = f"What are all the special magic {noun}s for {ks}? The special magic {noun}s for {ks} are"
    prompt, n, real, at = _fill(m, length, hay, needles, depths, head, q)
    gold = []
    for qi in range(n_queries):  # asked key by asked key, each key's values in prompt order
        gold += [fixed_vals[i] for i in sorted(range(qi * n_values, (qi + 1) * n_values), key=lambda i: at[i])]
    order = sorted(range(n_fixed), key=lambda i: at[i])
    return Sample(task, prompt, " " + ", ".join(gold), tuple(gold), "all", seed, index, length, n, m.unit,
                  depths[0], tuple(needles[i] for i in order), tuple(real[i] for i in order), hay.source)


def variable_tracking(seed: int, index: int, length: int, *, tokenizer=None, n_chains: int = 1, n_hops: int = 4,
                      haystack: str = "filler", docs: Sequence[Document] | None = None, header: bool = True,
                      value_len: int = 5) -> Sample:
    """RULER's variable tracking: ``n_chains`` chains "VAR A = 12345." "VAR B = A." ... of ``n_hops`` hops each,
    statements in order at random depths; which variables hold the first chain's value? (in chain order)."""
    _check(seed, index, length)
    for name, v in (("n_chains", n_chains), ("n_hops", n_hops)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: must be a positive integer, got {v!r}")
    m = _Measure(tokenizer)
    rng = _rng(seed, index, "variable_tracking")
    n_vars = n_chains * (n_hops + 1)
    nc = len(_CONSONANTS)  # names of three consonants: no English word, no speaker name
    names = ["".join(_CONSONANTS[(int(x) // nc**p) % nc] for p in range(3)) for x in rng.choice(nc**3, n_vars, False)]
    values = _distinct_values(rng, n_chains, "digits", value_len)
    depths_u = np.sort(rng.random((n_chains, n_hops + 1)), axis=1)
    hay = _haystack(np.random.default_rng(rng.integers(1 << 62)), haystack, docs, m, length)
    needles, depths = [], []
    for c in range(n_chains):
        chain = names[c * (n_hops + 1):(c + 1) * (n_hops + 1)]
        needles += [f"VAR {chain[0]} = {values[c]}."] + [f"VAR {b} = {a}." for a, b in zip(chain, chain[1:])]
        depths += [float(x) for x in depths_u[c]]
    head = "Memorize and track the chain of variable assignments hidden in the following text.\n" if header else ""
    v = values[0]
    q = (f"Find all variables that are assigned the value {v} in the text above. "
         f"The variables assigned the value {v} are:")
    prompt, n, real, at = _fill(m, length, hay, needles, depths, head, q)
    gold = tuple(names[: n_hops + 1])
    order = sorted(range(len(needles)), key=lambda i: at[i])
    return Sample("variable_tracking", prompt, " " + ", ".join(gold), gold, "all", seed, index, length, n, m.unit,
                  None, tuple(needles[i] for i in order), tuple(real[i] for i in order), hay.source)


@lru_cache(maxsize=8)
def _word_pool(docs: tuple[Document, ...]) -> tuple[str, ...]:
    """Distinct lower-case words of 3-9 letters that occur at least twice in ``docs``, sorted."""
    counts = Counter(w for d in docs for w in _WORD.findall(d.text) if 3 <= len(w) <= 9 and w.isalpha() and w.islower())
    return tuple(sorted(w for w, c in counts.items() if c >= 2))


def common_words(seed: int, index: int, length: int, *, tokenizer=None, n_common: int = 5, freq_common: int = 6,
                 freq_uncommon: int = 1, docs: Sequence[Document] | None = None, header: bool = True) -> Sample:
    """RULER's common-words extraction: ``n_common`` words ``freq_common`` times each among as many distinct words
    ``freq_uncommon`` times each as fit, shuffled; the answer lists the common words in first-seen order. (RULER
    numbers the list; we do not, to spend a small model's context on the words.)"""
    _check(seed, index, length)
    if not (isinstance(n_common, (int, np.integer)) and n_common >= 1):
        raise ValueError(f"n_common: must be a positive integer, got {n_common!r}")
    if not freq_common > freq_uncommon >= 1:
        raise ValueError(f"freq_common: must exceed freq_uncommon >= 1, got {freq_common} and {freq_uncommon}")
    m = _Measure(tokenizer)
    pool = _word_pool(tuple(docs) if docs is not None else shakespeare())
    if len(pool) <= n_common:
        raise ValueError(f"n_common: {n_common} is not below the {len(pool)} distinct words of docs")
    rng = _rng(seed, index, "common_words")
    perm = [pool[int(i)] for i in rng.permutation(len(pool))]
    common = perm[:n_common]
    head = ("Below is a list of words. Some words appear more often than others. "
            "Memorize the ones that appear most often.\n") if header else ""
    q = f"What are the {n_common} most common words in the list above? The {n_common} most common words are:"

    # each list item has a random sort key, so adding a word inserts its copies without moving the others: the
    # prompt grows monotonically with the number of uncommon words
    keys_c = rng.random(n_common * freq_common)
    keys_u = rng.random((len(pool) - n_common, freq_uncommon))

    def build(k):
        items = [(x, common[i % n_common]) for i, x in enumerate(keys_c)]
        items += [(x, perm[n_common + j]) for j in range(k) for x in keys_u[j]]
        return head + " ".join(w for _, w in sorted(items)) + "\n" + q

    n_of = _memo(lambda k: m.count(build(k)))
    if n_of(0) > length:
        raise ValueError(f"length: {length} {m.unit} cannot hold {n_common} words x {freq_common} ({n_of(0)} {m.unit})")
    per = max(1, n_of(1) - n_of(0)) if len(pool) > n_common else 1
    k = _fit(n_of, len(pool) - n_common, (length - n_of(0)) // per, length)
    if k == len(pool) - n_common and length - n_of(k) > 4 * per:
        raise ValueError(f"length: {length} {m.unit} needs more than the {len(pool)} distinct words of docs")
    prompt = build(k)
    body = prompt[len(head):].split("\n", 1)[0].split(" ")
    gold = tuple(dict.fromkeys(w for w in body if w in set(common)))
    return Sample("common_words", prompt, " " + ", ".join(gold), gold, "all", seed, index, length, n_of(k), m.unit)


def frequent_words(seed: int, index: int, length: int, *, tokenizer=None, n_top: int = 3, alpha: float = 2.0,
                   vocab_size: int = 1000, header: bool = True) -> Sample:
    """RULER's frequent-words extraction: coded 3-letter words with Zipf(``alpha``) frequencies over ``vocab_size``
    ranks; the answer lists the ``n_top`` most frequent, most frequent first (their counts are all distinct, and the
    last is above the next word's: a draw with ties there is redrawn)."""
    _check(seed, index, length)
    if alpha <= 1.0:
        raise ValueError(f"alpha: must be > 1 (Zipf), got {alpha}")
    if not 1 <= n_top < vocab_size <= 26**3:
        raise ValueError(f"n_top: must satisfy 1 <= n_top < vocab_size <= {26**3}, got {n_top}, {vocab_size}")
    m = _Measure(tokenizer)
    rng = _rng(seed, index, "frequent_words")
    letters = "abcdefghijklmnopqrstuvwxyz"
    codes = rng.choice(26**3, vocab_size, replace=False)
    vocab = ["".join(letters[(int(x) // 26**p) % 26] for p in range(3)) for x in codes]
    head = ("Read the following coded text and track the frequency of each coded word. "
            f"Find the {n_top} most frequent coded words.\n") if header else ""
    q = (f"What are the {n_top} most frequent words in the coded text above? "
         f"The {n_top} most frequent words are:")

    # a stream of Zipf ranks; a prompt of n words is its first n (ranks past vocab_size wrap round, a change of
    # mass below 1e-3 at alpha=2), so the prompt grows monotonically with n. A stream whose longest fitting prefix
    # ties at the top is redrawn (attempt 1, 2, ...), so every answer is unambiguous.
    per = max(1, m.count(" abc"))
    for attempt in range(100):
        ranks = (_rng(seed, index, "frequent_words", attempt).zipf(alpha, size=length + n_top) - 1) % vocab_size

        def build(n):
            return head + " ".join(vocab[r] for r in ranks[:n]) + "\n" + q

        n_of = _memo(lambda n: m.count(build(n)))
        if n_of(n_top) > length:
            raise ValueError(f"length: {length} {m.unit} is too short for frequent_words with n_top={n_top}")
        n = n_top + _fit(lambda j: n_of(n_top + j), length, (length - n_of(n_top)) // per, length)
        c = Counter(ranks[:n].tolist()).most_common(n_top + 1)
        counts = [x for _, x in c] + [0]
        if len(c) >= n_top and all(x > y for x, y in zip(counts[:n_top], counts[1:n_top + 1])):
            break
    else:
        raise ValueError(f"length: {length} {m.unit} gives no frequent_words list without a tie in its top {n_top}")
    gold = tuple(vocab[r] for r, _ in c[:n_top])
    return Sample("frequent_words", build(n), " " + ", ".join(gold), gold, "all", seed, index, length, n_of(n),
                  m.unit)


# ---------------------------------------------------------------------------------------- instruction-style QA


@dataclass(frozen=True)
class _Play:
    lines: tuple[str, ...]
    speaker_line: tuple[int, ...]  # per line: index of its speaker's name line, or -1 when not a usable speech line
    starts: tuple[int, ...]  # line index where each line's block starts


def _is_verse(line: str) -> bool:
    return (len(line.split()) >= 4 and not any(ch in line for ch in '[]"') and not line.startswith(_DIRECTION)
            and not _SPEAKER.fullmatch(line))


@lru_cache(maxsize=64)
def _play(doc: Document) -> _Play:
    """Speech lines whose speaker is unambiguous: a block (between blank lines) whose first line is an upper-case
    name that heads at least two blocks in the play, no other line of it is upper-case, and the block before it
    does not end in an upper-case line (a name broken over a blank line). Only lines that occur once in the play."""
    lines = doc.text.split("\n")
    counts = Counter(lines)
    n = len(lines)
    block_start = [0] * n
    for i in range(n):
        block_start[i] = i if i == 0 or not lines[i - 1] else block_start[i - 1]
    heads = Counter(lines[i] for i in range(n) if lines[i] and block_start[i] == i)
    speaker = [-1] * n
    i = 0
    while i < n:
        if not lines[i]:
            i += 1
            continue
        j = i
        while j < n and lines[j]:
            j += 1
        first, before = lines[i], (lines[i - 2] if i >= 2 else "")
        ok = (_SPEAKER.fullmatch(first) and first not in _NOT_SPEAKERS and heads[first] >= 2 and j - i >= 2
              and not _SPEAKER.fullmatch(before) and not any(_SPEAKER.fullmatch(x) for x in lines[i + 1:j]))
        if ok:
            for k in range(i + 1, j):
                if _is_verse(lines[k]) and counts[lines[k]] == 1:
                    speaker[k] = i
        i = j
    return _Play(tuple(lines), tuple(speaker), tuple(block_start))


@lru_cache(maxsize=256)
def _targets(doc: Document, kind: str, n_lines: int) -> tuple[int, ...]:
    """Lines of ``doc`` a ``kind`` question can quote: speech lines with a known speaker no more than ``n_lines - 1``
    lines above (speaker), or followed by a speech line of the same block (next_line)."""
    p = _play(doc)
    out = []
    for t, s in enumerate(p.speaker_line):
        if s < 0:
            continue
        if kind == "speaker" and t - s < n_lines:
            out.append(t)
        elif kind == "next_line" and t + 1 < len(p.lines) and p.starts[t + 1] == p.starts[t] and \
                _is_verse(p.lines[t + 1]):
            out.append(t)
    return tuple(out)


QA_KINDS = ("speaker", "next_line", "word_count")


def instruction_qa(seed: int, index: int, *, kind: str | None = None, docs: Sequence[Document] | None = None,
                   n_lines: int = 12) -> Sample:
    """An instruction-style question about a passage of ``n_lines`` lines of a play, with one exact answer.
    ``kind``: ``"speaker"`` (who speaks a quoted line: the name heading its speech), ``"next_line"`` (the line after
    a quoted line, in the same speech), ``"word_count"`` (how often a word occurs in the passage: whole words,
    case-insensitive), or None for one of the three drawn at random."""
    _check(seed, index)
    if kind is not None and kind not in QA_KINDS:
        raise ValueError(f"kind: must be one of {', '.join(QA_KINDS)} or None, got {kind!r}")
    if not (isinstance(n_lines, (int, np.integer)) and n_lines >= 3):
        raise ValueError(f"n_lines: must be an integer >= 3, got {n_lines!r}")
    docs = tuple(docs) if docs is not None else shakespeare()
    rng = _rng(seed, index, "instruction_qa")
    drawn = QA_KINDS[int(rng.integers(len(QA_KINDS)))]
    kind = kind or drawn
    u_doc, u_line, u_win, u_word = rng.random(4)
    if kind == "word_count":
        doc = docs[int(u_doc * len(docs))]
        lines = doc.text.split("\n")
        a = int(u_win * max(1, len(lines) - n_lines + 1))
        passage = "\n".join(lines[a:a + n_lines]).strip("\n")
        words = [w.lower() for w in _WORD.findall(passage)]
        if not words:
            raise ValueError(f"docs: passage {doc.name}:{a + 1} has no words")
        w = words[int(u_word * len(words))]
        ans, q, first = str(words.count(w)), f'How many times does the word "{w}" appear in the passage?', a
    else:
        cands = [(d, ts) for d in docs if (ts := _targets(d, kind, n_lines))]
        if not cands:
            raise ValueError(f"docs: no play speeches with an upper-case speaker line to ask {kind!r} about")
        doc, ts = cands[int(u_doc * len(cands))]
        p = _play(doc)
        t = ts[int(u_line * len(ts))]
        need_lo, need_hi = (p.speaker_line[t], t) if kind == "speaker" else (t, t + 1)
        lo, hi = max(0, need_hi - n_lines + 1), min(need_lo, len(p.lines) - n_lines)
        a = lo + int(u_win * (hi - lo + 1)) if hi >= lo else max(0, min(lo, len(p.lines) - n_lines))
        passage = "\n".join(p.lines[a:a + n_lines]).strip("\n")
        line = p.lines[t]
        if kind == "speaker":
            ans, q = p.lines[p.speaker_line[t]], f'Who speaks the line "{line}"?'
        else:
            ans, q = p.lines[t + 1].strip(), f'Which line comes right after "{line}"?'
        first = t
    prompt = f"Passage:\n{passage}\n\nQuestion: {q}\nAnswer:"
    return Sample(f"qa_{kind}", prompt, " " + ans, (ans,), "exact", seed, index, source=f"{doc.name}:{first + 1}")


# ------------------------------------------------------------------------------------------------ the registry

RULER_NIAH = {  # RULER's eight NIAH tasks (synthetic.yaml), our keys and values shortened for a small vocabulary
    "niah_single_1": dict(haystack="filler"),
    "niah_single_2": dict(haystack="corpus"),
    "niah_single_3": dict(haystack="corpus", value_type="hex"),
    "niah_multikey_1": dict(haystack="corpus", n_keys=4),
    "niah_multikey_2": dict(haystack="needles"),
    "niah_multikey_3": dict(haystack="needles", key_type="hex", value_type="hex"),
    "niah_multivalue": dict(haystack="corpus", n_values=4),
    "niah_multiquery": dict(haystack="corpus", n_keys=4, n_queries=4),
}
TASKS: dict[str, Callable[..., Sample]] = {
    "passkey": passkey,
    "niah": niah,
    **{name: partial(niah, task=name, **kw) for name, kw in RULER_NIAH.items()},
    "variable_tracking": variable_tracking,
    "common_words": common_words,
    "frequent_words": frequent_words,
    "instruction_qa": instruction_qa,
    **{f"qa_{k}": partial(instruction_qa, kind=k) for k in QA_KINDS},
}
RULER_NO_QA = (*RULER_NIAH, "variable_tracking", "common_words", "frequent_words")  # "RULER-11 (no QA)"


def make(task: str, seed: int, index: int, *args, **params) -> Sample:
    """One sample of a task by name (:data:`TASKS`): ``make("niah_multikey_1", 0, 3, 512, 0.5, tokenizer=tok)``."""
    if task not in TASKS:
        raise ValueError(f"task: unknown task {task!r}; allowed: {', '.join(TASKS)}")
    return TASKS[task](seed, index, *args, **params)


def samples(task: str, seed: int, n: int, *args, **params) -> list[Sample]:
    """Samples ``0..n-1`` of ``task`` under ``seed``."""
    return [make(task, seed, i, *args, **params) for i in range(n)]


# ------------------------------------------------------------------------------------------ encoding, batches


def encode(sample: Sample, tokenizer, *, eos_id: int | None = None, check: bool = True) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids [+ eos_id]). With ``check``, raises if the ids of ``prompt + answer`` differ from the
    two encoded apart (see the module docstring), so training rows are what a model sees when it generates."""
    m = _Measure(tokenizer)
    p, a = m.ids(sample.prompt), m.ids(sample.answer)
    if check and m.ids(sample.prompt + sample.answer) != p + a:
        raise ValueError("tokenizer: encoding prompt and answer apart differs from encoding them together "
                         f"(task {sample.task}, answer {sample.answer!r})")
    return p, a + ([eos_id] if eos_id is not None else [])


@dataclass(frozen=True)
class SFTBatch:
    """Right-padded rows ``prompt + answer``: ``ids`` (B, T+1) int64; ``loss_mask`` (B, T+1) bool, True on answer
    tokens only; ``attention_mask`` (B, T+1) bool, True on real tokens. A causal model reads ``inputs``; its logits
    at column t predict ``targets[:, t]``, and the loss counts where ``target_mask``. Padding comes after every real
    token, so a causal model needs no attention mask."""

    ids: torch.Tensor
    loss_mask: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def inputs(self) -> torch.Tensor:
        return self.ids[:, :-1]

    @property
    def targets(self) -> torch.Tensor:
        return self.ids[:, 1:]

    @property
    def target_mask(self) -> torch.Tensor:
        return self.loss_mask[:, 1:]


def sft_batch(samples: Sequence[Sample], tokenizer, *, eos_id: int | None = None, pad_id: int = 0,
              seq_len: int | None = None) -> SFTBatch:
    """Answer-only supervised rows, padded with ``pad_id`` to the longest row (or to ``seq_len + 1``; a longer row
    is an error, since cutting it would cut the answer)."""
    if not samples:
        raise ValueError("samples: need at least one sample")
    rows = [encode(s, tokenizer, eos_id=eos_id) for s in samples]
    width = max(len(p) + len(a) for p, a in rows)
    if seq_len is not None:
        if width > seq_len + 1:
            raise ValueError(f"seq_len: {seq_len} + 1 is shorter than the longest row ({width} tokens)")
        width = seq_len + 1
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    loss = torch.zeros((len(rows), width), dtype=torch.bool)
    real = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, (p, a) in enumerate(rows):
        ids[r, : len(p) + len(a)] = torch.tensor(p + a, dtype=torch.int64)
        loss[r, len(p) : len(p) + len(a)] = True
        real[r, : len(p) + len(a)] = True
    return SFTBatch(ids, loss, real)


# ------------------------------------------------------------------------------------------------------ scoring


def _cut(prediction: str) -> str:
    return prediction.strip().split("\n", 1)[0].strip()


def score(prediction: str, sample: Sample) -> float:
    """1.0 on the gold answer. The prediction is cut at its first line break and stripped; ``metric="exact"``:
    equal to the stripped answer (1.0 or 0.0); ``"all"``: the fraction of ``values`` found in it as whole words,
    case-insensitive (RULER's string-match-all)."""
    pred = _cut(prediction)
    if sample.metric == "exact":
        return float(pred == sample.answer.strip())
    low = pred.lower()
    hits = [re.search(rf"(?<![0-9A-Za-z]){re.escape(v.lower())}(?![0-9A-Za-z])", low) is not None
            for v in sample.values]
    return sum(hits) / len(hits)


class TeacherForced(NamedTuple):
    exact: torch.Tensor  # (B,) bool: argmax right at every answer position
    token_accuracy: torch.Tensor  # (B,) float: the fraction of answer positions right


def exact_match_teacher_forced(logits_or_model, batch: SFTBatch | tuple[torch.Tensor, torch.Tensor]) -> TeacherForced:
    """Teacher-forced exact match. ``logits_or_model``: logits (B, T, V) on ``batch.inputs``, or a model called on
    them (its output or output ``.logits``). ``batch``: an :class:`SFTBatch`, or ``(targets_BT, mask_BT)``. A row with
    no answer position is not exact."""
    targets_BT, mask_BT = (batch.targets, batch.target_mask) if isinstance(batch, SFTBatch) else batch
    logits = logits_or_model
    if not isinstance(logits, torch.Tensor):
        with torch.no_grad():
            out = logits_or_model(batch.inputs)
        logits = getattr(out, "logits", out)
    if logits.shape[:2] != targets_BT.shape:
        raise ValueError(f"logits: shape {tuple(logits.shape)} does not match targets {tuple(targets_BT.shape)}")
    right = (logits.argmax(-1) == targets_BT) & mask_BT
    n = mask_BT.sum(-1)
    return TeacherForced((right.sum(-1) == n) & (n > 0), right.sum(-1).float() / n.clamp(min=1).float())


def answer_loss(logits_BTV: torch.Tensor, batch: SFTBatch) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of the batch (the answer-only SFT loss), in fp32."""
    nll = F.cross_entropy(logits_BTV.float().flatten(0, 1), batch.targets.flatten(), reduction="none")
    mask = batch.target_mask.flatten()
    return (nll * mask).sum() / mask.sum().clamp(min=1)
