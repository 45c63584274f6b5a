"""Finedeep's experiments, as one plan (``run_experiments(cfg)`` -> the bundle ``report.py`` reads).

Steps, in order (the notebook runs one per cell):

- ``data``: a byte-level BPE trained on the training documents, the training stream, fixed held-out windows and the
  count models of validity (``replicate.data.ngram``; cross-entropy of the held-out windows under each): the add-one
  unigram of the training split, and interpolated Kneser-Ney bigrams of the whole split (informational) and of
  exactly the windows each seed's runs train on (the bar: every network must beat the bigram of its own data).
- ``runs``: dense and Finedeep at every (M, K) of the grid, on the same batches (a pure function of (seed, step));
  dense and the pre-registered deciding (M, K) with ``n_seeds`` seeds, the other (M, K) with ``n_seeds_grid``;
  ablations (r ≡ 1, input-guided) at the deciding (M, K) when ``run_ablations``. Initial weights are paired: a
  Finedeep run of seed s starts from the dense run of seed s (the same embeddings, attention, norms and head; its
  experts are the slices of that dense FFN; its routers its own N(0, 0.02) or zero draw). Every run records, on the
  held-out windows, the per-position loss, the per-layer NSAR (raw and RMS-relative thresholds) and the router
  scores (histograms, extremes) of every sub-layer. With ``workers`` > 1 the runs train side by side in worker
  processes first (``replicate.models.trainer.prefetch``), then are read from the run cache in order.
- ``budgets``: parameters (``replicate.moe.param_counts``) and matmul FLOPs per token of every variant; the exact
  extra parameters (M·K + M − 1)·d per layer are checked.
- ``mechanism``: identities and limits on fresh models (M = 1 with r ≡ 1 equals dense on the same weights, the fast
  forward equals the spec's reference, R = 0 gives scores exactly 0.5, gradients reach every router vector) and on
  the trained ones (scores inside (0, 1)).
- ``comparisons``: paired gaps (by seed; and a paired bootstrap over held-out windows for single-seed arms).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import lightning as L
import torch

from replicate.data import lm
from replicate.data.text import LMData, lm_data, lm_text, stream_batches
from replicate.experiments import Plan
from replicate.models.decoder import Decoder, LayerSpec
from replicate.models.lm import CausalLM
from replicate.models.probes import capture, module_inputs
from replicate.models.trainer import TrainSpec, heldout_drift_rows, late_step, prefetch, train
from replicate.moe import check_budgets, param_counts
from replicate.papers.finedeep import PAPER_ID, FinedeepConfig
from replicate.papers.finedeep.method import (
    NSAR_TENSORS,
    FinedeepFFN,
    extra_params_per_layer,
    ffn_activations,
    matmul_params,
    nsar,
    state_from_dense,
)

plan = Plan(PAPER_ID)


# ==================================================================================================== data


Data = LMData  # the shared data step's bundle (replicate.data.text): tokenizer, stream, windows, validity bars


def all_seeds(cfg: FinedeepConfig) -> range:
    """Every seed some run trains with (dense and the deciding (M, K): n_seeds; the rest: n_seeds_grid; ablations:
    ``seed``)."""
    return range(cfg.seed, cfg.seed + max(cfg.n_seeds, cfg.n_seeds_grid))


@plan.step
def data(cfg: FinedeepConfig) -> Data:
    t = lm_text(cfg.corpus, cfg.vocab_size, cfg.heldout_fraction, cfg.doc_max_bytes, name=f"finedeep-{cfg.corpus}")
    # the count models of validity (replicate.data.ngram): the bar is the bigram of the windows each seed's runs see
    return lm_data(t, eval_windows=cfg.eval_windows, seq_len=cfg.seq_len, batch_size=cfg.batch_size, steps=cfg.steps,
                   seeds=all_seeds(cfg))


# ================================================================================================= models


def variant_name(M: int | None, K: int | None = None, score: str = "output") -> str:
    if M is None:
        return "dense"
    return f"finedeep({M},{K})" + ("" if score == "output" else f" r={'1' if score == 'none' else 'input'}")


def model_config(cfg: FinedeepConfig, n_ids: int, M: int | None = None, K: int | None = None,
                 score: str | None = None, norm: str | None = None, router_init: str | None = None):
    """The decoder of one variant: dense (M None: SwiGLU of width d_ff in every layer) or Finedeep (M, K) in every
    layer (the registered ``"finedeep"`` FFN kind, width d_ff cut into M·K experts)."""
    base = cfg.decoder(n_ids)
    if M is None:
        return base
    init = router_init or cfg.router_init
    kw = (("M", M), ("K", K), ("norm", norm or cfg.norm), ("score", score or cfg.score),
          ("router_init_std", 0.0 if init == "zero" else None))
    return dataclasses.replace(base, layers=tuple(LayerSpec(ffn="finedeep", ffn_kwargs=kw)
                                                  for _ in range(cfg.n_layers)))


class FinedeepLM(CausalLM):
    """``CausalLM`` whose initial weights can be paired with a dense run's: ``init_from_dense`` (a dense decoder's
    state dict) replaces every shared weight and cuts the dense FFN into the experts (:func:`state_from_dense`).
    Training and evaluation are ``CausalLM``'s, unchanged."""

    def __init__(self, model, optim, init_from_dense=None):
        super().__init__(model, optim)
        if init_from_dense is not None:  # paired init: the dense run's initial weights, its FFN cut into experts
            self.model.load_state_dict(state_from_dense(init_from_dense, self.model))


def batches(cfg: FinedeepConfig, data: Data, seed: int) -> lm.Batches:
    """The training batches of every run of ``seed`` (a pure function of (seed, step): all variants see them)."""
    return stream_batches(data.stream, cfg.batch_size, cfg.seq_len, seed)


def build_module(cfg: FinedeepConfig, n_ids: int, M: int | None = None, K: int | None = None,
                 score: str | None = None) -> "FinedeepLM":
    """A run's LightningModule from the global random state: the dense decoder is drawn first, exactly as the dense
    run of the same seed draws it; a Finedeep model then takes its weights, the FFN cut into the experts (paired
    initialisation), and keeps its own router draw."""
    optim = cfg.optim(cfg.steps)
    if M is None:
        return FinedeepLM(model_config(cfg, n_ids), optim)
    dense_sd = Decoder(model_config(cfg, n_ids)).state_dict()
    return FinedeepLM(model_config(cfg, n_ids, M, K, score), optim, init_from_dense=dense_sd)


def train_variant(cfg: FinedeepConfig, data: Data, seed: int, M: int | None = None, K: int | None = None,
                  score: str | None = None) -> dict:
    """One run: dense (M None) or Finedeep (M, K), initial weights paired with the dense run of ``seed``."""
    init = "" if M is None else f";init=dense_slices(seed={seed})"
    spec = TrainSpec(model_config(cfg, data.n_ids, M, K, score), cfg.optim(cfg.steps),
                     data.description + init, cfg.batch_size, cfg.seq_len, seed,
                     eval_steps=(late_step(cfg.steps, cfg.drift_frac),), ckpt_every=max(10, cfg.steps // 4))
    # the module is built by train() right after seeding (so its initial weights are the seed's); the final weights
    # are kept for the activation analysis, which can then change without retraining
    return train(PAPER_ID, spec, batches(cfg, data, seed), {"heldout": data.windows},
                 module=lambda: build_module(cfg, data.n_ids, M, K, score), keep_weights=True,
                 **cfg.trainer_kwargs())


def final_loss(result: dict) -> torch.Tensor:
    """A run's (W, T) per-position held-out losses at the end of training."""
    return result["final"]["heldout"].double()


@dataclass(frozen=True)
class Runs:
    records: list  # {"variant", "M", "K", "score", "seed", "result"}
    frame: pd.DataFrame  # one row per run: final held-out loss, ppl, params, wall time, tokens/s


def arms(cfg: FinedeepConfig) -> list[tuple[str, int | None, int | None, str, range]]:
    """(variant, M, K, score, seeds) of every arm, in table order."""
    deciding_seeds = range(cfg.seed, cfg.seed + cfg.n_seeds)
    out = [("dense", None, None, "output", deciding_seeds)]
    for M, K in cfg.grid:
        seeds = deciding_seeds if (M, K) == cfg.deciding else range(cfg.seed, cfg.seed + cfg.n_seeds_grid)
        out.append((variant_name(M, K, cfg.score), M, K, cfg.score, seeds))
    if cfg.run_ablations:
        M, K = cfg.deciding
        for score in ("none", "input"):
            if score != cfg.score:
                out.append((variant_name(M, K, score), M, K, score, range(cfg.seed, cfg.seed + 1)))
    return out


def run_calls(cfg: FinedeepConfig, data: Data) -> list[tuple[tuple, functools.partial]]:
    """((variant, M, K, score, seed), call) of every run, in table order. The runs are independent: a Finedeep run's
    paired initial weights are drawn from its seed (``build_module``), not read from the dense run's result, so any
    order trains the same models."""
    return [((variant, M, K, score, seed), functools.partial(train_variant, cfg, data, seed, M, K, score))
            for variant, M, K, score, seeds in arms(cfg) for seed in seeds]


@plan.step
def runs(cfg: FinedeepConfig, data: Data) -> Runs:
    calls = run_calls(cfg, data)
    # with workers > 1: trained side by side first, the slowest (most sub-layers) first so the workers finish together
    slow_first = sorted(calls, key=lambda kc: (-(kc[0][1] or 0), kc[0][0] == "dense"))
    prefetch([c for _, c in slow_first], cfg.workers, cfg.threads)
    recs, rows = [], []
    for (variant, M, K, score, seed), call in calls:  # in table order, from the run cache
        res = call()
        recs.append({"variant": variant, "M": M, "K": K, "score": score, "seed": seed, "result": res})
        loss = float(final_loss(res).mean())
        rows.append({"variant": variant, "M": M or 0, "K": K or 0, "score": score if M else "", "seed": seed,
                     "loss": loss, "ppl": float(np.exp(loss)), "wall_s": res["wall_s"],
                     "tokens_per_s": cfg.steps * res["tokens_per_step"] / max(res["wall_s"], 1e-9)})
    return Runs(recs, pd.DataFrame(rows))


# ================================================================================================ budgets


@plan.step
def budgets(cfg: FinedeepConfig, data: Data) -> pd.DataFrame:
    """Parameters (all active: Finedeep is dense) and training matmul FLOPs per token of every variant; the exact
    extra parameters of spec §3.4 checked for each."""
    rows, counts = [], {}
    dense = Decoder(model_config(cfg, data.n_ids))
    d_params, d_mm = param_counts(dense).total, matmul_params(dense)
    attn = 12 * cfg.n_layers * cfg.d_model * cfg.seq_len  # attention scores and values (equal for all variants)
    for variant, M, K, score, _ in arms(cfg):
        model = dense if M is None else Decoder(model_config(cfg, data.n_ids, M, K, score))
        c = param_counts(model)
        counts[variant] = c
        expected = 0 if M is None else cfg.n_layers * extra_params_per_layer(cfg.d_model, M, K, cfg.norm, score)
        flops = 6 * matmul_params(model) + attn
        rows.append({"variant": variant, "M": M or 0, "K": K or 0, "total_params": c.total,
                     "non_embedding_params": model.num_params(), "extra_params": c.total - d_params,
                     "expected_extra": expected, "exact": c.total - d_params == expected,
                     "params_vs_dense": c.total / d_params - 1.0, "train_flops_per_token": flops,
                     "flops_vs_dense": flops / (6 * d_mm + attn) - 1.0})
    check_budgets(counts, field="total", rtol=cfg.budget_rtol)  # raises naming the variant that breaks the budget
    return pd.DataFrame(rows)


# ============================================================================================= activations


@dataclass(frozen=True)
class Activations:
    """The activation analysis on the first ``analysis_windows`` held-out windows, from each run's final weights and
    from the dense models at initialisation (``state`` "init": the weights the dense run of that seed started from).
    ``nsar``: one row per (variant, seed, state, layer, tensor, threshold kind, ε) with the layer's activation RMS;
    ``scores``: (variant, seed) -> {"hist": (L, M, bins), "edges", "mean" / "min" / "max": (L, M)} of the router
    scores (runs with scores only)."""

    nsar: pd.DataFrame
    scores: dict


@torch.no_grad()
def analyse(cfg: FinedeepConfig, model: Decoder, windows: torch.Tensor, chunk: int = 16):
    """Every layer's NSAR tensors (``method.ffn_activations``) on ``windows``: the FFN slots' inputs are captured by
    forward pre-hooks during one pass, then each slot's intermediates are recomputed from its input. Returns
    {layer: {tensor: [groups], "score": [scores per sub-layer]}}."""
    inputs = module_inputs(model, [block.ffn for block in model.layers], windows, chunk)
    return {i: ffn_activations(block.ffn, inputs[i]) for i, block in enumerate(model.layers)}


def _nsar_rows(cfg: FinedeepConfig, acts: dict, **keys) -> list[dict]:
    rows = []
    for layer, tensors in acts.items():
        for tensor in NSAR_TENSORS:
            groups = tensors[tensor]
            rms = float(torch.cat([g.double().reshape(-1) for g in groups]).pow(2).mean().sqrt())
            for kind, eps_list, rel in (("raw", cfg.nsar_eps, False), ("rms-relative", cfg.nsar_rel_eps, "rms"),
                                        ("mean-abs-relative", cfg.nsar_rel_eps, "mean_abs")):
                for e in eps_list:
                    rows.append({**keys, "layer": layer, "tensor": tensor, "threshold": kind, "eps": e,
                                 "nsar": nsar(groups, e, relative=rel), "rms": rms})
    return rows


def _score_stats(cfg: FinedeepConfig, acts: dict) -> dict | None:
    if not any(t["score"] for t in acts.values()):
        return None
    r = [[x.float().reshape(-1) for x in acts[i]["score"]] for i in sorted(acts)]  # [layer][sub-layer]
    out = {"hist": torch.stack([torch.stack([torch.histc(x, cfg.score_bins, 0, 1) for x in row]) for row in r]),
           "edges": torch.linspace(0, 1, cfg.score_bins + 1)}
    for f, name in ((torch.min, "min"), (torch.max, "max"), (torch.mean, "mean")):
        out[name] = torch.tensor([[float(f(x)) for x in row] for row in r])
    return out


@plan.step
def activations(cfg: FinedeepConfig, data: Data, runs: Runs) -> Activations:
    W = len(data.windows)  # windows spread over every held-out play, not the first play's
    windows = data.windows[torch.linspace(0, W - 1, min(cfg.analysis_windows, W)).round().long()]
    rows, scores = [], {}
    for r in runs.records:
        model = Decoder(model_config(cfg, data.n_ids, r["M"], r["K"], r["score"] if r["M"] else None))
        model.load_state_dict({k.removeprefix("model."): v for k, v in r["result"]["state_dict"].items()})
        acts = analyse(cfg, model, windows)
        rows += _nsar_rows(cfg, acts, variant=r["variant"], seed=r["seed"], state="trained")
        st = _score_stats(cfg, acts)
        if st is not None:
            scores[(r["variant"], r["seed"])] = st
    for seed in sorted({r["seed"] for r in runs.records if r["variant"] == "dense"}):
        L.seed_everything(seed, workers=True, verbose=False)  # exactly as train() seeds before building the module
        model = build_module(cfg, data.n_ids).model
        rows += _nsar_rows(cfg, analyse(cfg, model, windows), variant="dense", seed=seed, state="init")
    return Activations(pd.DataFrame(rows), scores)


# ============================================================================================== mechanism


def _sample_ids(cfg: FinedeepConfig, data: Data, n: int = 2) -> torch.Tensor:
    return batches(cfg, data, cfg.seed).batch(0)[:n, :-1]


@plan.step
def mechanism(cfg: FinedeepConfig, data: Data, runs: Runs, activations: Activations) -> pd.DataFrame:
    """The method's identities and limits (value, what it must be, ok)."""
    rows = []
    ids = _sample_ids(cfg, data)
    N = cfg.n_experts
    torch.manual_seed(cfg.seed)
    dense = Decoder(model_config(cfg, data.n_ids)).eval()
    ref = dense(ids).logits
    with torch.no_grad():
        for M, K, what in ((1, 1, "M = 1, K = 1, r ≡ 1 (gate fixed to 1)"), (1, N, f"M = 1, K = {N}, r ≡ 1 (partition)")):
            fd = Decoder(model_config(cfg, data.n_ids, M, K, "none", norm="pre")).eval()
            fd.load_state_dict(state_from_dense(dense.state_dict(), fd))
            diff = float((fd(ids).logits - ref).abs().max())
            rows.append({"check": f"{what} on the dense weights == dense: max |Δ logit|", "value": diff,
                         "expected": "<= 1e-4", "ok": diff <= 1e-4})
        for score in ("output", "input", "none"):  # the fast forward against the spec's §3.8 reference
            ffn = FinedeepFFN(cfg.d_model, cfg.d_ff, *cfg.deciding, score=score)
            u = torch.randn(64, cfg.d_model)
            diff = max(float((layer(u) - layer.reference(u)).abs().max()) for layer in ffn.sub)
            rows.append({"check": f"fast forward == reference (o materialised), score={score}: max |Δ|",
                         "value": diff, "expected": "<= 1e-5", "ok": diff <= 1e-5})
        zero = Decoder(model_config(cfg, data.n_ids, *cfg.deciding, "output", router_init="zero")).eval()
        with capture(zero, ["score"]) as rec:
            zero(ids)
        r = torch.cat([v[0].flatten() for v in rec.data.values()])
        rows.append({"check": "R = 0: every score exactly 0.5 (fraction)", "value": float((r == 0.5).double().mean()),
                     "expected": 1.0, "ok": bool((r == 0.5).all())})
    fd = Decoder(model_config(cfg, data.n_ids, *cfg.deciding, "output"))
    loss, _ = fd.loss(ids, batches(cfg, data, cfg.seed).batch(0)[:2, 1:])
    loss.backward()
    g = torch.stack([m.sub[j].router.weight.grad.norm(dim=-1) for m in (b.ffn for b in fd.layers)
                     for j in range(len(m.sub))])
    rows.append({"check": "gradient reaches every router vector R_{j,i}: min ‖dL/dR‖", "value": float(g.min()),
                 "expected": "> 0", "ok": bool((g > 0).all())})
    lo = min([float(st["min"].min()) for st in activations.scores.values()], default=1.0)
    hi = max([float(st["max"].max()) for st in activations.scores.values()], default=0.0)
    rows.append({"check": "trained models: every recorded score in (0, 1): min, max",
                 "value": f"{lo:.4f}, {hi:.4f}", "expected": "0 < min, max < 1", "ok": 0.0 < lo and hi < 1.0})
    return pd.DataFrame(rows)


# ============================================================================================ comparisons


def _losses(runs: Runs, variant: str) -> dict[int, torch.Tensor]:
    return {r["seed"]: final_loss(r["result"]) for r in runs.records if r["variant"] == variant}


@dataclass(frozen=True)
class Comparisons:
    frame: pd.DataFrame  # one row per (a, b): gap (a − b, positive: b better), per-seed gaps, bootstrap interval
    boot: dict  # "a - b" -> bootstrap replicates of the gap (paired windows, common seeds)
    per_seed: dict  # "a - b" -> gap per common seed
    depth_width_boot: np.ndarray  # replicates of min(gap to each extreme) for the deciding (M, K)
    drift: dict  # "a - b" -> per common seed, the per-window drift of the held-out gap over the last stretch (None)


@plan.step
def comparisons(cfg: FinedeepConfig, data: Data, runs: Runs) -> Comparisons:
    """Paired gaps of the held-out loss (a − b > 0: b better), per common seed (same batches, paired init) and
    by a bootstrap over held-out windows (seed-mean per-position losses; one draw of windows shared by all)."""
    W = len(data.windows)
    rng = np.random.default_rng(cfg.seed)
    boot_w = np.stack([np.bincount(rng.integers(0, W, W), minlength=W) for _ in range(cfg.n_boot)])  # (n_boot, W)
    dec = variant_name(*cfg.deciding, cfg.score)
    others = [v for v, *_ in arms(cfg) if v != dec]
    rows, boot, per_seed, reps_of = [], {}, {}, {}
    for a in others:
        pa, pb = _losses(runs, a), _losses(runs, dec)
        common = sorted(set(pa) & set(pb))
        diff = torch.stack([pa[s] - pb[s] for s in common]).mean(0)  # (W, T)
        d_w = diff.sum(1).numpy()
        n_w = diff.shape[1]
        reps = (boot_w @ d_w) / (boot_w.sum(1) * n_w)
        name = f"{a} - {dec}"
        boot[name], reps_of[a] = reps, reps
        per_seed[name] = [float((pa[s] - pb[s]).mean()) for s in common]
        rows.append({"comparison": name, "gap": float(diff.mean()), "ci_lo": float(np.quantile(reps, 0.025)),
                     "ci_hi": float(np.quantile(reps, 0.975)), "paired_seeds": len(common),
                     "gap_per_seed": " / ".join(f"{x:+.4f}" for x in per_seed[name])})
    ends = [variant_name(M, K, cfg.score) for M, K in (cfg.grid[0], cfg.grid[-1]) if (M, K) != cfg.deciding]
    dw = np.min(np.stack([reps_of[e] for e in ends]), 0) if ends else np.array([])
    late = late_step(cfg.steps, cfg.drift_frac)
    drift = {f"{a} - {dec}": heldout_drift_rows(runs.records, a, dec, late) for a in others}
    frame = pd.DataFrame(rows)
    frame["heldout_gap_drift"] = [None if drift[n] is None else float(np.mean([d.mean() for d in drift[n]]))
                                  for n in frame["comparison"]]
    return Comparisons(frame, boot, per_seed, dw, drift)


run_experiments = plan.run_all
