"""UniAttn's experiments, as one plan (``run_experiments(cfg)`` -> the bundle ``report.py`` reads).

Steps, in order (the notebook runs one per cell):

- ``data``: Shakespeare's plays split by whole plays, a byte-level BPE, the pre-training stream, held-out windows and
  the count models (unigram, Kneser-Ney bigrams); the post-training domain: instruction-style questions about
  passages of the training plays (``replicate.data.synthetic.instruction_qa``: speaker, next line, word count; exact
  answers) as answer-only rows, the held-out questions from the held-out plays, the calibration rows (the first
  ``n_calib`` training rows), and the answer-token unigram (the post-training domain's count bar).
- ``pretrain``: the dense decoder from scratch (one run, cached with its weights, shared by every method).
- ``runs``: every method post-trained from it (``schedule``), FT and UniAttn with ``n_seeds`` seeds, FT-2x with
  ``ft2x_seeds``, the other arms (softmax sharing, CLA, LLMDrop, GQA, their exposure-matched arms, and the ablation
  arms ``ablations`` names) with seed ``seed``. Batch t of seed s is the same rows in every arm that reads it
  (``MaskedBatches``: drawn by (s, t)). Protocol ``paper`` (spec §3.5: each stage one epoch over the same data,
  default): every arm's full-parameter steps are ``sft_steps`` steps on the shared batches 0 .. ``sft_steps − 1``; a
  two-stage UniAttn arm first trains W_c alone for ``stage1_steps`` over those same batches (a first pass; from batch 0
  again when longer), then everything for ``sft_steps`` on them again (stage 2's step t reads FT's batch t), a fresh
  schedule per stage. An exposure-matched arm (FT-2x, and ``<arm>2x`` for each of ``matched_arms``) trains every
  parameter on exactly UniAttn's reads in UniAttn's order (UniAttn's data exposure, more compute):
  ``matched_schedule='restart'`` in two runs with a fresh schedule each, as UniAttn's stages (the first is the one-pass
  arm's own run when stage 1 is one epoch: trained once, inside the matched arm's task), ``'single'`` in one run.
  Protocol ``step_matched`` (ours): every arm ``sft_steps`` steps on batches 0 .. ``sft_steps − 1``, UniAttn's two
  stages splitting them (``stage1_frac``), no matched arms. Stage 2 starts from stage 1's final weights; UniAttn's W_c
  is set in closed form on the calibration rows before stage 1 (the fit measures in eval mode and hands the module back
  in train mode). GQA and UniAttn-on-GQA both start from the GQA conversion of the pre-trained model (K/V heads
  mean-pooled, no training of its own). Every evaluated stage also scores the held-out rows at ``1 − drift_frac`` of
  its final pass over the shared batches (the convergence check; the same point of the shared steps in every arm).
  With ``workers`` > 1 the runs train side by side in worker processes first, the longest first.
- ``analysis``: from each run's final weights: parameters, cache bytes and counted attention work per decode step
  (every arm), KV-cache decode latency at ``bench_contexts`` (one arm per distinct architecture; SDPA where the arm
  allows it, and every layer eager; ``bench_repeats`` rounds interleaved over the arms, the ratio to FT paired by
  round), the softmax share of eager attention, the softmax-similarity maps before and after fine-tuning (every FT
  seed), the initial
  (pre-training) answer loss of each UniAttn initialisation (closed form, zero, the code's mean recipe: trained or
  not) and its calibration residuals, LLMDrop's layer scores.
- ``comparisons``: paired gaps of the held-out answer loss and answer-token accuracy (by seed; bootstrap over held-out
  rows), every arm against UniAttn, UniAttn-on-GQA against GQA (one pass and matched), softmax sharing against UniAttn
  in one stage (C7's schedule-matched contrast); how each gap still moved at the end: on the held-out rows (the gap at
  the end − at ``1 − drift_frac`` of the shared steps) and on the paired training loss (same batches); the adjacent −
  distant softmax similarity inside the unified layers and over the whole depth, per FT seed.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from replicate.data import synthetic as S
from replicate.data.lm import MaskedBatches
from replicate.data.text import LMData, lm_data, lm_text, stream_batches
from replicate.experiments import Plan
from replicate.io import torch_load
from replicate.models import convert
from replicate.models.attention import attention_probs, probs_times_values
from replicate.models.decoder import Decoder, DecoderConfig
from replicate.models.generate import KVCache
from replicate.models.lm import CausalLM
from replicate.models.trainer import TrainSpec, continued, prefetch, torch_threads, train
from replicate.paths import runs_dir
from replicate.papers.uniattn import PAPER_ID, UniAttnConfig
import replicate.papers.uniattn.method as M

plan = Plan(PAPER_ID)

# arm -> what it is (table order)
ARMS = {
    "ft": "standard post-training (full fine-tuning, one stage)",
    "ft2x": ("FT-2x: full fine-tuning given UniAttn's data exposure: every parameter trained on UniAttn's reads in its "
             "order (matched_schedule; control of C3)"),
    "softmax": "softmax sharing in the SuperBlocks, no compensation, one stage",
    "softmax2x": "softmax sharing without compensation, given UniAttn's data exposure (two passes, every parameter)",
    "uniattn": "UniAttn: softmax sharing + W_c (closed-form init), two stages (W_c only, then everything)",
    "cla": "cross-layer KV sharing (CLA) on the same layers",
    "cla2x": "CLA given UniAttn's data exposure (two passes, every parameter)",
    "llmdrop": "attention-layer dropping (LLMDrop): the U lowest-scored attention sub-layers removed",
    "llmdrop2x": "LLMDrop given UniAttn's data exposure (two passes, every parameter)",
    "gqa": "MHA→GQA uptraining (K/V heads mean-pooled, then post-trained)",
    "gqa2x": "MHA→GQA uptraining given UniAttn's data exposure (two passes, every parameter)",
    "uniattn_gqa": "UniAttn on the GQA conversion (the same parent as GQA; UniAttn's schedule)",
    "uniattn_zero": "UniAttn with W_c = 0 at init (ablation)",
    "uniattn_mean": "UniAttn with W_c by the code's recipe: pinv of the position-wise calibration means (ablation)",
    "uniattn_1stage": "UniAttn, closed-form init, one stage: FT's steps and batches, no W_c stage (ablation)",
    "uniattn_bottom": "UniAttn on the bottom layers instead of the top (choice of layers)",
}
UNIATTN_ARMS = ("uniattn", "uniattn_gqa", "uniattn_zero", "uniattn_mean", "uniattn_1stage", "uniattn_bottom")
DECIDING = ("ft", "uniattn")


MAIN = ("ft", "softmax", "uniattn", "cla", "llmdrop", "gqa")
INITS = ("uniattn", "uniattn_zero", "uniattn_mean")  # measured before training whether or not their arms train


def base_arm(arm: str) -> str:
    """The arm whose model an exposure-matched arm trains (``cla2x`` -> ``cla``, ``ft2x`` -> ``ft``); others: itself."""
    return arm[:-2] if arm.endswith("2x") else arm


def is_matched(arm: str) -> bool:
    """An exposure-matched arm: FT-2x or <baseline>2x (every parameter trained on UniAttn's reads, its order)."""
    return arm.endswith("2x")


def has_ft2x(cfg: UniAttnConfig) -> bool:
    """FT-2x trains under the paper protocol only (step-matched, UniAttn spends no more than FT)."""
    return cfg.paper_protocol and cfg.ft2x_seeds > 0


def has_matched(cfg: UniAttnConfig, base: str) -> bool:
    """Whether ``base`` (ft or a baseline of ``MATCHABLE``) trains an exposure-matched arm: under the paper protocol
    only (step-matched, UniAttn reads no more data than any arm)."""
    if base == "ft":
        return has_ft2x(cfg)
    return cfg.paper_protocol and base in cfg.matched_arms


def arms(cfg: UniAttnConfig) -> list[str]:
    """The arms trained, in table order: the main ones, the exposure-matched ones (paper protocol: FT-2x and
    ``matched_arms``), the ablation arms ``cfg.ablations`` names."""
    return [a for a in ARMS if a in MAIN or a in cfg.ablations or (is_matched(a) and has_matched(cfg, base_arm(a)))]


def judged_arm(cfg: UniAttnConfig, base: str) -> str:
    """The arm a comparison with UniAttn is judged against (``judge_exposure``): the exposure-matched ``<base>2x``
    where it trained and ``judge_exposure='matched'``, else the one-pass ``base``."""
    return base + "2x" if cfg.judge_exposure == "matched" and has_matched(cfg, base) else base


def bench_arms(cfg: UniAttnConfig) -> list[str]:
    """The arms whose decode latency is timed: one per distinct architecture. The init and stage ablations share
    UniAttn's modules exactly, an exposure-matched arm its one-pass arm's, and the bottom-layer arm has UniAttn's counts
    at other depths: not timed again."""
    return [a for a in arms(cfg) if a in MAIN or a == "uniattn_gqa"]


def cost_weight(cfg: UniAttnConfig, arm: str) -> float:
    """Relative training cost of an arm (for ordering the side-by-side runs, longest first): a W_c-only step costs
    about 0.4 of a full one (no weight gradients below the first member). An exposure-matched arm counts its first
    pass too (its task trains it when it is the one-pass arm's run)."""
    return sum(st["steps"] * (0.4 if st["trainable"] else 1.0) for st in schedule(cfg, arm))


def seeds_of(cfg: UniAttnConfig, arm: str) -> list[int]:
    n = cfg.n_seeds if arm in DECIDING else cfg.ft2x_seeds if arm == "ft2x" else 1
    return list(range(cfg.seed, cfg.seed + n))


# ==================================================================================================== data


@dataclass(frozen=True)
class Data:
    lm: LMData  # tokenizer, pre-training stream, held-out windows, unigram / bigram bars
    eos_id: int
    train_ids: torch.Tensor  # (N, T+1) answer-only rows of the training plays
    train_mask: torch.Tensor  # (N, T+1) True on answer tokens
    eval_ids: torch.Tensor  # (W, T+1) rows of the held-out plays
    eval_mask: torch.Tensor
    eval_kinds: tuple  # per held-out row: speaker | next_line | word_count
    answer_unigram: float  # held-out answer tokens' cross-entropy under the add-one unigram of training answers
    dropped: tuple  # (training, held-out) rows longer than the context, left out
    description: str

    @property
    def n_ids(self) -> int:
        return self.lm.n_ids

    @property
    def calib(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_ids, self.train_mask

    def eval_sets(self) -> dict:
        return {"qa": {"ids": self.eval_ids, "loss_mask": self.eval_mask}, "lm": self.lm.windows}


def _rows(samples, tok, eos, seq_len):
    fit = [s for s in samples if sum(map(len, S.encode(s, tok, eos_id=eos))) <= seq_len + 1]
    b = S.sft_batch(fit, tok, eos_id=eos, pad_id=eos, seq_len=seq_len)
    return b.ids, b.loss_mask, tuple(s.task.removeprefix("qa_") for s in fit), len(samples) - len(fit)


@plan.step
def data(cfg: UniAttnConfig) -> Data:
    text = lm_text("shakespeare", cfg.vocab_size, cfg.heldout_fraction, cfg.doc_max_bytes, name="uniattn")
    lmd = lm_data(text, eval_windows=cfg.eval_windows, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                  steps=cfg.steps, seeds=[cfg.seed])
    tr = S.samples("instruction_qa", cfg.seed, cfg.n_sft_train, docs=text.train_docs, n_lines=cfg.qa_lines)
    ev = S.samples("instruction_qa", cfg.seed + 1, cfg.n_sft_eval, docs=text.held_docs, n_lines=cfg.qa_lines)
    tr_ids, tr_mask, _, tr_drop = _rows(tr, text.tok, text.eos_id, cfg.seq_len)
    ev_ids, ev_mask, kinds, ev_drop = _rows(ev, text.tok, text.eos_id, cfg.seq_len)
    if len(tr_ids) < max(cfg.n_calib, cfg.batch_size) or len(ev_ids) < 2:
        raise ValueError(f"qa_lines: {cfg.qa_lines}-line passages leave too few rows within seq_len={cfg.seq_len}")
    # the answer tokens' count bar: add-one unigram of the training answers' targets on the held-out answers
    tgt = tr_ids[:, 1:][tr_mask[:, 1:]].numpy()
    p = (np.bincount(tgt, minlength=text.n_ids) + 1.0) / (len(tgt) + text.n_ids)
    uni = float(-np.log(p[ev_ids[:, 1:][ev_mask[:, 1:]].numpy()]).mean())
    desc = (f"{lmd.description};sft=instruction_qa:{cfg.seed}:{cfg.n_sft_train}:{cfg.n_sft_eval}:lines{cfg.qa_lines}"
            f":T{cfg.seq_len}")
    return Data(lmd, text.eos_id, tr_ids, tr_mask, ev_ids, ev_mask, kinds, uni, (tr_drop, ev_drop), desc)


# ================================================================================================= models


def _members(cfg: UniAttnConfig, arm: str) -> dict[int, int]:
    if arm == "uniattn_bottom":  # the same number of layers, at the bottom
        return M.superblocks(cfg.n_layers, cfg.group_size, 0, cfg.end - cfg.begin)
    return M.superblocks(cfg.n_layers, cfg.group_size, cfg.begin, cfg.end)


def base_config(cfg: UniAttnConfig, n_ids: int, **kw) -> DecoderConfig:
    return cfg.decoder(n_ids, **kw)


def model_config(cfg: UniAttnConfig, n_ids: int, arm: str, dropped: tuple = ()) -> DecoderConfig:
    arm = base_arm(arm)  # an exposure-matched arm trains its one-pass arm's model
    base = base_config(cfg, n_ids)
    if arm == "ft":
        return base
    if arm in ("gqa", "uniattn_gqa"):
        base = convert.gqa_config(base, cfg.gqa_kv_heads)
    if arm == "gqa":
        return base
    if arm == "softmax":
        return M.unified_config(base, _members(cfg, arm), compensation=False)
    if arm.startswith("uniattn"):
        return M.unified_config(base, _members(cfg, arm))
    if arm == "cla":
        g = 2 if cfg.cla_group == "pairs" else cfg.group_size
        return M.cla_config(base, M.cla_groups(cfg.n_layers, cfg.begin, cfg.end, g))
    if arm == "llmdrop":
        return M.drop_config(base, dropped)
    raise ValueError(f"arm: unknown {arm!r}; allowed: {', '.join(ARMS)}")


def _decoder(model_cfg: DecoderConfig, state: dict) -> Decoder:
    m = Decoder(model_cfg)
    m.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    return m.eval()


def pretrain_spec(cfg: UniAttnConfig, data: Data) -> TrainSpec:
    return TrainSpec(base_config(cfg, data.n_ids), cfg.optim(cfg.steps), data.lm.description + ";phase=pretrain",
                     cfg.batch_size, cfg.seq_len, cfg.seed, ckpt_every=max(10, cfg.steps // 4))


def train_pretrain(cfg: UniAttnConfig, data: Data) -> dict:
    threads = cfg.threads * cfg.workers if cfg.threads else 0  # alone on the machine: every worker's cores
    kw = {**cfg.trainer_kwargs(), "threads": threads}
    return train(PAPER_ID, pretrain_spec(cfg, data), stream_batches(data.lm.stream, cfg.batch_size, cfg.seq_len,
                                                                     cfg.seed), {"heldout": data.lm.windows},
                 keep_weights=True, **kw)


def pretrained(cfg: UniAttnConfig, data: Data) -> dict:
    """The finished pre-training run from the cache without its lock (workers read it at once); trained if absent."""
    done = torch_load(runs_dir() / PAPER_ID / pretrain_spec(cfg, data).key / "result.pt")
    return done if done is not None and "state_dict" in done else train_pretrain(cfg, data)


@plan.step
def pretrain(cfg: UniAttnConfig, data: Data) -> dict:
    return train_pretrain(cfg, data)


def sft_optim(cfg: UniAttnConfig, steps: int, trainable: tuple = ()):
    return dataclasses.replace(cfg.optim(steps, prefix="sft_"), trainable=trainable)


@dataclass(frozen=True)
class Replayed:
    """Batches read in a given order: step t reads batch ``reads[t]`` of ``base`` (rows drawn by (seed, batch)), so a
    stage can read the same batches again (the paper's second epoch over the same data)."""

    base: MaskedBatches
    reads: tuple

    @property
    def seed(self) -> int:
        return self.base.seed

    @property
    def offset(self) -> int:
        return self.reads[0] if self.reads else 0

    def batch(self, step: int) -> dict:
        return self.base.batch(self.reads[step])


def sft_batches(cfg: UniAttnConfig, data: Data, seed: int, reads) -> Replayed:
    """Post-training batches of ``seed``: step t of a stage reads batch ``reads[t]`` of the seed's stream, rows of the
    training pool drawn by (seed, batch): the same rows in every arm that reads that batch (``schedule``)."""
    return Replayed(MaskedBatches(data.train_ids, data.train_mask, cfg.batch_size, seed, 0), tuple(reads))


def two_stage(cfg: UniAttnConfig, arm: str) -> bool:
    return arm.startswith("uniattn") and cfg.two_stage and arm != "uniattn_1stage"


def _epoch(n: int, steps: int) -> tuple:
    """``steps`` steps over the ``n`` shared batches in order, starting again at batch 0 after batch n − 1."""
    return tuple(t % n for t in range(steps))


def schedule(cfg: UniAttnConfig, arm: str) -> list[dict]:
    """The arm's training stages, each a fresh run and schedule: its steps, the batches it reads in step order
    (``reads``: step t reads batch reads[t]), where the stage sits in the final pass over the shared batches 0 ..
    sft_steps − 1 (``pos``: the stage's step t is that pass's step t + pos; None for a stage outside it) and what
    trains (() = everything). Paper protocol (spec §3.5: each stage one epoch over the SAME data): a one-stage arm
    trains ``sft_steps`` on the shared batches; a two-stage arm trains W_c alone for ``s1`` steps on those same batches
    (again from batch 0 when s1 > sft_steps), then everything for ``sft_steps`` on them again, stage 2's step t
    reading FT's batch t. An exposure-matched arm (FT-2x, <baseline>2x) reads exactly UniAttn's reads in UniAttn's
    order, every step full-parameter: ``matched_schedule='restart'`` in two runs like UniAttn's two stages (a first
    pass of ``s1`` steps on stage 1's batches, then ``sft_steps`` on the shared batches, a fresh schedule each; when
    s1 = sft_steps the first pass is the one-pass arm's own run), ``'single'`` in one run of s1 + ``sft_steps`` steps
    and one schedule. Step-matched: every arm ``sft_steps`` on batches 0 .. sft_steps − 1, a two-stage arm splitting
    them (W_c only for ``round(stage1_frac · sft_steps)``, at least 1)."""
    n = cfg.sft_steps
    shared = tuple(range(n))
    if is_matched(arm):
        if not has_matched(cfg, base_arm(arm)):
            raise ValueError(f"arm: {arm} trains only under stage_protocol='paper' with "
                             + ("ft2x_seeds > 0" if arm == "ft2x" else f"{base_arm(arm)!r} in matched_arms"))
        if cfg.matched_schedule == "single":
            return [{"steps": cfg.s1 + n, "reads": _epoch(n, cfg.s1) + shared, "pos": -cfg.s1, "trainable": ()}]
        return [{"steps": cfg.s1, "reads": _epoch(n, cfg.s1), "pos": None, "trainable": ()},
                {"steps": n, "reads": shared, "pos": 0, "trainable": ()}]
    if not two_stage(cfg, arm):
        return [{"steps": n, "reads": shared, "pos": 0, "trainable": ()}]
    if cfg.paper_protocol:
        return [{"steps": cfg.s1, "reads": _epoch(n, cfg.s1), "pos": None, "trainable": M.STAGE1_TRAINABLE},
                {"steps": n, "reads": shared, "pos": 0, "trainable": ()}]
    s1 = min(max(1, round(cfg.stage1_frac * n)), n - 1)
    return [{"steps": s1, "reads": shared[:s1], "pos": 0, "trainable": M.STAGE1_TRAINABLE},
            {"steps": n - s1, "reads": shared[s1:], "pos": s1, "trainable": ()}]


def shares_first_pass(cfg: UniAttnConfig, arm: str) -> bool:
    """An exposure-matched arm whose first pass is its one-pass arm's own run (restart, stage 1 one epoch: the same
    steps on the same batches, a fresh schedule): trained once, read by both."""
    if not is_matched(arm) or len(schedule(cfg, arm)) != 2:
        return False
    one = schedule(cfg, base_arm(arm))
    return len(one) == 1 and one[0]["reads"] == schedule(cfg, arm)[0]["reads"]


def heldout_batch(cfg: UniAttnConfig) -> int:
    """The convergence check's point, in the final pass over the shared batches: every evaluated stage scores the
    held-out rows once it has read that pass up to this batch (exclusive), ``1 − drift_frac`` of the way through it
    -- the same point of the shared steps for every arm (FT-2x included: after its first pass and 80% of its second)."""
    return round((1 - cfg.drift_frac) * cfg.sft_steps)


def heldout_step(cfg: UniAttnConfig, stage: dict) -> int | None:
    """The step of ``stage`` after which it has read the final pass up to ``heldout_batch`` (None: not inside it)."""
    if stage["pos"] is None:
        return None
    k = heldout_batch(cfg) - stage["pos"]
    return k if 0 < k < stage["steps"] else None


def llmdrop_layers(cfg: UniAttnConfig, data: Data, pre: dict) -> tuple[int, ...]:
    """The attention sub-layers LLMDrop removes: the lowest 1 − cos(x, x + Attn(LN x)) on the calibration rows."""
    n = cfg.llmdrop_count or len(_members(cfg, "uniattn"))
    ids, mask = _calib(cfg, data)
    scores = M.attention_importance(_decoder(base_config(cfg, data.n_ids), pre["state_dict"]), ids, mask)
    return tuple(sorted(int(i) for i in np.argsort(scores, kind="stable")[:n]))


def _real(loss_mask_BT1) -> torch.Tensor:
    """(B, T) real input positions of right-padded rows: every position up to the row's last answer token (its EOS)."""
    idx = torch.arange(loss_mask_BT1.shape[1])
    last = (loss_mask_BT1.long() * idx).max(1).values
    return idx[None, :-1] <= last[:, None]


def _calib(cfg: UniAttnConfig, data: Data):
    """The calibration rows' inputs (n_calib, T) and their real positions (the code pads with no mask, §8)."""
    ids, mask = data.calib
    return ids[: cfg.n_calib, :-1], _real(mask[: cfg.n_calib])


def _init_mode(arm: str, cfg: UniAttnConfig) -> str:
    return {"uniattn_zero": "zero", "uniattn_mean": "paper_mean"}.get(arm, cfg.init)


def gqa_parent(cfg: UniAttnConfig, data: Data) -> dict:
    """The GQA conversion of the pre-trained model (K/V heads mean-pooled; no training of its own): the shared parent
    of GQA and UniAttn-on-GQA, so both get the same post-training steps on top of it."""
    pre = pretrained(cfg, data)
    target = Decoder(model_config(cfg, data.n_ids, "gqa"))
    state = convert.gqa_state({k.removeprefix("model."): v for k, v in pre["state_dict"].items()}, target)
    return {"key": f"{pre['key']}+mha_to_gqa:{cfg.gqa_kv_heads}", "state_dict": state}


def parent_of(cfg: UniAttnConfig, data: Data, arm: str) -> dict:
    return gqa_parent(cfg, data) if arm == "uniattn_gqa" else pretrained(cfg, data)


def initial_model(cfg: UniAttnConfig, data: Data, arm: str, parent: dict, optim=None) -> tuple[CausalLM, list[dict]]:
    """A UniAttn arm's module before training (with ``optim``: its first stage's optimiser, trainable subset
    included): the parent's weights on the unified layers, W_c in closed form on the calibration rows (§3.4) with the
    parent as the unmodified model; and the fit's residuals per member."""
    base = _decoder(model_config(cfg, data.n_ids, "gqa" if arm == "uniattn_gqa" else "ft"), parent["state_dict"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        lm = CausalLM(model_config(cfg, data.n_ids, arm), optim or sft_optim(cfg, cfg.sft_steps))
    lm.model.load_state_dict(convert.attention_state(base.state_dict(), lm.model))  # W_c stays 0 until the fit
    ids, mask = _calib(cfg, data)
    fit = M.fit_compensation(base, lm.model, ids, mask, _init_mode(arm, cfg), ridge=cfg.ridge, rcond=cfg.pinv_rcond)
    return lm.train(), fit  # the fit measures in eval mode and restores the mode; training starts in train mode


def reads_text(reads) -> str:
    """Batches read, in order, as runs of consecutive batches: ``0-199+0-199``."""
    out, start = [], None
    for i, r in enumerate(reads):
        if start is None:
            start = r
        if i + 1 == len(reads) or reads[i + 1] != r + 1:
            out.append(f"{start}-{r}")
            start = None
    return "+".join(out)


def _batches_text(st: list[dict]) -> str:
    """The stages' batches read, in order, for the run key: the same arm on other batches is another run."""
    return ";batches=" + "/".join(reads_text(x["reads"]) for x in st)


def train_arm(cfg: UniAttnConfig, data: Data, arm: str, seed: int, dropped: tuple = ()) -> dict:
    """One post-training run of ``arm`` on seed ``seed``'s batches (``schedule``), started from the pre-trained base
    (GQA and UniAttn on GQA: its GQA conversion). Weights kept (the analysis reads them). The evaluated (last) stage
    also scores the held-out sets at ``heldout_step``. An exposure-matched arm in two passes continues its first pass
    (the one-pass arm's own run where ``shares_first_pass``) with a fresh schedule, as UniAttn's stage 2 continues its
    stage 1."""
    kw = {**cfg.trainer_kwargs()}
    evals = data.eval_sets()
    desc = data.description + f";phase=sft;arm={arm}"
    st = schedule(cfg, arm)
    desc += _batches_text(st)
    last = st[-1]
    at = heldout_step(cfg, last)
    ev_steps = () if at is None else (at,)
    if not arm.startswith("uniattn"):
        base = base_arm(arm)
        parent = pretrained(cfg, data)
        conv = {"gqa": "mha_to_gqa", "softmax": "attention_surgery", "cla": "attention_surgery",
                "llmdrop": "attention_surgery"}.get(base, "none")
        mcfg = model_config(cfg, data.n_ids, arm, dropped)
        desc += f";dropped={dropped}" if base == "llmdrop" else ""
        if len(st) == 1:
            spec = TrainSpec(mcfg, sft_optim(cfg, last["steps"]), desc, cfg.batch_size, cfg.seq_len, seed,
                             eval_steps=ev_steps, ckpt_every=max(10, last["steps"] // 4))
            spec = continued(spec, parent, conv)
            return train(PAPER_ID, spec, sft_batches(cfg, data, seed, last["reads"]), evals, keep_weights=True,
                         parent=parent, **kw)
        # an exposure-matched arm in two passes (matched_schedule='restart'): the first pass, then everything again
        # on the shared batches with a fresh schedule (step t reads FT's batch t, as UniAttn's stage 2)
        first = st[0]
        if shares_first_pass(cfg, arm):
            r1 = train_arm(cfg, data, base, seed, dropped)
        else:  # stage 1 longer or shorter than an epoch: a first pass of its own, not evaluated
            s1 = continued(TrainSpec(mcfg, sft_optim(cfg, first["steps"]), desc + ";stage=1", cfg.batch_size,
                                     cfg.seq_len, seed, ckpt_every=max(10, first["steps"] // 4)), parent, conv)
            r1 = train(PAPER_ID, s1, sft_batches(cfg, data, seed, first["reads"]), {}, keep_weights=True,
                       parent=parent, **kw)
        s2 = continued(TrainSpec(mcfg, sft_optim(cfg, last["steps"]), desc + f";first={r1['key']};stage=2",
                                 cfg.batch_size, cfg.seq_len, seed, eval_steps=ev_steps,
                                 ckpt_every=max(10, last["steps"] // 4)), r1)
        r2 = train(PAPER_ID, s2, sft_batches(cfg, data, seed, last["reads"]), evals, keep_weights=True, parent=r1,
                   **kw)
        return {**r2, "stage1": {"key": r1["key"], "wall_s": r1["wall_s"],
                                 "shared_with": base if shares_first_pass(cfg, arm) else ""},
                "wall_s": r1["wall_s"] + r2["wall_s"]}
    parent = parent_of(cfg, data, arm)
    mode = _init_mode(arm, cfg)
    desc += f";init={mode}:{cfg.n_calib}:{cfg.ridge}:{cfg.pinv_rcond};parent={parent['key']};module_optim=spec"
    mcfg = model_config(cfg, data.n_ids, arm)
    first = st[0]
    stage1 = TrainSpec(mcfg, sft_optim(cfg, first["steps"], first["trainable"]), desc + ";stage=1", cfg.batch_size,
                       cfg.seq_len, seed, eval_steps=ev_steps if len(st) == 1 else (),
                       ckpt_every=max(10, first["steps"] // 4))
    # the module arrives with its weights (the parent's, W_c in closed form): the key names the parent and the init.
    # A stage that another follows is not evaluated (its held-out numbers are read nowhere)
    r1 = train(PAPER_ID, stage1, sft_batches(cfg, data, seed, first["reads"]), evals if len(st) == 1 else {},
               module=lambda: initial_model(cfg, data, arm, parent, stage1.optim)[0], keep_weights=True, **kw)
    if len(st) == 1:
        return r1
    # stage 2 (everything, a fresh schedule) reads the shared batches: its step t is FT's step t
    stage2 = continued(TrainSpec(mcfg, sft_optim(cfg, last["steps"]), desc + ";stage=2", cfg.batch_size,
                                 cfg.seq_len, seed, eval_steps=ev_steps, ckpt_every=max(10, last["steps"] // 4)), r1)
    r2 = train(PAPER_ID, stage2, sft_batches(cfg, data, seed, last["reads"]), evals, keep_weights=True, parent=r1,
               **kw)
    return {**r2, "stage1": {"key": r1["key"], "wall_s": r1["wall_s"]}, "wall_s": r1["wall_s"] + r2["wall_s"]}


def load_model(cfg: UniAttnConfig, data: Data, arm: str, result: dict, dropped: tuple = (), **kw) -> Decoder:
    return _decoder(dataclasses.replace(model_config(cfg, data.n_ids, arm, dropped), **kw), result["state_dict"])


@dataclass(frozen=True)
class Runs:
    pretrain: dict
    records: list  # {"variant", "seed", "result"}
    frame: pd.DataFrame  # variant, seed, answer loss (all rows, per kind), answer-token accuracy, lm loss, params, wall
    dropped: tuple  # LLMDrop's removed attention sub-layers


def row_metrics(final_qa: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per held-out row: the mean answer-token loss, and the share of its answer tokens the model ranks first
    (teacher forced). The share replaces the row's exact match, which at this scale was the same for nearly every arm
    (a model that has learned the answer format gets the same short answers right and no long one)."""
    m = final_qa["mask"].double()
    n = m.sum(1).clamp(min=1)
    loss = (final_qa["loss"].double() * m).sum(1) / n
    acc = (final_qa["correct"].double() * m).sum(1) / n
    return loss.numpy(), acc.numpy()


def kind_losses(loss_W: np.ndarray, kinds: tuple) -> dict:
    """The mean answer loss of each question kind (speaker, next_line, word_count): ``loss_<kind>``."""
    k = np.asarray(kinds)
    return {f"loss_{x}": float(loss_W[k == x].mean()) for x in sorted(set(kinds))}


@plan.step
def runs(cfg: UniAttnConfig, data: Data, pretrain: dict) -> Runs:
    import functools

    dropped = llmdrop_layers(cfg, data, pretrain)
    todo = [(a, s) for a in arms(cfg) for s in seeds_of(cfg, a)]
    # every run starts from the pre-trained model (GQA arms: its untrained GQA conversion): all side by side, the
    # longest first (the workers then finish together). A one-pass run that an exposure-matched arm continues is
    # trained by that arm's task (two workers never train one run)
    inside = {(base_arm(a), s) for a, s in todo if shares_first_pass(cfg, a)}
    order = sorted([t for t in todo if t not in inside], key=lambda t: -cost_weight(cfg, t[0]))
    prefetch([functools.partial(train_arm, cfg, data, a, s, dropped if base_arm(a) == "llmdrop" else ())
              for a, s in order], cfg.workers, max(cfg.threads, 1))
    records, rows = [], []
    for a, s in todo:
        r = train_arm(cfg, data, a, s, dropped if base_arm(a) == "llmdrop" else ())
        records.append({"variant": a, "seed": s, "result": r})
        loss, acc = row_metrics(r["final"]["qa"])
        rows.append({"variant": a, "seed": s, "answer_loss": float(loss.mean()), "answer_token_acc": float(acc.mean()),
                     **kind_losses(loss, data.eval_kinds), "lm_loss": float(r["final"]["lm"].double().mean()),
                     "params": int(r["n_params"]), "wc_only_steps": sum(x["steps"] for x in schedule(cfg, a)
                                                                         if x["trainable"]),
                     "full_steps": sum(x["steps"] for x in schedule(cfg, a) if not x["trainable"]),
                     "wall_s": float(r["wall_s"]), "stage1_wall_s": float(r.get("stage1", {}).get("wall_s", 0.0)),
                     "stage1_shared_with": r.get("stage1", {}).get("shared_with", "")})
    return Runs(pretrain, records, pd.DataFrame(rows), dropped)


# =============================================================================================== analysis


@torch.no_grad()
def decode_benchmark(models: dict, contexts, new_tokens: int, repeats: int, seed: int = 0) -> pd.DataFrame:
    """KV-cache decoding of every model of ``models`` ((variant, impl) -> Decoder), one sequence. Per context: each
    model prefills the same ``context`` random ids once; then ``repeats`` rounds, each timing the same ``new_tokens``
    single-token steps again (the cache rewound to the context), the models taking turns within a round, so that a
    change of the machine's load hits every arm of a round alike and a ratio to FT can be paired by round. One row per
    (variant, impl, context, repeat): seconds per decode step, and the bytes the cache allocated (per position too)."""
    g = torch.Generator().manual_seed(seed)
    vocab = min(m.cfg.vocab_size for m in models.values())
    ids = torch.randint(0, vocab, (1, max(contexts) + new_tokens), generator=g)
    rows = []
    for L in contexts:
        caches = {}
        for key, m in models.items():
            caches[key] = KVCache(m.eval(), 1, max_len=L + new_tokens)
            m(ids[:, :L], cache=caches[key])
        for r in range(repeats):
            for (v, impl), m in models.items():
                c = caches[(v, impl)]
                c.length = L  # rewind: every round decodes the same tokens at the same positions
                t0 = time.perf_counter()
                for t in range(new_tokens):
                    m(ids[:, L + t: L + t + 1], cache=c)
                rows.append({"variant": v, "impl": impl, "context": L, "repeat": r,
                             "s_per_token": (time.perf_counter() - t0) / new_tokens, "cache_bytes": c.nbytes,
                             "cache_bytes_per_token": c.bytes_per_token})
    return pd.DataFrame(rows)


def latency_summary(timings: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, impl, context): the median seconds per decode step over the rounds and its interquartile range,
    and the ratio to FT of the same impl and context, paired by round (a round's arms ran back to back): median and
    interquartile range."""
    ft = timings[timings["variant"] == "ft"].set_index(["impl", "context", "repeat"])["s_per_token"]
    t = timings.assign(vs_ft=timings["s_per_token"].to_numpy()
                       / ft.reindex(pd.MultiIndex.from_frame(timings[["impl", "context", "repeat"]])).to_numpy())
    g = t.groupby(["variant", "impl", "context"], sort=False)
    q = lambda col, p: g[col].quantile(p)  # noqa: E731
    return pd.DataFrame({"s_per_token": g["s_per_token"].median(), "s_per_token_q25": q("s_per_token", 0.25),
                         "s_per_token_q75": q("s_per_token", 0.75), "vs_ft": g["vs_ft"].median(),
                         "vs_ft_q25": q("vs_ft", 0.25), "vs_ft_q75": q("vs_ft", 0.75),
                         "repeats": g["repeat"].nunique()}).reset_index()


@torch.no_grad()
def softmax_share(cfg: UniAttnConfig, context: int, repeats: int, warmup: int = 3) -> dict:
    """Seconds of the steps of eager attention for one layer's heads, prefill of ``context`` tokens and one decode step
    at ``context`` keys; each function called ``warmup`` times untimed first, then the median of ``repeats`` (each
    averaged over 5 calls). Steps: ``qk`` (q Kᵀ, scaled), ``softmax_masked`` (the causal mask and the softmax as one
    step), ``pv`` (P V), and apart: ``mask`` (masked_fill alone) and ``softmax`` (the softmax alone, on masked
    scores). A decode step needs no mask (its one query sees every key): there ``mask`` is absent and
    ``softmax_masked`` is the softmax alone."""
    H, dh = cfg.n_heads, cfg.d_model // cfg.n_heads
    g = torch.Generator().manual_seed(cfg.seed)
    out = {}
    for phase, T in (("prefill", context), ("decode", 1)):
        q, k, v = (torch.randn(1, H, n, dh, generator=g) for n in (T, context, context))
        mask = torch.ones(T, context, dtype=torch.bool).tril(context - T)
        s = q @ k.transpose(-1, -2) * dh**-0.5
        masked = s.masked_fill(~mask, float("-inf")) if phase == "prefill" else s
        p = torch.softmax(masked, -1)
        fns = {"qk": lambda: q @ k.transpose(-1, -2) * dh**-0.5,
               "softmax": lambda: torch.softmax(masked, -1),
               "pv": lambda: p @ v}
        if phase == "prefill":
            fns["mask"] = lambda: s.masked_fill(~mask, float("-inf"))
            fns["softmax_masked"] = lambda: torch.softmax(s.masked_fill(~mask, float("-inf")), -1)
        else:
            fns["softmax_masked"] = fns["softmax"]
        for name, f in fns.items():
            for _ in range(warmup):
                f()
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(5):
                    f()
                ts.append((time.perf_counter() - t0) / 5)
            out[(phase, name)] = statistics.median(ts)
    return out


def share_row(sh: dict, phase: str) -> dict:
    """One phase's timings and its two softmax shares of eager attention time: ``softmax_share_alone``: the softmax
    alone (``F.softmax`` on masked scores, as the first author's profiler times it) / (q Kᵀ + mask + softmax + P V),
    the mask a step of its own; ``softmax_share_mask_folded``: the softmax step with the causal mask folded in / (q Kᵀ
    + that step + P V). A decode step has no mask: there both are softmax / (q Kᵀ + softmax + P V). C2 judges the one
    ``softmax_share_def`` names."""
    t = {n: sh[(phase, n)] for n in ("qk", "mask", "softmax", "softmax_masked", "pv") if (phase, n) in sh}
    folded = t["softmax_masked"] / (t["qk"] + t["softmax_masked"] + t["pv"])
    alone = t["softmax"] / (t["qk"] + t.get("mask", 0.0) + t["softmax"] + t["pv"])
    return {**{f"{n}_s": t.get(n, np.nan) for n in ("qk", "mask", "softmax", "softmax_masked", "pv")},
            "softmax_share_alone": alone, "softmax_share_mask_folded": folded}


@dataclass(frozen=True)
class Analysis:
    cost: pd.DataFrame  # (variant, impl, context): s/token (median, IQR, ratio to FT), cache bytes, counted work
    softmax: pd.DataFrame  # (phase, context): seconds of the attention steps and the two softmax shares (``share_row``)
    similarity: dict  # "pretrained" / "ft": (R, L, L) per held-out row
    init: pd.DataFrame  # (variant, layer): calibration residual at zero and at the init; the same on held-out rows
    init_loss: dict  # variant -> (W,) per-row answer loss of the UniAttn model at init (before training)
    pretrained_rows: tuple  # the pre-trained model's (loss, answer-token accuracy) per held-out row (zero-shot)
    llmdrop_scores: list  # per layer, LLMDrop's score on the calibration rows
    timings: pd.DataFrame  # (variant, impl, context, repeat): seconds per decode step of every timed round
    init_kl: dict = dataclasses.field(default_factory=dict)  # variant -> (N,) per held-out pre-training window:
    # KL(pre-trained || the UniAttn model at init), nats per token (the init's distance from the model it replaces)
    similarity_seeds: dict = dataclasses.field(default_factory=dict)  # FT seed -> (R, L, L) per held-out row


@torch.no_grad()
def _eval_rows(model: Decoder, data: Data, chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Per held-out row: answer loss and answer-token accuracy of ``model`` (``row_metrics``)."""
    from replicate.models.lm import per_token_nll

    model.eval()
    loss, correct = [], []
    for s in range(0, len(data.eval_ids), chunk):
        w = data.eval_ids[s: s + chunk]
        logits = model(w[:, :-1]).logits
        loss.append(per_token_nll(logits, w[:, 1:]))
        correct.append(logits.argmax(-1) == w[:, 1:])
    return row_metrics({"loss": torch.cat(loss), "correct": torch.cat(correct), "mask": data.eval_mask[:, 1:]})


@torch.no_grad()
def window_kl(base: Decoder, model: Decoder, windows: torch.Tensor, chunk: int = 16) -> np.ndarray:
    """Per held-out pre-training window: KL(base || model) of the next-token distributions, mean over its positions
    (nats per token); 0 when ``model`` is ``base``."""
    base.eval(), model.eval()
    out = []
    for s in range(0, len(windows), chunk):
        x = windows[s: s + chunk, :-1]
        lp = torch.log_softmax(base(x).logits.double(), -1)
        lq = torch.log_softmax(model(x).logits.double(), -1)
        out.append((lp.exp() * (lp - lq)).sum(-1).mean(-1))
    return torch.cat(out).numpy()


@plan.step
def analysis(cfg: UniAttnConfig, data: Data, runs: Runs) -> Analysis:
    by = {(r["variant"], r["seed"]): r["result"] for r in runs.records}
    longest = max(cfg.bench_contexts) + cfg.bench_new_tokens
    models, static = {}, []
    for a in arms(cfg):
        for impl in ("sdpa", "eager"):
            model = load_model(cfg, data, a, by[(a, cfg.seed)], runs.dropped, max_seq_len=max(longest, cfg.seq_len),
                               attention=impl)
            if a in bench_arms(cfg):
                models[(a, impl)] = model
            for L in cfg.bench_contexts:  # what does not need a clock: cache bytes, counted work, parameters
                c = KVCache(model, 1, max_len=L + cfg.bench_new_tokens)
                static.append({"variant": a, "impl": impl, "context": L, "timed": a in bench_arms(cfg),
                               "cache_bytes": c.nbytes, "cache_bytes_per_token": c.bytes_per_token,
                               **M.decode_ops(model, L), "params": model.num_params(non_embedding=False),
                               "member_layers": len(M.member_layers(model))})
    with torch_threads(max(cfg.threads, 1)):  # timings on one thread, as the arms trained
        timings = decode_benchmark(models, cfg.bench_contexts, cfg.bench_new_tokens, cfg.bench_repeats, cfg.seed)
        soft = []
        for L in cfg.bench_contexts:
            sh = softmax_share(cfg, L, cfg.bench_repeats)
            for phase in ("prefill", "decode"):
                soft.append({"phase": phase, "context": L, **share_row(sh, phase)})
    cost = pd.DataFrame(static).merge(latency_summary(timings), on=["variant", "impl", "context"], how="left")
    with torch_threads(cfg.threads * cfg.workers if cfg.threads else 0):  # no clock from here on: every core
        return _measure(cfg, data, runs, by, cost, timings, soft)


def _measure(cfg, data, runs, by, cost, timings, soft) -> Analysis:
    # the motivation figure: softmax maps of the pre-trained and the fine-tuned model on held-out rows
    R = len(data.eval_ids) if cfg.sim_rows == 0 else min(cfg.sim_rows, len(data.eval_ids))
    ids, mask = data.eval_ids[:R, :-1], _real(data.eval_mask[:R])
    pre = _decoder(base_config(cfg, data.n_ids), runs.pretrain["state_dict"])
    sim_of = lambda m: np.concatenate([M.probs_similarity(m, ids[i: i + 32], mask[i: i + 32]).numpy()  # noqa: E731
                                       for i in range(0, R, 32)])
    sim = {"pretrained": sim_of(pre)}
    # every FT seed's maps (C1 is judged over the FT seeds); seed ``seed``'s is the figure's
    sim_seeds = {s: sim_of(load_model(cfg, data, "ft", by[("ft", s)])) for s in seeds_of(cfg, "ft")}
    sim["ft"] = sim_seeds[cfg.seed]
    # each UniAttn initialisation before training: its residuals on the calibration rows (in-sample) and on the
    # held-out rows, and its held-out answer loss
    init_rows, init_loss, init_kl = [], {}, {}
    h_ids, h_mask = data.eval_ids[:, :-1], _real(data.eval_mask)
    base_h = {i: h for i, (_, h) in M.streams(pre, h_ids, sorted(_members(cfg, "uniattn"))).items()}
    for a in INITS:  # every initialisation, whether or not its arm trains
        lm, fit = initial_model(cfg, data, a, pretrained(cfg, data))
        held = {h["layer"]: h for h in M.heldout_residuals(base_h, lm.model.eval(), h_ids, h_mask)}
        init_rows += [{"variant": a, "init": _init_mode(a, cfg), **f,
                       "heldout_residual_zero": held[f["layer"]]["residual_zero"],
                       "heldout_residual_init": held[f["layer"]]["residual_init"]} for f in fit]
        init_loss[a] = _eval_rows(lm.model.eval(), data)[0]
        init_kl[a] = window_kl(pre, lm.model.eval(), data.lm.windows)
    c_ids, c_mask = _calib(cfg, data)
    scores = M.attention_importance(pre, c_ids, c_mask)
    return Analysis(cost, pd.DataFrame(soft), sim, pd.DataFrame(init_rows), init_loss, _eval_rows(pre, data), scores,
                    timings, init_kl, sim_seeds)


# ============================================================================================ comparisons


@dataclass(frozen=True)
class Comparisons:
    frame: pd.DataFrame  # one row per comparison a − b of the held-out answer loss (positive: b better)
    boot: dict  # name -> bootstrap replicates (paired rows)
    per_seed: dict  # name -> per common seed gap
    drift: dict  # name -> how the paired gap still moved at the end (held-out where scored, else training; None)
    init: dict  # zero − closed-form initial answer loss: point, replicates
    similarity: dict  # adjacent − distant softmax similarity after FT: "window" (the unified layers) and "full" (every
    # layer), each with seed ``seed``'s point, row replicates and means, and the per-FT-seed means; the window's point,
    # replicates and means also at the top level
    drift_what: dict = dataclasses.field(default_factory=dict)  # name -> what ``drift`` measured (absent: training)
    drift_boot: dict = dataclasses.field(default_factory=dict)  # name -> bootstrap replicates of the held-out drift
    # (the same row resamples as the gap's)
    acc: pd.DataFrame | None = None  # one row per comparison: the answer-token accuracy gained by b over a (b − a:
    # positive means b better, the loss gap's sign), its 95% paired bootstrap
    acc_boot: dict = dataclasses.field(default_factory=dict)  # name -> bootstrap replicates of that accuracy gap
    acc_per_seed: dict = dataclasses.field(default_factory=dict)  # name -> per common seed accuracy gap
    init_kl: dict = dataclasses.field(default_factory=dict)  # zero − closed-form KL(pre-trained || init) on the
    # held-out pre-training windows: point, replicates (bootstrap over windows)


def _curve(cfg: UniAttnConfig, arm: str, run: dict):
    """One run's logged training loss by its step in the final pass over the shared batches (``schedule``'s
    ``pos``; a stage outside that pass, and FT-2x's first pass, left out: their batches repeat in it), or None."""
    from replicate.models.trainer import train_curve

    st = schedule(cfg, arm)
    keys = ([run["stage1"]["key"]] if "stage1" in run else []) + [run["key"]]
    out = {}
    for key, stage in zip(keys, st[-len(keys):]):
        if stage["pos"] is None:
            continue
        c = train_curve(PAPER_ID, key)
        if c is None:
            return None
        out.update({int(t) + stage["pos"]: float(x) for t, x in zip(*c) if int(t) + stage["pos"] >= 0})
    return out


def _by_seed(runs: Runs, v: str) -> dict:
    return {r["seed"]: r["result"] for r in runs.records if r["variant"] == v}


def step_gap_drift(cfg: UniAttnConfig, runs: Runs, a: str, b: str) -> float | None:
    """``trainer.gap_drift`` by batch (the steps of two arms that read the same batch paired): per common seed, the mean
    training-loss gap a − b over the last ``drift_frac`` of the shared batches minus that over the ``drift_frac``
    before; None without a log. Once rows repeat (the pool is drawn with replacement, and the paper protocol's stage 1
    and FT-2x's first pass read the same batches first) a row met before lowers one arm's training loss: the held-out
    drift (``heldout_gap_drift``) is the one the claims use."""
    ra, rb = _by_seed(runs, a), _by_seed(runs, b)
    off, n, frac = 0, cfg.sft_steps, cfg.drift_frac
    drifts = []
    for seed in sorted(set(ra) & set(rb)):
        ca, cb = _curve(cfg, a, ra[seed]), _curve(cfg, b, rb[seed])
        if ca is None or cb is None:
            return None
        common = sorted(set(ca) & set(cb))
        late = [ca[t] - cb[t] for t in common if t >= off + (1 - frac) * n]
        early = [ca[t] - cb[t] for t in common if off + (1 - 2 * frac) * n <= t < off + (1 - frac) * n]
        if not late or not early:
            return None
        drifts.append(float(np.mean(late) - np.mean(early)))
    return float(np.mean(drifts)) if drifts else None


def heldout_at(cfg: UniAttnConfig, arm: str, run: dict) -> np.ndarray | None:
    """Per held-out row, the answer loss of ``arm``'s run at ``heldout_batch`` (its last stage's ``heldout_step``), or
    None where it was not scored there."""
    k = heldout_step(cfg, schedule(cfg, arm)[-1])
    qa = run.get("evals", {}).get("qa", {})
    return None if k is None or k not in qa else row_metrics(qa[k])[0]


def heldout_gap_drift(cfg: UniAttnConfig, runs: Runs, a: str, b: str) -> float | None:
    """How the held-out gap a − b still moved at the end: per common seed, the mean held-out answer-loss gap at the end
    minus that after ``1 − drift_frac`` of the shared batches (the same rows, each arm at the same batch), averaged over
    seeds (the mean of ``heldout_drift_rows``); None where a run was not scored there."""
    rows = heldout_drift_rows(cfg, runs, a, b)
    return None if rows is None else float(rows.mean())


def heldout_drift_rows(cfg: UniAttnConfig, runs: Runs, a: str, b: str) -> np.ndarray | None:
    """``heldout_gap_drift`` per held-out row (mean over the common seeds): what the drift's bootstrap resamples."""
    ra, rb = _by_seed(runs, a), _by_seed(runs, b)
    rows = []
    for seed in sorted(set(ra) & set(rb)):
        ha, hb = heldout_at(cfg, a, ra[seed]), heldout_at(cfg, b, rb[seed])
        if ha is None or hb is None:
            return None
        end = row_metrics(ra[seed]["final"]["qa"])[0] - row_metrics(rb[seed]["final"]["qa"])[0]
        rows.append(end - (ha - hb))
    return np.mean(rows, 0) if rows else None


def sim_contrast(S: np.ndarray, lo: int, hi: int):
    """Softmax-map similarity of adjacent layer pairs (i, i+1) minus that of pairs >= 2 apart, both inside layers
    [lo, hi), per row of ``S`` (R, L, L): (per-row difference, mean adjacent, mean distant); None when the range has
    no adjacent or no distant pair (fewer than 3 layers)."""
    adj = [(i, i + 1) for i in range(lo, hi - 1)]
    far = [(i, j) for i in range(lo, hi) for j in range(i + 2, hi)]
    if not adj or not far:
        return None
    a = np.mean([S[:, i, j] for i, j in adj], 0)
    f = np.mean([S[:, i, j] for i, j in far], 0)
    return a - f, float(a.mean()), float(f.mean())


def _acc_of(runs: Runs, v: str) -> dict:
    return {r["seed"]: row_metrics(r["result"]["final"]["qa"])[1] for r in runs.records if r["variant"] == v}


def _rows_of(runs: Runs, v: str) -> dict:
    return {r["seed"]: row_metrics(r["result"]["final"]["qa"])[0] for r in runs.records if r["variant"] == v}


@plan.step
def comparisons(cfg: UniAttnConfig, data: Data, runs: Runs, analysis: Analysis) -> Comparisons:
    W = len(data.eval_ids)
    rng = np.random.default_rng(cfg.seed)
    boot_w = np.stack([np.bincount(rng.integers(0, W, W), minlength=W) for _ in range(cfg.n_boot)])  # (n_boot, W)
    reps_of = lambda d_w: (boot_w @ d_w) / boot_w.sum(1)  # noqa: E731
    rows, boot, per_seed, drift, drift_what = [], {}, {}, {}, {}
    drift_boot, acc_rows, acc_boot, acc_per_seed = {}, [], {}, {}
    # every arm against UniAttn; UniAttn-on-GQA against GQA (one pass and exposure-matched); C7's schedule-matched
    # contrast: softmax sharing against UniAttn in one stage (the same steps and batches, W_c the only difference)
    pairs = ([(a, "uniattn") for a in arms(cfg) if a != "uniattn"]
             + [("uniattn_gqa", "gqa"), ("uniattn_gqa", "gqa2x"), ("softmax", "uniattn_1stage")])
    at = f"{1 - cfg.drift_frac:.0%}"
    for a, b in pairs:
        if a not in arms(cfg) or b not in arms(cfg):
            continue
        pa, pb = _rows_of(runs, a), _rows_of(runs, b)
        common = sorted(set(pa) & set(pb))
        d_w = np.mean([pa[s] - pb[s] for s in common], 0)
        name = f"{a} - {b}"
        boot[name], per_seed[name] = reps_of(d_w), [float((pa[s] - pb[s]).mean()) for s in common]
        tr, ho = step_gap_drift(cfg, runs, a, b), heldout_gap_drift(cfg, runs, a, b)
        drift[name] = ho if ho is not None else tr
        if ho is not None:
            drift_what[name] = (f"paired held-out answer-loss gap {{label}}, at the end − after {at} of the shared "
                                "steps, the same rows")
        # the same full-parameter steps on the same batches (UniAttn's extra W_c stage: ``schedule``)
        dr = heldout_drift_rows(cfg, runs, a, b)
        if dr is not None:
            drift_boot[name] = reps_of(dr)
        qa_, qb_ = _acc_of(runs, a), _acc_of(runs, b)
        acc_w = np.mean([qb_[s] - qa_[s] for s in common], 0)  # b − a: positive, b better (the loss gap's sign)
        acc_boot[name], acc_per_seed[name] = reps_of(acc_w), [float((qb_[s] - qa_[s]).mean()) for s in common]
        acc_rows.append({"comparison": name, "acc_gap": float(acc_w.mean()),
                         "ci_lo": float(np.quantile(acc_boot[name], 0.025)),
                         "ci_hi": float(np.quantile(acc_boot[name], 0.975)), "paired_seeds": len(common),
                         "acc_gap_per_seed": " / ".join(f"{x:+.4f}" for x in acc_per_seed[name])})
        rows.append({"comparison": name, "gap": float(d_w.mean()), "ci_lo": float(np.quantile(boot[name], 0.025)),
                     "ci_hi": float(np.quantile(boot[name], 0.975)), "paired_seeds": len(common),
                     "gap_per_seed": " / ".join(f"{x:+.4f}" for x in per_seed[name]), "heldout_gap_drift": ho,
                     "train_gap_drift": tr})
    init = {}
    if "uniattn_zero" in analysis.init_loss:
        d_w = analysis.init_loss["uniattn_zero"] - analysis.init_loss["uniattn"]
        init = {"point": float(d_w.mean()), "reps": reps_of(d_w)}
    init_kl = {}
    if "uniattn_zero" in analysis.init_kl and "uniattn" in analysis.init_kl:
        d_n = analysis.init_kl["uniattn_zero"] - analysis.init_kl["uniattn"]
        N = len(d_n)
        r3 = np.random.default_rng(cfg.seed + 2)
        init_kl = {"point": float(d_n.mean()), "reps": np.array([d_n[r3.integers(0, N, N)].mean()
                                                                 for _ in range(cfg.n_boot)]),
                   "zero": float(analysis.init_kl["uniattn_zero"].mean()),
                   "init": float(analysis.init_kl["uniattn"].mean()), "windows": N}
    # redundancy: adjacent layer pairs against pairs >= 2 apart, in the unified layers' range (the primary) and over
    # the whole depth (C1's second metric), per held-out row; per FT seed (the t-interval C1 is judged by) and, for
    # seed ``seed``, bootstrapped over rows (beside)
    simd = {}
    seeds = sorted(analysis.similarity_seeds) or [cfg.seed]
    maps = analysis.similarity_seeds or {cfg.seed: analysis.similarity["ft"]}
    r2 = np.random.default_rng(cfg.seed + 1)
    for key, (lo, hi) in (("window", (cfg.begin, cfg.end)), ("full", (0, cfg.n_layers))):
        one = sim_contrast(maps[cfg.seed], lo, hi)
        if one is None:
            continue
        d, a, f = one
        R = len(d)
        simd[key] = {"layers": (lo, hi), "point": float(d.mean()), "adjacent": a, "distant": f, "rows": R,
                     "reps": np.array([d[r2.integers(0, R, R)].mean() for _ in range(cfg.n_boot)]),
                     "per_seed": [float(sim_contrast(maps[s], lo, hi)[0].mean()) for s in seeds], "seeds": seeds,
                     "adjacent_per_seed": [sim_contrast(maps[s], lo, hi)[1] for s in seeds]}
    if "window" in simd:  # the primary's numbers at the top level too
        simd.update({k: simd["window"][k] for k in ("point", "reps", "adjacent", "distant")})
    return Comparisons(pd.DataFrame(rows), boot, per_seed, drift, init, simd, drift_what, drift_boot,
                       pd.DataFrame(acc_rows), acc_boot, acc_per_seed, init_kl)


run_experiments = plan.run_all
