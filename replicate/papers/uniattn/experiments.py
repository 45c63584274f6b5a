"""UniAttn's experiments, as one plan (``run_experiments(cfg)`` -> the bundle ``report.py`` reads).

Steps, in order (the notebook runs one per cell):

- ``data``: Shakespeare's plays split by whole plays, a byte-level BPE, the pre-training stream, held-out windows and
  the count models (unigram, Kneser-Ney bigrams); the post-training domain: instruction-style questions about
  passages of the training plays (``replicate.data.synthetic.instruction_qa``: speaker, next line, word count; exact
  answers) as answer-only rows, the held-out questions from the held-out plays, the calibration rows (the first
  ``n_calib`` training rows), and the answer-token unigram (the post-training domain's count bar).
- ``pretrain``: the dense decoder from scratch (one run, cached with its weights, shared by every method).
- ``runs``: every method post-trained from it for the same ``sft_steps`` steps on the same batches (seed s: the
  pool's order of seed s; step t reads batch t in every arm): FT and UniAttn with ``n_seeds`` seeds, the other arms
  (softmax sharing, CLA, LLMDrop, GQA, and the ablation arms ``ablations`` names) with seed ``seed``. A two-stage
  UniAttn arm spends the same steps: stage 1 (W_c only) the first ``stage1_frac`` of them, stage 2 (everything) the
  rest, on the batches that follow, starting from stage 1's final weights (``schedule``). UniAttn's W_c is set in
  closed form on the calibration rows before stage 1 (the fit measures in eval mode and hands the module back in
  train mode). GQA and UniAttn-on-GQA both start from the GQA conversion of the pre-trained model (K/V heads
  mean-pooled, no training of its own). With ``workers`` > 1 the runs train side by side in worker processes first,
  the longest first.
- ``analysis``: from each run's final weights: parameters, cache bytes and counted attention work per decode step
  (every arm), KV-cache decode latency at ``bench_contexts`` (one arm per distinct architecture; SDPA where the arm
  allows it, and every layer eager; ``bench_repeats`` rounds interleaved over the arms, the ratio to FT paired by
  round), the softmax share of eager attention, the softmax-similarity maps before and after fine-tuning, the initial
  (pre-training) answer loss of each UniAttn initialisation (closed form, zero, the code's mean recipe: trained or
  not) and its calibration residuals, LLMDrop's layer scores.
- ``comparisons``: paired gaps of the held-out answer loss (by seed; bootstrap over held-out rows).
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
    "softmax": "softmax sharing in the SuperBlocks, no compensation, one stage",
    "uniattn": "UniAttn: softmax sharing + W_c (closed-form init), two stages within the same steps",
    "cla": "cross-layer KV sharing (CLA) on the same layers",
    "llmdrop": "attention-layer dropping (LLMDrop): the U lowest-scored attention sub-layers removed",
    "gqa": "MHA→GQA uptraining (K/V heads mean-pooled, then post-trained)",
    "uniattn_gqa": "UniAttn on the GQA conversion (the same parent as GQA, the same steps)",
    "uniattn_zero": "UniAttn with W_c = 0 at init (ablation)",
    "uniattn_mean": "UniAttn with W_c by the code's recipe: pinv of the position-wise calibration means (ablation)",
    "uniattn_1stage": "UniAttn, closed-form init, one stage (ablation)",
    "uniattn_bottom": "UniAttn on the bottom layers instead of the top (choice of layers)",
}
UNIATTN_ARMS = ("uniattn", "uniattn_gqa", "uniattn_zero", "uniattn_mean", "uniattn_1stage", "uniattn_bottom")
DECIDING = ("ft", "uniattn")


MAIN = ("ft", "softmax", "uniattn", "cla", "llmdrop", "gqa")
INITS = ("uniattn", "uniattn_zero", "uniattn_mean")  # measured before training whether or not their arms train


def arms(cfg: UniAttnConfig) -> list[str]:
    """The arms trained: the main ones, then the ablation arms ``cfg.ablations`` names (in table order)."""
    return list(MAIN) + [a for a in ARMS if a not in MAIN and a in cfg.ablations]


def bench_arms(cfg: UniAttnConfig) -> list[str]:
    """The arms whose decode latency is timed: one per distinct architecture. The init and stage ablations share
    UniAttn's modules exactly, and the bottom-layer arm has UniAttn's counts at other depths: not timed again."""
    return [a for a in arms(cfg) if a in MAIN or a == "uniattn_gqa"]


def cost_weight(cfg: UniAttnConfig, arm: str) -> float:
    """Relative training cost of an arm (for ordering the side-by-side runs, longest first): a W_c-only step costs
    about 0.4 of a full one (no weight gradients below the first member)."""
    s1 = schedule(cfg, arm)[0]
    return cfg.sft_steps - (0.6 * s1["steps"] if len(schedule(cfg, arm)) > 1 else 0.0)


def seeds_of(cfg: UniAttnConfig, arm: str) -> list[int]:
    n = cfg.n_seeds if arm in DECIDING else 1
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


def sft_batches(cfg: UniAttnConfig, data: Data, seed: int, offset: int = 0) -> MaskedBatches:
    """Post-training batches of ``seed``: rows of the training pool drawn by (seed, step + ``offset``). Every arm of
    one seed reads the same batches: step t of the arm's ``sft_steps`` is batch t (a second stage starts at its
    offset)."""
    return MaskedBatches(data.train_ids, data.train_mask, cfg.batch_size, seed, offset)


def two_stage(cfg: UniAttnConfig, arm: str) -> bool:
    return arm.startswith("uniattn") and cfg.two_stage and arm != "uniattn_1stage"


def schedule(cfg: UniAttnConfig, arm: str) -> list[dict]:
    """The arm's training stages: steps, the first batch each reads (its offset) and what trains. Every arm spends
    ``sft_steps`` steps on batches 0 .. sft_steps − 1 (step-matched); a two-stage arm splits them: W_c only for the
    first ``round(stage1_frac · sft_steps)`` (at least 1), everything for the rest."""
    n = cfg.sft_steps
    if not two_stage(cfg, arm):
        return [{"steps": n, "offset": 0, "trainable": ()}]
    s1 = min(max(1, round(cfg.stage1_frac * n)), n - 1)
    return [{"steps": s1, "offset": 0, "trainable": M.STAGE1_TRAINABLE},
            {"steps": n - s1, "offset": s1, "trainable": ()}]


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


def train_arm(cfg: UniAttnConfig, data: Data, arm: str, seed: int, dropped: tuple = ()) -> dict:
    """One post-training run of ``arm`` on seed ``seed``'s batches (``schedule``: ``sft_steps`` in all), started from
    the pre-trained base (GQA and UniAttn on GQA: its GQA conversion). Weights kept (the analysis reads them)."""
    kw = {**cfg.trainer_kwargs()}
    evals = data.eval_sets()
    desc = data.description + f";phase=sft;arm={arm}"
    ck = max(10, cfg.sft_steps // 4)  # single-stage arms
    if not arm.startswith("uniattn"):
        parent = pretrained(cfg, data)
        steps = cfg.sft_steps
        conv = {"gqa": ("mha_to_gqa", {}), "softmax": ("attention_surgery", {}), "cla": ("attention_surgery", {}),
                "llmdrop": ("attention_surgery", {})}.get(arm, ("none", {}))
        spec = TrainSpec(model_config(cfg, data.n_ids, arm, dropped), sft_optim(cfg, steps),
                         desc + (f";dropped={dropped}" if arm == "llmdrop" else ""), cfg.batch_size, cfg.seq_len,
                         seed, ckpt_every=ck)
        spec = continued(spec, parent, conv[0], **conv[1])
        return train(PAPER_ID, spec, sft_batches(cfg, data, seed), evals, keep_weights=True, parent=parent, **kw)
    parent = parent_of(cfg, data, arm)
    mode = _init_mode(arm, cfg)
    desc += f";init={mode}:{cfg.n_calib}:{cfg.ridge}:{cfg.pinv_rcond};parent={parent['key']};module_optim=spec"
    mcfg = model_config(cfg, data.n_ids, arm)
    st = schedule(cfg, arm)
    desc += f";steps={cfg.sft_steps}:" + "+".join(str(x["steps"]) for x in st)  # step-matched split
    stage1 = TrainSpec(mcfg, sft_optim(cfg, st[0]["steps"], st[0]["trainable"]), desc + ";stage=1", cfg.batch_size,
                       cfg.seq_len, seed, ckpt_every=max(10, st[0]["steps"] // 4))
    # the module arrives with its weights (the parent's, W_c in closed form): the key names the parent and the init.
    # A stage that another follows is not evaluated (its held-out numbers are read nowhere)
    r1 = train(PAPER_ID, stage1, sft_batches(cfg, data, seed, st[0]["offset"]), evals if len(st) == 1 else {},
               module=lambda: initial_model(cfg, data, arm, parent, stage1.optim)[0], keep_weights=True, **kw)
    if len(st) == 1:
        return r1
    # stage 2 reads the batches after stage 1's (offset): the arm's batches are those of every other arm
    stage2 = continued(TrainSpec(mcfg, sft_optim(cfg, st[1]["steps"]), desc + ";stage=2", cfg.batch_size,
                                 cfg.seq_len, seed, ckpt_every=max(10, st[1]["steps"] // 4)), r1)
    r2 = train(PAPER_ID, stage2, sft_batches(cfg, data, seed, st[1]["offset"]), evals, keep_weights=True, parent=r1,
               **kw)
    return {**r2, "stage1": {"key": r1["key"], "wall_s": r1["wall_s"]},
            "stage2_offset": st[1]["offset"], "wall_s": r1["wall_s"] + r2["wall_s"]}


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
    # longest first (the workers then finish together)
    order = sorted(todo, key=lambda t: -cost_weight(cfg, t[0]))
    prefetch([functools.partial(train_arm, cfg, data, a, s, dropped if a == "llmdrop" else ()) for a, s in order],
             cfg.workers, max(cfg.threads, 1))
    records, rows = [], []
    for a, s in todo:
        r = train_arm(cfg, data, a, s, dropped if a == "llmdrop" else ())
        records.append({"variant": a, "seed": s, "result": r})
        loss, acc = row_metrics(r["final"]["qa"])
        rows.append({"variant": a, "seed": s, "answer_loss": float(loss.mean()), "answer_token_acc": float(acc.mean()),
                     **kind_losses(loss, data.eval_kinds), "lm_loss": float(r["final"]["lm"].double().mean()),
                     "params": int(r["n_params"]), "wall_s": float(r["wall_s"]),
                     "stage1_wall_s": float(r.get("stage1", {}).get("wall_s", 0.0))})
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
def softmax_share(cfg: UniAttnConfig, context: int, repeats: int) -> dict:
    """Seconds of the four steps of eager attention for one layer's heads (q Kᵀ, the causal mask, softmax, P V),
    prefill of ``context`` tokens and one decode step at ``context`` keys; median of ``repeats`` (each averaged over
    5 calls). The mask is timed apart from the softmax (a decode step needs none: it is the all-visible mask)."""
    H, dh = cfg.n_heads, cfg.d_model // cfg.n_heads
    g = torch.Generator().manual_seed(cfg.seed)
    out = {}
    for phase, T in (("prefill", context), ("decode", 1)):
        q, k, v = (torch.randn(1, H, n, dh, generator=g) for n in (T, context, context))
        mask = torch.ones(T, context, dtype=torch.bool).tril(context - T)

        def qk():
            return q @ k.transpose(-1, -2) * dh**-0.5

        s = qk()

        def mk():
            return s.masked_fill(~mask, float("-inf"))

        sm_in = mk()

        def sm():
            return torch.softmax(sm_in, -1)

        p = sm()

        def pv():
            return p @ v

        for name, f in (("qk", qk), ("mask", mk), ("softmax", sm), ("pv", pv)):
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(5):
                    f()
                ts.append((time.perf_counter() - t0) / 5)
            out[(phase, name)] = statistics.median(ts)
    return out


@dataclass(frozen=True)
class Analysis:
    cost: pd.DataFrame  # (variant, impl, context): s/token (median, IQR, ratio to FT), cache bytes, counted work
    softmax: pd.DataFrame  # (phase, context): seconds of q Kᵀ, mask, softmax, P V and the softmax share (mask apart)
    similarity: dict  # "pretrained" / "ft": (R, L, L) per held-out row
    init: pd.DataFrame  # (variant, layer): calibration residual at zero and at the init; the same on held-out rows
    init_loss: dict  # variant -> (W,) per-row answer loss of the UniAttn model at init (before training)
    pretrained_rows: tuple  # the pre-trained model's (loss, answer-token accuracy) per held-out row (zero-shot)
    llmdrop_scores: list  # per layer, LLMDrop's score on the calibration rows
    timings: pd.DataFrame  # (variant, impl, context, repeat): seconds per decode step of every timed round


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
                t = {n: sh[(phase, n)] for n in ("qk", "mask", "softmax", "pv")}
                soft.append({"phase": phase, "context": L, **{f"{n}_s": x for n, x in t.items()},
                             "softmax_share": t["softmax"] / sum(t.values())})
    cost = pd.DataFrame(static).merge(latency_summary(timings), on=["variant", "impl", "context"], how="left")
    with torch_threads(cfg.threads * cfg.workers if cfg.threads else 0):  # no clock from here on: every core
        return _measure(cfg, data, runs, by, cost, timings, soft)


def _measure(cfg, data, runs, by, cost, timings, soft) -> Analysis:
    # the motivation figure: softmax maps of the pre-trained and the fine-tuned model on held-out rows
    R = len(data.eval_ids) if cfg.sim_rows == 0 else min(cfg.sim_rows, len(data.eval_ids))
    ids, mask = data.eval_ids[:R, :-1], _real(data.eval_mask[:R])
    pre = _decoder(base_config(cfg, data.n_ids), runs.pretrain["state_dict"])
    ft = load_model(cfg, data, "ft", by[("ft", cfg.seed)])
    sim = {k: np.concatenate([M.probs_similarity(m, ids[i: i + 32], mask[i: i + 32]).numpy()
                              for i in range(0, R, 32)]) for k, m in (("pretrained", pre), ("ft", ft))}
    # each UniAttn initialisation before training: its residuals on the calibration rows (in-sample) and on the
    # held-out rows, and its held-out answer loss
    init_rows, init_loss = [], {}
    h_ids, h_mask = data.eval_ids[:, :-1], _real(data.eval_mask)
    base_h = {i: h for i, (_, h) in M.streams(pre, h_ids, sorted(_members(cfg, "uniattn"))).items()}
    for a in INITS:  # every initialisation, whether or not its arm trains
        lm, fit = initial_model(cfg, data, a, pretrained(cfg, data))
        held = {h["layer"]: h for h in M.heldout_residuals(base_h, lm.model.eval(), h_ids, h_mask)}
        init_rows += [{"variant": a, "init": _init_mode(a, cfg), **f,
                       "heldout_residual_zero": held[f["layer"]]["residual_zero"],
                       "heldout_residual_init": held[f["layer"]]["residual_init"]} for f in fit]
        init_loss[a] = _eval_rows(lm.model.eval(), data)[0]
    c_ids, c_mask = _calib(cfg, data)
    scores = M.attention_importance(pre, c_ids, c_mask)
    return Analysis(cost, pd.DataFrame(soft), sim, pd.DataFrame(init_rows), init_loss, _eval_rows(pre, data), scores,
                    timings)


# ============================================================================================ comparisons


@dataclass(frozen=True)
class Comparisons:
    frame: pd.DataFrame  # one row per comparison a − b of the held-out answer loss (positive: b better)
    boot: dict  # name -> bootstrap replicates (paired rows)
    per_seed: dict  # name -> per common seed gap
    drift: dict  # name -> change of the paired training-loss gap at the end (None: no log)
    init: dict  # zero − closed-form initial answer loss: point, replicates
    similarity: dict  # adjacent − distant softmax similarity in the unified layers (after FT): point, replicates


def _curve(run: dict):
    """One run's logged training loss by global step (a two-stage run: stage 1's log, then stage 2's shifted by its
    offset; both stages' steps read the batch of that global step), or None."""
    from replicate.models.trainer import train_curve

    parts = ([(run["stage1"]["key"], 0)] if "stage1" in run else []) + [(run["key"], run.get("stage2_offset", 0))]
    out = {}
    for key, off in parts:
        c = train_curve(PAPER_ID, key)
        if c is None:
            return None
        out.update({int(t) + off: float(x) for t, x in zip(*c)})
    return out


def step_gap_drift(runs: Runs, a: str, b: str, steps: int, frac: float) -> float | None:
    """``trainer.gap_drift`` over global steps (a two-stage arm's stages joined): per common seed, the mean training-
    loss gap a − b over the last ``frac`` of the steps minus that over the ``frac`` before; None without a log."""
    ra = {r["seed"]: r["result"] for r in runs.records if r["variant"] == a}
    rb = {r["seed"]: r["result"] for r in runs.records if r["variant"] == b}
    drifts = []
    for seed in sorted(set(ra) & set(rb)):
        ca, cb = _curve(ra[seed]), _curve(rb[seed])
        if ca is None or cb is None:
            return None
        common = sorted(set(ca) & set(cb))
        late = [ca[t] - cb[t] for t in common if t >= (1 - frac) * steps]
        early = [ca[t] - cb[t] for t in common if (1 - 2 * frac) * steps <= t < (1 - frac) * steps]
        if not late or not early:
            return None
        drifts.append(float(np.mean(late) - np.mean(early)))
    return float(np.mean(drifts)) if drifts else None


def _rows_of(runs: Runs, v: str) -> dict:
    return {r["seed"]: row_metrics(r["result"]["final"]["qa"])[0] for r in runs.records if r["variant"] == v}


@plan.step
def comparisons(cfg: UniAttnConfig, data: Data, runs: Runs, analysis: Analysis) -> Comparisons:
    W = len(data.eval_ids)
    rng = np.random.default_rng(cfg.seed)
    boot_w = np.stack([np.bincount(rng.integers(0, W, W), minlength=W) for _ in range(cfg.n_boot)])  # (n_boot, W)
    reps_of = lambda d_w: (boot_w @ d_w) / boot_w.sum(1)  # noqa: E731
    rows, boot, per_seed, drift = [], {}, {}, {}
    pairs = [(a, "uniattn") for a in arms(cfg) if a != "uniattn"] + [("uniattn_gqa", "gqa")]
    for a, b in pairs:
        if a not in arms(cfg):
            continue
        pa, pb = _rows_of(runs, a), _rows_of(runs, b)
        common = sorted(set(pa) & set(pb))
        d_w = np.mean([pa[s] - pb[s] for s in common], 0)
        name = f"{a} - {b}"
        boot[name], per_seed[name] = reps_of(d_w), [float((pa[s] - pb[s]).mean()) for s in common]
        drift[name] = (step_gap_drift(runs, a, b, cfg.sft_steps, cfg.drift_frac)
                       if a in ("ft", "softmax", "cla", "llmdrop", "uniattn_1stage", "uniattn_zero", "uniattn_gqa")
                       else None)
        # every arm: the same steps on the same batches (two-stage arms joined over their stages)
        rows.append({"comparison": name, "gap": float(d_w.mean()), "ci_lo": float(np.quantile(boot[name], 0.025)),
                     "ci_hi": float(np.quantile(boot[name], 0.975)), "paired_seeds": len(common),
                     "gap_per_seed": " / ".join(f"{x:+.4f}" for x in per_seed[name]), "train_gap_drift": drift[name]})
    init = {}
    if "uniattn_zero" in analysis.init_loss:
        d_w = analysis.init_loss["uniattn_zero"] - analysis.init_loss["uniattn"]
        init = {"point": float(d_w.mean()), "reps": reps_of(d_w)}
    # redundancy: in the unified layers' range, adjacent layer pairs against pairs >= 2 apart (per row, then
    # bootstrapped over rows), on the fine-tuned model
    sim = analysis.similarity["ft"]  # (R, L, L)
    lo, hi = cfg.begin, cfg.end
    adj = [(i, i + 1) for i in range(lo, hi - 1)]
    far = [(i, j) for i in range(lo, hi) for j in range(i + 2, hi)]
    simd = {}
    if adj and far:
        a = np.mean([sim[:, i, j] for i, j in adj], 0)
        f = np.mean([sim[:, i, j] for i, j in far], 0)
        d = a - f
        R = len(d)
        r2 = np.random.default_rng(cfg.seed + 1)
        simd = {"point": float(d.mean()), "reps": np.array([d[r2.integers(0, R, R)].mean() for _ in range(cfg.n_boot)]),
                "adjacent": float(a.mean()), "distant": float(f.mean())}
    return Comparisons(pd.DataFrame(rows), boot, per_seed, drift, init, simd)


run_experiments = plan.run_all
