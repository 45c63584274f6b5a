"""HARPE's experiments, as one plan (``run_experiments(cfg)`` -> the bundle ``report.py`` reads).

Steps, in order (the notebook runs one per cell):

- ``data``: Shakespeare split by whole plays, a byte-level BPE on the training plays, the text stream; synthetic
  retrieval pools (``replicate.data.synthetic``, training plays as haystacks, seeds below ``eval_seed``) at every
  length a run trains at; fixed held-out windows at the short length (validity) and at every evaluation length
  (perplexity); the evaluation prompts (held-out plays as haystacks, seed ``eval_seed``) encoded once; the count
  models of validity (unigram; Kneser-Ney bigram of every row the short model saw).
- ``bases``: HARPE's per-head bases by the peak-valley search, uniform bases, the multi-stage schedule.
- ``pretrain``: Phase A, the short model from scratch (base ``rope_theta``, length ``seq_len``); cached with its
  weights and shared by every method.
- ``runs``: Phase B, every method continued from it on the same tokens: HARPE and ABF multi-stage with ``n_seeds``
  seeds (the same seed means the same text rows and the same retrieval rows), the other arms on seed ``seed``.
- ``evals``: every trained model (and the short model plain and with Self-Extend): held-out loss per length,
  greedy retrieval scores per task x length x sample, the heat map. Cached per model; with ``workers`` > 1 computed
  side by side in worker processes first.
- ``comparisons``: per-seed gaps and paired bootstraps over evaluation samples / windows (drawn here, not in the
  report).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from replicate import __version__
from replicate.data import lm, synthetic
from replicate.data.ngram import KneserNeyBigram, count_bars, seen_windows
from replicate.data.text import lm_text
from replicate.experiments import Plan
from replicate.io import torch_load, torch_save
from replicate.models.decoder import Decoder, DecoderConfig
from replicate.models.lm import LRMap
from replicate.models.trainer import TrainSpec, continued, prefetch, train
from replicate.paths import runs_dir
from replicate.papers.harpe import PAPER_ID, RULER_NIAH_TASKS, RULER_TASKS, HARPEConfig
import replicate.papers.harpe.method as M
import replicate.papers.harpe.baselines  # noqa: F401  (registers the "self_extend" attention part)

plan = Plan(PAPER_ID)

ARMS = {  # arm -> what it is (table order)
    "harpe": "HARPE: per-head bases (peak-valley search), one stage at long_len",
    "harpe_uniform": "HARPE with uniform ascending bases, one stage at long_len",
    "abf_multi": "ABF multi-stage: lengths doubling to long_len, bases b_min -> b_max, equal token shares",
    "abf_single": "ABF single-stage: one base b_max, one stage at long_len",
    "pi": "position interpolation (θ / s), one stage at long_len",
    "yarn": "YaRN (s, β 32 / α 1, logit temperature), one stage at long_len",
    "harpe_short": "control: HARPE's bases trained at the short length (no extension), same tokens",
    "self_extend": "Self-Extend on the short model, training-free (w, G)",
    "short": "the short model itself (Phase A), no extension",
}
TRAINED = ("harpe", "harpe_uniform", "abf_multi", "abf_single", "pi", "yarn", "harpe_short")
TRAINING_FREE = ("self_extend", "short")  # deterministic given the short model: every HARPE seed pairs with them
DECIDING = ("harpe", "abf_multi")
EVAL_REVISION = 5  # part of every evaluation's cache key


def arms(cfg: HARPEConfig) -> list[str]:
    out = [a for a in ARMS if (cfg.run_uniform or a != "harpe_uniform") and (cfg.run_control or a != "harpe_short")]
    return out


def arm_seeds(cfg: HARPEConfig, arm: str) -> range:
    return range(cfg.seed, cfg.seed + (cfg.n_seeds if arm in DECIDING else 1))


# ==================================================================================================== data


@dataclass(frozen=True)
class Rows:
    """Whole fixed-width training rows, one synthetic sample each: ``ids`` (n, T+1) and the loss weight of every
    token ``weight`` (n, T+1): 0 on the EOS padding before the sample, 1 on its prompt, ``answer_weight`` on its
    answer and closing EOS; ``easy`` (n,) marks the rows of the warm-up tasks (``warmup_tasks``). A training row is
    one of them, never cut."""

    ids: np.ndarray
    weight: np.ndarray
    easy: np.ndarray
    samples: np.ndarray | None = None  # (n,) samples per row (packed rows); None: one each

    @property
    def per_row(self) -> float:
        """Mean synthetic samples per row."""
        return 1.0 if self.samples is None else float(self.samples.mean())


@dataclass(frozen=True)
class MixedBatches:
    """Phase A / B training batches, a pure function of (seed, step) as ``replicate.data.lm.Batches``: each row is
    a text window of the stream (probability 1 - ``frac``, every token weight 1) or a whole retrieval row drawn from
    ``rows`` (probability ``frac``, its own weights). ``batch(step)`` is ``{"ids": (B, T+1), "loss_weight": (B,
    T+1)}`` (``CausalLM``'s weighted loss)."""

    stream: np.ndarray
    rows: Rows | None
    frac: float
    batch_size: int
    seq_len: int
    seed: int
    offset: int = 0
    copy_frac: float = 0.0  # share of copy rows: a random text span of 8 .. T/2 tokens repeated to fill the row
    warmup_until: int = 0  # before this (global) step, retrieval rows come from the warm-up tasks' rows only

    def batch(self, step: int) -> dict:
        rng = np.random.default_rng([self.seed, step + self.offset])
        B, T = self.batch_size, self.seq_len
        u = rng.random(B)
        pick = u < self.frac if self.rows is not None else np.zeros(B, dtype=bool)
        copy = ~pick & (u < self.frac + self.copy_frac)
        ids, weight = np.empty((B, T + 1), dtype=np.int64), np.ones((B, T + 1), dtype=np.float32)
        text = np.flatnonzero(~pick & ~copy)
        if len(text):
            ids[text] = lm.Stream(self.stream).sample(rng, len(text), T)
        for r in np.flatnonzero(copy):  # dense induction targets: every token after the first span repeats
            k = int(rng.integers(8, max(9, T // 2 + 1)))
            start = int(rng.integers(0, len(self.stream) - k))
            ids[r] = np.resize(self.stream[start: start + k], T + 1)
        ret = np.flatnonzero(pick)
        if len(ret):
            if self.rows.ids.shape[1] != T + 1:
                raise ValueError(f"seq_len: rows of {self.rows.ids.shape[1]} tokens cannot serve seq_len {T}")
            pool = np.flatnonzero(self.rows.easy) if step + self.offset < self.warmup_until else None
            if pool is not None and len(pool):
                j = pool[rng.integers(0, len(pool), size=len(ret))]
            else:
                j = rng.integers(0, len(self.rows.ids), size=len(ret))
            ids[ret], weight[ret] = self.rows.ids[j], self.rows.weight[j]
        return {"ids": torch.from_numpy(ids), "loss_weight": torch.from_numpy(weight)}


@dataclass(frozen=True)
class Prompt:
    kind: str  # "ruler" | "heat" | "passkey"
    task: str
    length: int
    depth: float | None
    index: int
    ids: tuple  # prompt token ids
    n_answer: int  # answer tokens
    sample: synthetic.Sample


@dataclass(frozen=True)
class Data:
    tok: object
    n_ids: int
    eos: int
    stream: np.ndarray
    description: str
    pools: dict  # length -> (n, length + 1) retrieval rows (training)
    windows: torch.Tensor  # (W, seq_len + 1) held-out windows (validity, retention)
    ppl_windows: dict  # length -> (W, length + 1) held-out windows, nested: the last length + 1 tokens of W windows
    prompts: tuple  # Prompt, evaluation
    unigram_nats: float
    bigram_nats: float
    seen_bigram_nats: float  # the bigram of every row Phase A saw, on the held-out windows
    gold_scores: tuple  # score(gold answer, sample) of every evaluation prompt (must all be 1.0)
    n_train_docs: int
    n_heldout_docs: int
    train_tokens: int


def fit_sample(cfg: HARPEConfig, tok, task: str, seed: int, index: int, length: int, docs, depth=None):
    """One sample of ``task`` whose prompt and answer together fit ``length`` tokens (RULER's own generators aim
    at the prompt length only): asked at ``length`` - 7, regenerated shorter by the overflow (three tries). Returns
    (sample, prompt ids, answer ids), or None when the task does not fit the length at all. Training rows and
    evaluation prompts both come from here, so a model is evaluated on the layout it trained on: the answer's last
    token at position ``length`` - 1 at most, never past the positions a model of that length has seen."""
    ask = length - 7
    for _ in range(3):
        try:
            extra = () if depth is None else (depth,)
            smp = synthetic.make(task, seed, index, ask, *extra, tokenizer=tok, header=cfg.prompt_header,
                                 **_docs(task, docs))
        except ValueError:
            return None
        p, a = synthetic.encode(smp, tok)
        over = len(p) + len(a) - length
        if over <= 0:
            return smp, p, a
        ask -= over
    return None


def retrieval_rows(cfg: HARPEConfig, tok, eos: int, docs, length: int, n: int, seed: int) -> Rows:
    """``n`` training rows of ``length`` + 1 tokens, one synthetic sample each (task i mod len(train_tasks)): EOS
    padding (a document boundary), prompt, answer, EOS. At the short length (``seq_len``) sample i fits a length
    drawn uniformly from ``retrieval_min_len`` .. ``length`` (short samples teach retrieval first; the rest of the
    row is padding, weight 0); at the longer lengths of Phase B every sample fills its row. A task that fits
    neither its drawn length nor the whole row gives its turn to the next task."""
    ids, weight, easy, tasks, i = [], [], [], cfg.train_tasks, 0
    lo = min(cfg.retrieval_min_len, length) if length == cfg.seq_len and cfg.retrieval_min_len else length
    while len(ids) < n and i < 4 * n:
        task = tasks[i % len(tasks)]
        want = int(np.random.default_rng([seed, i, 17]).integers(lo, length + 1))
        got = fit_sample(cfg, tok, task, seed, i, want, docs) or (want < length and
                                                                  fit_sample(cfg, tok, task, seed, i, length, docs))
        i += 1
        if not got:
            continue
        _, p, a = got
        pad = length - len(p) - len(a)  # row = pad + prompt + answer + EOS: length + 1 tokens
        ids.append(np.asarray([eos] * pad + p + a + [eos], dtype=np.int64))
        # a token's weight is its weight as a target: the padding 0, the prompt 1 (its first token follows EOS)
        w = np.zeros(length + 1, dtype=np.float32)
        w[pad: pad + len(p)] = 1.0
        w[pad + len(p):] = cfg.answer_weight
        weight.append(w)
        easy.append(task in cfg.warmup_tasks)
    if not ids:
        raise ValueError(f"train_tasks: none of {', '.join(tasks)} fits a training row of {length} tokens")
    return Rows(np.stack(ids), np.stack(weight), np.asarray(easy, dtype=bool))


def packed_rows(cfg: HARPEConfig, tok, eos: int, docs, length: int, n: int, seed: int) -> Rows:
    """Phase-B rows (``long_pack``, lengths above ``seq_len``): ``n`` rows of ``length`` + 1 tokens, each holding
    synthetic samples back to back (EOS, prompt, answer, EOS, prompt, ...). Sample k fits a length drawn uniformly
    from ``retrieval_min_len`` .. the room left in the row, so a row mixes short and long samples: the short skill is
    rehearsed under the new positions while the long samples teach the extension. A remainder shorter than
    ``retrieval_min_len`` is EOS padding (weight 0). Weights as ``retrieval_rows``: prompt 1, answer and its closing
    EOS ``answer_weight``."""
    lo, tasks = max(cfg.retrieval_min_len, 16), cfg.train_tasks
    ids, weight, count, i = [], [], [], 0
    for _ in range(n):
        row, w, k, misses = [eos], [0.0], 0, 0
        while length + 1 - len(row) >= lo and misses < 2 * len(tasks):
            room = length + 1 - len(row)
            want = int(np.random.default_rng([seed, i, 17]).integers(lo, room + 1))
            got = fit_sample(cfg, tok, tasks[i % len(tasks)], seed, i, want - 1, docs)  # + its closing EOS
            i += 1
            if not got:
                misses += 1
                continue
            _, p, a = got
            row += p + a + [eos]
            w += [1.0] * len(p) + [cfg.answer_weight] * (len(a) + 1)
            k, misses = k + 1, 0
        pad = length + 1 - len(row)
        ids.append(np.asarray(row + [eos] * pad, dtype=np.int64))
        weight.append(np.asarray(w + [0.0] * pad, dtype=np.float32))
        count.append(k)
    if not sum(count):
        raise ValueError(f"train_tasks: none of {', '.join(tasks)} fits a training row of {length} tokens")
    return Rows(np.stack(ids), np.stack(weight), np.zeros(n, dtype=bool), np.asarray(count))


def _docs(task: str, docs) -> dict:
    return {} if task == "frequent_words" else {"docs": docs}


def _pool_size(cfg: HARPEConfig, steps: int, rows: int) -> int:
    return max(1, min(cfg.retrieval_pool, int(np.ceil(steps * rows * cfg.retrieval_frac)) + 4))


def stage_plan(cfg: HARPEConfig, b_min: float, b_max: float) -> list[tuple[float, int, int, int]]:
    """ABF multi-stage as (base, length, rows per step, steps) per stage: equal steps (the remainder to the last),
    the same tokens per step (rows x length = cont_batch_size x long_len)."""
    sched = M.multi_stage_schedule(cfg.rope_theta, b_min, b_max, cfg.seq_len, cfg.long_len, cfg.multi_stages)
    n = len(sched)
    steps = [cfg.cont_steps // n] * (n - 1) + [cfg.cont_steps - (n - 1) * (cfg.cont_steps // n)]
    return [(b, L, cfg.cont_batch_size * cfg.long_len // L, s) for (b, L), s in zip(sched, steps)]


def train_lengths(cfg: HARPEConfig) -> dict:
    """length -> rows of the retrieval pool needed at it (Phase A, Phase B, multi-stage stages, the control)."""
    lo, hi = cfg.base_range
    need = {cfg.seq_len: _pool_size(cfg, cfg.steps, cfg.batch_size)}
    need[cfg.long_len] = _pool_size(cfg, cfg.cont_steps, cfg.cont_batch_size)
    for _, L, rows, steps in stage_plan(cfg, lo, hi):
        need[L] = max(need.get(L, 0), _pool_size(cfg, steps, rows))
    return need


def _eval_prompts(cfg: HARPEConfig, tok, eos: int, docs) -> list[Prompt]:
    """The evaluation prompts (held-out plays as haystacks, seed ``eval_seed``): every RULER task at every length
    (a task too long for a length has no cell there), and the single-needle heat map. Laid out as the training rows
    (``fit_sample``): a cell's prompts are left-padded with EOS to ``length`` minus the cell's longest answer, so
    every answer ends inside the length and the prompts of a cell decode in one batch."""
    out = []

    def cell(kind, task, L, depth, seed, n):
        got = [(i, fit_sample(cfg, tok, task, seed, i, L, docs, depth)) for i in range(n)]
        got = [(i, g) for i, g in got if g]
        width = L - max((len(a) for _, (_, _, a) in got), default=0)
        for i, (smp, p, a) in got:
            out.append(Prompt(kind, task, L, depth, i, tuple([eos] * (width - len(p)) + p), len(a), smp))

    for task in RULER_TASKS:
        for L in cfg.eval_lengths:
            cell("ruler", task, L, None, cfg.eval_seed, cfg.eval_samples)
    for L in cfg.eval_lengths:
        for dp in cfg.heat_depths:
            cell("heat", cfg.heat_task, L, dp, cfg.eval_seed + 1, cfg.heat_samples)
    for L in cfg.eval_lengths:  # passkey retrieval (the classic test: a number in repeated filler text)
        cell("passkey", "passkey", L, None, cfg.eval_seed + 2, cfg.eval_samples)
    return out


@plan.step
def data(cfg: HARPEConfig) -> Data:
    text = lm_text("shakespeare", cfg.vocab_size, cfg.heldout_fraction, cfg.doc_max_bytes,
                   name=f"harpe-bpe{cfg.vocab_size}")
    tok, eos = text.tok, text.eos_id
    pools = {}
    for k, (L, n) in enumerate(sorted(train_lengths(cfg).items())):  # Phase B above seq_len: packed rows
        make = packed_rows if cfg.long_pack and L > cfg.seq_len else retrieval_rows
        pools[L] = make(cfg, tok, eos, text.train_docs, L, n, cfg.seed + k)
    windows = lm.eval_windows(text.held_ids, 64 if cfg.scale != "smoke" else 8, cfg.seq_len)
    longest = max(cfg.eval_lengths)
    try:
        full = lm.eval_windows(text.held_ids, cfg.ppl_windows, longest)
    except ValueError:  # held-out plays too short (smoke): windows across plays
        full = lm.eval_windows([lm.join(text.held_ids, eos)], cfg.ppl_windows, longest)
    ppl = {L: full[:, -(L + 1):].contiguous() for L in cfg.eval_lengths}  # nested: the same last tokens
    prompts = tuple(_eval_prompts(cfg, tok, eos, text.held_docs))
    gold = tuple(synthetic.score(p.sample.answer, p.sample) for p in prompts)
    desc = f"{text.description};retrieval={cfg.retrieval_frac}:{_pool_hash(pools[cfg.seq_len])}"  # Phase A's
    d0 = Data(tok, text.n_ids, eos, text.stream, desc, pools, windows, ppl, prompts, 0.0, 0.0, 0.0, gold,
              len(text.train_docs), len(text.held_docs), int(len(text.stream)))
    unigram, bigram, _ = count_bars(text.stream, text.n_ids, windows, None, 0, ())
    seen = float(KneserNeyBigram(seen_windows(pretrain_batches(cfg, d0), cfg.steps), text.n_ids).nll(windows).mean())
    return dataclasses.replace(d0, unigram_nats=unigram, bigram_nats=bigram, seen_bigram_nats=seen)


def _pool_hash(rows: Rows) -> str:
    return hashlib.sha256(rows.ids.tobytes() + rows.weight.tobytes()).hexdigest()[:16]


def _batches(cfg: HARPEConfig, d: Data, length: int, rows: int, seed: int, offset: int,
             copy_frac: float = 0.0, frac: float | None = None) -> MixedBatches:
    return MixedBatches(d.stream, d.pools[length] if cfg.retrieval_frac > 0 else None,
                        cfg.retrieval_frac if frac is None else frac, rows, length, seed, offset, copy_frac)


def cont_frac(cfg: HARPEConfig, d: Data, length: int, rows: int) -> float:
    """Phase B: the share of retrieval rows at ``length`` (``rows`` per step) that gives every arm and every stage
    the same expected number of synthetic samples per step as a one-stage arm at ``long_len`` (``retrieval_frac``
    x ``cont_batch_size`` rows of ``long_len``). Shorter rows hold fewer samples each but come in more rows per
    step; without this, ABF multi-stage's early stages (and the short control) saw ~2-4x the answers."""
    if cfg.retrieval_frac == 0:
        return 0.0
    want = cfg.retrieval_frac * cfg.cont_batch_size * d.pools[cfg.long_len].per_row
    return min(1.0, want / (rows * d.pools[length].per_row))


def cont_batches(cfg: HARPEConfig, d: Data, length: int, rows: int, seed: int, offset: int) -> MixedBatches:
    return _batches(cfg, d, length, rows, seed, offset, frac=cont_frac(cfg, d, length, rows))


def cont_description(cfg: HARPEConfig, d: Data) -> str:
    """Phase B's data (its pools and the sample-count matching), part of every extension run's key."""
    longer = ":".join(f"{L}={_pool_hash(d.pools[L])}" for L in sorted(d.pools) if L > cfg.seq_len)
    return f";phase=B;pools={longer};pack={cfg.long_pack}"


def pretrain_batches(cfg: HARPEConfig, d: Data) -> lm.Batches:
    return dataclasses.replace(_batches(cfg, d, cfg.seq_len, cfg.batch_size, cfg.seed, 0, cfg.copy_frac),
                               warmup_until=int(round(cfg.warmup_tasks_frac * cfg.steps)))


# ================================================================================================== bases


@dataclass(frozen=True)
class Bases:
    b_min: float
    b_max: float
    stride: float
    harpe: tuple  # per-head bases, peak-valley search, in head order
    uniform: tuple  # uniform ascending
    stages: tuple  # ABF multi-stage: (base, length, rows, steps)
    frame: pd.DataFrame  # head, scheme, base


@plan.step
def bases(cfg: HARPEConfig) -> Bases:
    lo, hi = cfg.base_range
    stride = (hi - lo) / cfg.n_candidates
    searched = M.peak_valley_search(cfg.n_heads, lo, hi, stride, cfg.head_dim, cfg.search_length or cfg.long_len,
                                    prominence=cfg.search_prominence, normalise=cfg.search_normalise)
    if cfg.base_order == "descending":
        searched = searched[::-1]
    uniform = M.uniform_bases(cfg.n_heads, lo, hi, "ascending")
    rows = [{"head": h, "scheme": s, "base": b} for s, bs in (("peak_valley", searched), ("uniform", uniform))
            for h, b in enumerate(bs)]
    return Bases(lo, hi, stride, tuple(searched), uniform, tuple(stage_plan(cfg, lo, hi)), pd.DataFrame(rows))


# ================================================================================================= models


def model_config(cfg: HARPEConfig, n_ids: int, arm: str, b: Bases, *, theta: float | None = None,
                 max_len: int | None = None) -> DecoderConfig:
    """The decoder of ``arm`` (the short model: arm "short"), context ``max_len`` (default: long_len)."""
    base = dataclasses.replace(cfg.decoder(n_ids), max_seq_len=max_len or cfg.long_len, rope_theta=cfg.rope_theta)
    if arm in ("short", "abf_multi"):
        return dataclasses.replace(base, rope_theta=theta or cfg.rope_theta)
    if arm == "abf_single":
        return dataclasses.replace(base, rope_theta=b.b_max)
    if arm == "self_extend":
        return dataclasses.replace(base, attention="self_extend",
                                   attention_kwargs=(("window", cfg.window), ("group", cfg.group)))
    if arm in ("harpe", "harpe_short"):
        kw = M.position_kwargs(arm, bases=b.harpe)
    elif arm == "harpe_uniform":
        kw = M.position_kwargs(arm, bases=b.uniform)
    elif arm == "pi":
        kw = M.position_kwargs(arm, factor=cfg.factor)
    elif arm == "yarn":
        kw = M.position_kwargs(arm, factor=cfg.factor, short_len=cfg.seq_len) + (
            ("beta_fast", cfg.yarn_beta_fast), ("beta_slow", cfg.yarn_beta_slow))
    else:
        raise ValueError(f"arm: unknown {arm!r}; allowed: {', '.join(ARMS)}")
    return dataclasses.replace(base, position_kwargs=kw)


def pretrain_spec(cfg: HARPEConfig, d: Data, b: Bases) -> TrainSpec:
    return TrainSpec(model_config(cfg, d.n_ids, "short", b, max_len=cfg.seq_len), cfg.optim(cfg.steps),
                     d.description + f";phase=A;copy={cfg.copy_frac};warm={cfg.warmup_tasks}:{cfg.warmup_tasks_frac}", cfg.batch_size, cfg.seq_len, cfg.seed,
                     ckpt_every=max(10, cfg.steps // 4))


def train_pretrain(cfg: HARPEConfig, d: Data, b: Bases) -> dict:
    threads = cfg.threads * cfg.workers if cfg.threads else 0  # alone on the machine: every worker's cores
    kw = cfg.trainer_kwargs() | {"threads": threads}
    return train(PAPER_ID, pretrain_spec(cfg, d, b), pretrain_batches(cfg, d), {"heldout": d.windows},
                 keep_weights=True, **kw)


def pretrained(cfg: HARPEConfig, d: Data, b: Bases) -> dict:
    """The finished Phase-A run read from the cache without its lock (the extension runs start from it at once)."""
    done = torch_load(runs_dir() / PAPER_ID / pretrain_spec(cfg, d, b).key / "result.pt")
    return done if done is not None and "state_dict" in done else train_pretrain(cfg, d, b)


@plan.step
def pretrain(cfg: HARPEConfig, data: Data, bases: Bases) -> dict:
    return train_pretrain(cfg, data, bases)


def train_arm(cfg: HARPEConfig, d: Data, b: Bases, arm: str, seed: int) -> dict:
    """One Phase-B run of ``arm`` from the short model's weights, seed ``seed``'s rows (offset past Phase A). ABF
    multi-stage: its stages in order, each continuing the one before on the rest of the same learning-rate schedule;
    the result is the last stage's, with every stage's wall time summed."""
    parent = pretrained(cfg, d, b)
    sched = cfg.optim(cfg.cont_steps, prefix="cont_")
    desc = d.description + cont_description(cfg, d) + f";arm={arm}"
    if arm == "abf_multi":
        done, wall = 0, 0.0
        for k, (theta, L, rows, steps) in enumerate(b.stages):
            spec = TrainSpec(model_config(cfg, d.n_ids, arm, b, theta=theta), dataclasses.replace(sched,
                             max_steps=steps), desc + f";stage={k}", rows, L, seed, ckpt_every=max(5, steps // 2))
            lr_map = LRMap(sched, offset=done)
            spec = continued(spec, parent, "none", lr_map)
            res = train(PAPER_ID, spec, cont_batches(cfg, d, L, rows, seed, cfg.steps + done), {"heldout": d.windows},
                        keep_weights=True, parent=parent, **cfg.trainer_kwargs())
            done, wall, parent = done + steps, wall + res["wall_s"], res
        return res | {"wall_s": wall}
    L = cfg.seq_len if arm == "harpe_short" else cfg.long_len
    rows = cfg.cont_batch_size * cfg.long_len // L
    spec = TrainSpec(model_config(cfg, d.n_ids, arm, b), sched, desc, rows, L, seed,
                     ckpt_every=max(5, cfg.cont_steps // 4))
    spec = continued(spec, parent, "none")
    return train(PAPER_ID, spec, cont_batches(cfg, d, L, rows, seed, cfg.steps), {"heldout": d.windows},
                 keep_weights=True, parent=parent, **cfg.trainer_kwargs())


@dataclass(frozen=True)
class Runs:
    pretrain: dict
    results: dict  # (arm, seed) -> train() result (with weights)
    frame: pd.DataFrame  # arm, seed, loss (held-out at seq_len), wall_s, tokens


@plan.step
def runs(cfg: HARPEConfig, data: Data, bases: Bases, pretrain: dict) -> Runs:
    calls = [((a, s), functools.partial(train_arm, cfg, data, bases, a, s))
             for a in arms(cfg) if a in TRAINED for s in arm_seeds(cfg, a)]
    prefetch([c for _, c in calls], cfg.workers, cfg.threads)
    res = {k: c() for k, c in calls}
    rows = [{"variant": "short", "seed": cfg.seed, "loss": float(pretrain["final"]["heldout"].double().mean()),
             "wall_s": pretrain["wall_s"], "tokens": cfg.steps * cfg.batch_size * cfg.seq_len}]
    for (a, s), r in res.items():
        rows.append({"variant": a, "seed": s, "loss": float(r["final"]["heldout"].double().mean()),
                     "wall_s": r["wall_s"], "tokens": cfg.cont_steps * cfg.cont_batch_size * cfg.long_len})
    return Runs(pretrain, res, pd.DataFrame(rows))


# ============================================================================================== evaluation


def load_model(cfg: HARPEConfig, d: Data, b: Bases, arm: str, state: dict) -> Decoder:
    """``arm``'s decoder at context max(eval_lengths) with the weights ``state`` (ABF multi: the last stage's base)."""
    theta = b.stages[-1][0] if arm == "abf_multi" else None
    model = Decoder(model_config(cfg, d.n_ids, arm, b, theta=theta,
                                 max_len=max(cfg.long_len, *cfg.eval_lengths) + 64))  # + the answers
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    return model.eval()


@torch.no_grad()
def window_nll(model: Decoder, windows: torch.Tensor, last: int | None = None, chunk: int = 4) -> np.ndarray:
    """Mean next-token loss of each window (W,) over its ``last`` targets (default: all), every position with its
    whole window as context."""
    out = []
    for s in range(0, len(windows), chunk):
        w = windows[s: s + chunk]
        loss = torch.nn.functional.cross_entropy(model(w[:, :-1]).logits.float().transpose(1, 2), w[:, 1:],
                                                 reduction="none")
        out.append(loss[:, -(last or loss.shape[1]):].mean(1).double().numpy())
    return np.concatenate(out)


@torch.no_grad()
def answer_prompts(model: Decoder, d: Data, prompts, use_cache: bool = True, batch: int = 16) -> list[str]:
    """Greedy continuation text of each prompt (KV cache), prompts of one token count batched together, each batch
    decoding the longest answer it holds plus 2 tokens (a row stops at EOS)."""
    groups: dict = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p.ids), []).append(i)
    out = [""] * len(prompts)
    for n, idx in groups.items():
        for s in range(0, len(idx), batch):
            part = idx[s: s + batch]
            x = torch.tensor([prompts[i].ids for i in part], dtype=torch.long)
            new = max(prompts[i].n_answer for i in part) + 2
            y = model.generate(x, new, eos_id=d.eos, use_cache=use_cache)[:, n:]
            for i, row in zip(part, y.tolist()):
                out[i] = d.tok.decode([t for t in row if t != d.eos])
    return out


def _eval_key(cfg: HARPEConfig, d: Data, arm: str, weights_key: str) -> str:
    fields = {k: getattr(cfg, k) for k in ("eval_lengths", "eval_samples", "heat_depths", "heat_samples",
                                          "heat_task", "ppl_windows", "eval_seed", "se_window", "se_group",
                                          "prompt_header")}
    text = repr((arm, weights_key, d.description, sorted(fields.items()), EVAL_REVISION, __version__))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _weights(cfg: HARPEConfig, d: Data, b: Bases, arm: str, seed: int) -> dict:
    return pretrained(cfg, d, b) if arm in ("short", "self_extend") else train_arm(cfg, d, b, arm, seed)


def eval_path(cfg: HARPEConfig, d: Data, b: Bases, arm: str, seed: int, res: dict | None = None):
    """Where the evaluation of one model is cached (keyed by its weights' run and every evaluation setting)."""
    res = res or _weights(cfg, d, b, arm, seed)
    return runs_dir() / PAPER_ID / "evals" / f"{_eval_key(cfg, d, arm, res['key'])}.pt"


def evaluate_arm(cfg: HARPEConfig, d: Data, b: Bases, arm: str, seed: int) -> dict:
    """Every evaluation of one model, cached under ``runs/harpe/evals/<key>.pt``: ``ppl`` length -> (W,) losses,
    ``scores`` (one per evaluation prompt, in ``d.prompts`` order), ``answers`` (the decoded text)."""
    res = _weights(cfg, d, b, arm, seed)
    path = eval_path(cfg, d, b, arm, seed, res)
    done = torch_load(path)
    if done is not None:
        return done
    model = load_model(cfg, d, b, arm, res["state_dict"])
    # tensors and plain types only: the cache is read back with weights_only=True
    # the same final seq_len targets of every window, read with L tokens of context (L = each evaluation length)
    ppl = {int(L): torch.from_numpy(window_nll(model, w, last=cfg.seq_len)) for L, w in d.ppl_windows.items()}
    answers = answer_prompts(model, d, d.prompts, batch=4 if arm == "self_extend" else 16)  # eager scores: smaller
    scores = torch.tensor([synthetic.score(a, p.sample) for a, p in zip(answers, d.prompts)], dtype=torch.float64)
    out = {"arm": arm, "seed": int(seed), "ppl": ppl, "scores": scores, "answers": list(answers)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch_save(path, out)
    return out


@dataclass(frozen=True)
class Evals:
    ppl: pd.DataFrame  # variant, seed, length, window, nll
    scores: pd.DataFrame  # variant, seed, kind, task, length, depth, index, score
    answers: dict  # (variant, seed) -> decoded answers


def eval_models(cfg: HARPEConfig) -> list[tuple[str, int]]:
    return [(a, s) for a in arms(cfg) for s in (arm_seeds(cfg, a) if a in TRAINED else [cfg.seed])]


@plan.step
def evals(cfg: HARPEConfig, data: Data, bases: Bases, runs: Runs) -> Evals:
    calls = [functools.partial(evaluate_arm, cfg, data, bases, a, s) for a, s in eval_models(cfg)]
    prefetch(calls, cfg.workers, cfg.threads)
    ppl_rows, score_rows, answers = [], [], {}
    meta = pd.DataFrame([{"kind": p.kind, "task": p.task, "length": p.length, "depth": p.depth, "index": p.index}
                         for p in data.prompts])
    for call, (a, s) in zip(calls, eval_models(cfg)):
        e = call()
        for L, v in e["ppl"].items():
            ppl_rows += [{"variant": a, "seed": s, "length": L, "window": i, "nll": float(x)}
                         for i, x in enumerate(v.tolist())]
        score_rows.append(meta.assign(variant=a, seed=s, score=np.asarray(e["scores"], dtype=float)))
        answers[(a, s)] = e["answers"]
    return Evals(pd.DataFrame(ppl_rows), pd.concat(score_rows, ignore_index=True), answers)


# ============================================================================================= comparisons


def niah_at(e: Evals, variant: str, length: int | None = None) -> pd.DataFrame:
    """Per seed and sample: the mean score over RULER's 8 NIAH tasks at ``length`` (None: every length), as
    (seed x sample id) -> score, sample id = (task, length, index)."""
    f = e.scores[(e.scores["kind"] == "ruler") & (e.scores["variant"] == variant) &
                 e.scores["task"].isin(RULER_NIAH_TASKS)]
    if length is not None:
        f = f[f["length"] == length]
    return f


@dataclass(frozen=True)
class Comparisons:
    frame: pd.DataFrame  # comparison, metric, point, lo, hi, per-seed gaps
    per_seed: dict  # (metric, comparison) -> per-seed gaps
    boot: dict  # (metric, comparison) -> bootstrap replicates (paired over samples / windows; seed `seed`)


def _paired_boot(a: np.ndarray, b: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n, len(a)))
    return (a[idx] - b[idx]).mean(1)


def metric_vectors(cfg: HARPEConfig, e: Evals, variant: str, seed: int) -> dict:
    """The per-item vectors each metric averages (items in a fixed order, so two arms pair item by item):
    ``niah_long`` (NIAH samples at long_len), ``niah_above`` (the lengths above seq_len: a window-sensitivity
    check, no claim uses it), ``niah_all`` (every length), ``ruler`` (11 tasks, every length),
    ``heat`` (heat-map cells), ``ppl_long`` (-loss per window at the lengths above seq_len: higher = better),
    ``short_ppl`` (-loss at seq_len)."""
    s = e.scores[(e.scores["variant"] == variant) & (e.scores["seed"] == seed)]
    r = s[s["kind"] == "ruler"]
    niah = r[r["task"].isin(RULER_NIAH_TASKS)]
    p = e.ppl[(e.ppl["variant"] == variant) & (e.ppl["seed"] == seed)]
    longest = max(cfg.eval_lengths)
    return {"niah_long": niah[niah["length"] == longest]["score"].to_numpy(),
            "niah_all": niah["score"].to_numpy(), "niah_above": niah[niah["length"] > cfg.seq_len]["score"].to_numpy(),
            "ruler": r["score"].to_numpy(),
            "heat": s[s["kind"] == "heat"]["score"].to_numpy(),
            "ppl_long": -p[p["length"] > cfg.seq_len].sort_values(["length", "window"])["nll"].to_numpy(),
            "short_ppl": -p[p["length"] == cfg.seq_len].sort_values("window")["nll"].to_numpy()}


METRICS = ("niah_long", "niah_above", "niah_all", "ruler", "heat", "ppl_long", "short_ppl")
PAIRS = (("harpe", "abf_multi"), ("harpe", "abf_single"), ("abf_multi", "abf_single"), ("harpe", "pi"),
         ("harpe", "yarn"), ("harpe", "self_extend"), ("harpe", "harpe_uniform"), ("harpe", "harpe_short"),
         ("harpe", "short"))


@plan.step
def comparisons(cfg: HARPEConfig, evals: Evals) -> Comparisons:
    have = {a for a, _ in eval_models(cfg)}
    rows, per_seed, boot = [], {}, {}
    for a, b in PAIRS:
        if a not in have or b not in have:
            continue
        seeds = sorted(set(arm_seeds(cfg, a) if a in TRAINED else [cfg.seed]) &
                       set(arm_seeds(cfg, b) if b in TRAINED else [cfg.seed]))
        if b in TRAINING_FREE:  # one deterministic model: each of a's seeds against it
            seeds = list(arm_seeds(cfg, a) if a in TRAINED else [cfg.seed])
        for m in METRICS:
            gaps = []
            for s in seeds:
                va = metric_vectors(cfg, evals, a, s)[m]
                vb = metric_vectors(cfg, evals, b, cfg.seed if b in TRAINING_FREE else s)[m]
                if len(va) and len(va) == len(vb):
                    gaps.append(float(va.mean() - vb.mean()))
            va, vb = metric_vectors(cfg, evals, a, cfg.seed)[m], metric_vectors(cfg, evals, b, cfg.seed)[m]
            reps = _paired_boot(va, vb, cfg.n_boot, cfg.seed) if len(va) and len(va) == len(vb) else np.array([])
            key = (m, f"{a} - {b}")
            per_seed[key], boot[key] = gaps, reps
            lo, hi = (np.percentile(reps, [2.5, 97.5]) if len(reps) else (np.nan, np.nan))
            rows.append({"comparison": f"{a} - {b}", "metric": m, "seeds": len(gaps),
                         "gap_seed_mean": float(np.mean(gaps)) if gaps else np.nan,
                         "gap_seed0": gaps[0] if gaps else np.nan, "boot_lo": float(lo), "boot_hi": float(hi),
                         "per_seed": " / ".join(f"{g:+.4f}" for g in gaps)})
    return Comparisons(pd.DataFrame(rows), per_seed, boot)


run_experiments = plan.run_all
