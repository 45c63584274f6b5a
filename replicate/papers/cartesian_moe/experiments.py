"""CartesianMoE's experiments, as one plan (``run_experiments(cfg)`` -> the bundle ``report.py`` reads).

Steps, in order (the notebook runs one per cell):

- ``data``: a byte-level BPE trained on the training documents, the training stream and its token counts (the
  balanced hash's input), fixed held-out windows, and the count models of validity (``replicate.data.ngram``): the
  add-one unigram of the training split, the Kneser-Ney bigram of the whole split (informational) and of exactly the
  windows each seed's runs train on (the bar every run must beat).
- ``runs``: every variant of the budget table on the same batches (a pure function of (seed, step)); the deciding
  pair (Fine-grained, CartesianMoE) with ``n_seeds`` seeds and held-out evaluations during training (Fig. 4), the
  others with ``n_seeds_baselines``; Table 3's CartesianMoE without shared experts when ``run_no_shared``. Each run
  keeps its final weights (for the inference-only Table 4). With ``workers`` > 1 the runs train side by side in
  worker processes first (``prefetch``), then are read from the run cache in order.
- ``budgets``: total and active FFN width and parameters per MoE layer and per model (``replicate.moe.param_counts``);
  raises unless every MoE variant has SMoE-Share's total (and, fixed-k, active) within ``budget_rtol``.
- ``robustness``: every routed model re-evaluated from its weights, normally and with each router's top-1 expert
  disabled (CartesianMoE: in A, in B, in both), per held-out position; TopP's measured experts per token.
- ``mechanism``: the product oracle, exactly k distinct experts per sub-layer on the trained models, disable-top-1
  changes only the routing, and the re-evaluation reproduces the trainer's own final loss.
- ``comparisons``: paired gaps (by seed, and a paired bootstrap over held-out windows) of loss, accuracy and the
  top-1-disabled degradation.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from replicate.data import lm
from replicate.data.text import LMData, lm_data, lm_text, stream_batches
from replicate.experiments import Plan
from replicate.models.decoder import Decoder
from replicate.models.ffn import SubLayerStack, build_ffn
from replicate.models.probes import capture
from replicate.models.trainer import TrainSpec, heldout_drift_rows, late_step, prefetch, train
from replicate.moe import MoE, ParamCount, check_budgets, param_counts
from replicate.papers.cartesian_moe import DECIDING, PAPER_ID, ROUTED, CartesianMoEConfig
from replicate.papers.cartesian_moe.method import (
    disable_top1,
    evaluate,
    ffn_widths,
    product_reference,
    routers,
    variant_layer,
)

plan = Plan(PAPER_ID)


# ==================================================================================================== data


@dataclass(frozen=True)
class Data(LMData):
    """The shared data bundle (``replicate.data.text.LMData``) and the training token counts (the balanced hash's
    table)."""

    counts_V: torch.Tensor


def batches(cfg: CartesianMoEConfig, data: LMData, seed: int) -> lm.Batches:
    """The training batches of every run of ``seed`` (a pure function of (seed, step): all variants see them)."""
    return stream_batches(data.stream, cfg.batch_size, cfg.seq_len, seed)


def all_seeds(cfg: CartesianMoEConfig) -> range:
    return range(cfg.seed, cfg.seed + max(cfg.n_seeds, cfg.n_seeds_baselines))


@plan.step
def data(cfg: CartesianMoEConfig) -> Data:
    t = lm_text(cfg.corpus, cfg.vocab_size, cfg.heldout_fraction, cfg.doc_max_bytes, name=f"cartesian_moe-{cfg.corpus}")
    d = lm_data(t, eval_windows=cfg.eval_windows, seq_len=cfg.seq_len, batch_size=cfg.batch_size, steps=cfg.steps,
                seeds=all_seeds(cfg))
    counts = torch.bincount(torch.from_numpy(t.stream.astype(np.int64)), minlength=t.n_ids)
    return Data(**vars(d), counts_V=counts)


# ================================================================================================= models


def model_config(cfg: CartesianMoEConfig, n_ids: int, variant: str, seed: int, counts_V: torch.Tensor | None = None):
    """The decoder of one variant: SwiGLU of width D in every layer but ``moe_layers``, which get the variant's FFN
    (``method.variant_layer``); Dense keeps width D there too (the paper's dense backbone)."""
    base = cfg.decoder(n_ids)
    spec = variant_layer(variant, cfg.d_ff, cfg.n_experts, shared_mix=cfg.shared_mix, balance_coef=cfg.balance_coef,
                         top_p=cfg.top_p, vocab_size=n_ids, hash_seed=seed,
                         hash_counts=counts_V if cfg.hash_kind == "balanced" else None)
    if spec is None:
        return base
    return dataclasses.replace(base, layers={i: spec for i in cfg.moe_layers})


def curve_steps(cfg: CartesianMoEConfig) -> tuple[int, ...]:
    """Intermediate held-out evaluations of the deciding pair (Fig. 4): ``curve_points`` evenly spaced steps."""
    n = cfg.curve_points
    return tuple(sorted({max(1, round(cfg.steps * j / (n + 1))) for j in range(1, n + 1)} - {cfg.steps}))


def heldout_set(data: Data) -> dict:
    """The held-out windows as a masked set (every target counts): the trainer's evaluation then records per-position
    loss *and* next-token correctness (``CausalLM.masked_metrics``)."""
    return {"ids": data.windows, "loss_mask": torch.ones_like(data.windows, dtype=torch.bool)}


def train_variant(cfg: CartesianMoEConfig, data: Data, variant: str, seed: int) -> dict:
    """One run (or its cached result), final weights kept for the inference-only Table 4. Every run is also scored
    after ``1 − drift_frac`` of its steps (the held-out drift of its comparisons)."""
    ev = tuple(sorted({*(curve_steps(cfg) if variant in DECIDING else ()), late_step(cfg.steps, cfg.drift_frac)}))
    spec = TrainSpec(model_config(cfg, data.n_ids, variant, seed, data.counts_V), cfg.optim(cfg.steps),
                     data.description + f";variant={variant};eval=masked", cfg.batch_size, cfg.seq_len, seed,
                     eval_steps=ev, ckpt_every=max(10, cfg.steps // 4))
    return train(PAPER_ID, spec, batches(cfg, data, seed), {"heldout": heldout_set(data)},
                 keep_weights=True, **cfg.trainer_kwargs())


def arms(cfg: CartesianMoEConfig) -> list[tuple[str, range]]:
    """(variant, seeds) of every run, in Table 1's order (Table 3's ablation last)."""
    out = [(v, range(cfg.seed, cfg.seed + (cfg.n_seeds if v in DECIDING else cfg.n_seeds_baselines)))
           for v in cfg.variants]
    if cfg.run_no_shared:
        out.append(("cartesian_noshared", range(cfg.seed, cfg.seed + 1)))
    return out


def run_calls(cfg: CartesianMoEConfig, data: Data) -> list[tuple[tuple, functools.partial]]:
    return [((v, s), functools.partial(train_variant, cfg, data, v, s)) for v, seeds in arms(cfg) for s in seeds]


@dataclass(frozen=True)
class Runs:
    records: list  # {"variant", "seed", "result"}
    frame: pd.DataFrame  # one row per (variant, seed, evaluated step)


def _cost(variant: str) -> int:
    """Slowest first (so two workers finish together): Cartesian's two sub-layers, then the routed MoEs, dense last."""
    return {"cartesian": 0, "cartesian_noshared": 0, "fine_grained": 1, "topp": 2, "smoe_top3": 3}.get(
        variant, 5 if variant == "dense" else 4)


@plan.step
def runs(cfg: CartesianMoEConfig, data: Data) -> Runs:
    calls = run_calls(cfg, data)
    prefetch([c for _, c in sorted(calls, key=lambda kc: _cost(kc[0][0]))], cfg.workers, cfg.threads)
    recs, rows = [], []
    for (variant, seed), call in calls:  # in table order, from the run cache
        res = call()
        recs.append({"variant": variant, "seed": seed, "result": res})
        points = sorted(res["evals"].get("heldout", {}).items()) + [(cfg.steps, res["final"]["heldout"])]
        for step, ev in points:
            loss = float(ev["loss"].double().mean())
            rows.append({"variant": variant, "seed": seed, "step": step, "final": step == cfg.steps, "loss": loss,
                         "ppl": float(np.exp(loss)), "accuracy": float(ev["correct"].double().mean()),
                         "wall_s": res["wall_s"], "resumed": bool(res.get("resumed", False)),
                         "tokens_per_s": cfg.steps * res["tokens_per_step"] / max(res["wall_s"], 1e-9)})
    return Runs(recs, pd.DataFrame(rows))


def final_frame(runs: Runs) -> pd.DataFrame:
    f = runs.frame
    return f[f["final"]].reset_index(drop=True)


# ================================================================================================ budgets


@plan.step
def budgets(cfg: CartesianMoEConfig, data: Data) -> pd.DataFrame:
    """Per variant: the FFN width (total, active) and parameters (``param_counts``: routers, gates and norms
    included) of one MoE layer, and of the whole model. Raises (``check_budgets``, naming the variant) unless every
    MoE variant's MoE-layer total equals SMoE-Share's within ``budget_rtol`` and, for fixed-k routing but SMoE-Top3,
    its active parameters too; SMoE-Top3's active width must be exactly (N+1)/N of the others (the paper's mismatch)."""
    rows, tot, act = [], {}, {}
    D, N = cfg.d_ff, cfg.n_experts
    for v, _ in arms(cfg):
        model = Decoder(model_config(cfg, data.n_ids, v, cfg.seed, data.counts_V))
        ffn = model.layers[cfg.moe_layers[0]].ffn
        width, width_act = ffn_widths(ffn)
        block = model.layers[cfg.moe_layers[0]]
        norms = sum(p.numel() for p in block.ffn_norm.parameters()) if block.ffn_norm is not None else 0
        c = param_counts(ffn)  # a Cartesian stack holds its own two norms; the others use the block's ffn_norm
        layer = ParamCount(c.total + norms, c.active + norms)
        whole = param_counts(model)
        dynamic = any(getattr(r, "top_p", None) is not None for r in routers(ffn))
        if dynamic:  # TopP's active width depends on the routing: the measured value is in table1, not a bound here
            width_act = float("nan")
        rows.append({"variant": v, "ffn_width_total": width, "ffn_width_active": width_act,
                     "ffn_width_total_in_D": width / D, "ffn_width_active_in_D": width_act / D,
                     "layer_params_total": layer.total, "layer_params_active": layer.active,
                     "model_params_total": whole.total, "model_params_active": whole.active,
                     "active": "dynamic: measured per token in table1 (up to N experts)" if dynamic else "fixed"})
        if v != "dense":
            tot[v] = layer
            if not dynamic and v != "smoe_top3":
                act[v] = layer
    frame = pd.DataFrame(rows)
    ref = "smoe_share" if "smoe_share" in tot else next(iter(tot))
    order = lambda d: {ref: d[ref], **{k: x for k, x in d.items() if k != ref}}
    check_budgets(order(tot), field="total", rtol=cfg.budget_rtol)  # raises naming the variant that breaks it
    if ref in act:
        check_budgets(order(act), field="active", rtol=cfg.budget_rtol)
    w = frame.set_index("variant")
    moe = [v for v in w.index if v != "dense"]
    if not (w.loc[moe, "ffn_width_total"] == (N + 1) * D).all():
        raise ValueError(f"budget: every MoE layer must hold FFN width (N+1)·D = {(N + 1) * D}: "
                         f"{w.loc[moe, 'ffn_width_total'].to_dict()}")
    fixed = [v for v in moe if w.loc[v, "active"] == "fixed" and v != "smoe_top3"]
    if not (w.loc[fixed, "ffn_width_active"] == 3 * D).all():
        raise ValueError(f"budget: every fixed-k MoE layer must run width 3·D = {3 * D}: "
                         f"{w.loc[fixed, 'ffn_width_active'].to_dict()}")
    if "smoe_top3" in w.index and w.loc["smoe_top3", "ffn_width_active"] != 3 * D * (N + 1) / N:
        raise ValueError("budget: SMoE-Top3 must run 3·D·(N+1)/N (the paper's mismatch mirrored)")
    frame["layer_total_vs_ref"] = frame["layer_params_total"] / float(w.loc[ref, "layer_params_total"]) - 1.0
    return frame


# ============================================================================================== robustness


def trained_model(cfg: CartesianMoEConfig, data: Data, variant: str, seed: int, result: dict) -> Decoder:
    model = Decoder(model_config(cfg, data.n_ids, variant, seed, data.counts_V))
    model.load_state_dict({k.removeprefix("model."): v for k, v in result["state_dict"].items()})
    return model.eval()


def settings(variant: str) -> tuple[str, ...]:
    """The inference settings of Table 4 for one variant: normal, and top-1 disabled (CartesianMoE: per sub-layer)."""
    if variant.startswith("cartesian"):
        return ("normal", "A", "B", "both")
    return ("normal", "all") if variant in ROUTED else ("normal",)


@dataclass(frozen=True)
class Robustness:
    frame: pd.DataFrame  # one row per (variant, seed, setting): loss, ppl, accuracy, experts per token
    loss: dict  # (variant, seed, setting) -> (W, T) per-position loss (float64)


@plan.step
def robustness(cfg: CartesianMoEConfig, data: Data, runs: Runs) -> Robustness:
    """Spec §3.6: each routed model re-evaluated from its final weights on the held-out windows, normally and with
    every router's top-1 expert removed (the normal rule then picks among the rest); CartesianMoE in sub-layer A, B
    and both. Hash Layer: normal only (fixed routing). Dense: normal only."""
    rows, losses = [], {}
    for r in runs.records:
        v, s = r["variant"], r["seed"]
        model = trained_model(cfg, data, v, s, r["result"])
        for st in settings(v):
            where = "both" if st in ("normal", "all") else st
            with disable_top1(model, where) if st != "normal" else _nothing():
                ev = evaluate(model, data.windows)
            loss = ev["loss"].double()
            losses[(v, s, st)] = loss
            rows.append({"variant": v, "seed": s, "setting": st, "loss": float(loss.mean()),
                         "ppl": float(np.exp(float(loss.mean()))), "accuracy": float(ev["correct"].double().mean()),
                         "experts_per_token": float(ev["active"].mean()) if len(ev["active"]) else float("nan")})
    return Robustness(pd.DataFrame(rows), losses)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


# ============================================================================================== mechanism


@plan.step
def mechanism(cfg: CartesianMoEConfig, data: Data, runs: Runs, robustness: Robustness) -> pd.DataFrame:
    """The layer's identities and invariants (check, value, expected, ok)."""
    rows = []
    D, N = cfg.d_ff, cfg.n_experts
    # 1. the product oracle, float64, on a fresh layer of the run's sizes (shared-gate weights redrawn larger than
    # their N(0, 0.02) init, so the oracle sees gates far from even)
    torch.manual_seed(cfg.seed)
    spec = variant_layer("cartesian", D, N, shared_mix=cfg.shared_mix)
    layer = build_ffn(spec.ffn, d_model=cfg.d_model, d_ff=spec.d_ff, **dict(spec.ffn_kwargs)).double()
    for m in layer.modules():
        if isinstance(m, MoE) and m.shared_gate is not None:
            torch.nn.init.normal_(m.shared_gate.weight, std=0.3)
    x = torch.randn(1, 64, cfg.d_model, dtype=torch.float64)
    ctx = type("Ctx", (), {"token_ids_BT": None})()
    for where in (None, "A", "B", "both"):
        with torch.no_grad(), disable_top1(layer, where) if where else _nothing():
            y = layer(x, ctx)[0][0]
        ref, W = product_reference(layer, x[0], where)
        diff = float((y - ref).abs().max())
        npairs = (W > 0).sum((1, 2))
        rows.append({"check": f"layer == explicit sum over the {N}x{N} composite experts (float64; top-1 disabled in "
                              f"{where or 'none'}): max |Δ|", "value": diff, "expected": "<= 1e-6",
                     "ok": diff <= 1e-6})
        rows.append({"check": f"composite experts per token with weight > 0 (disabled: {where or 'none'}); weights "
                              "sum to 1", "value": f"{int(npairs.min())}-{int(npairs.max())}",
                     "expected": "4-4", "ok": bool((npairs == 4).all() and torch.allclose(W.sum((1, 2)),
                                                                                        torch.ones(64, dtype=W.dtype)))})
    # 2. on the trained CartesianMoE models: exactly k distinct experts per token in each sub-layer, with and without
    #    the top-1 disabled; and disabling changes no weight
    ids = data.windows[: min(8, len(data.windows)), :-1]
    for r in runs.records:
        if not r["variant"].startswith("cartesian"):
            continue
        model = trained_model(cfg, data, r["variant"], r["seed"], r["result"])
        before = {k: v.clone() for k, v in model.state_dict().items()}
        worst, k_want = True, None
        for where in (None, "both"):
            with capture(model, ["router"]) as rec, (disable_top1(model, where) if where else _nothing()):
                model(ids)
            for key, ts in rec.data.items():
                idx = ts[0]
                k_want = idx.shape[1]
                distinct = torch.tensor([len(set(row.tolist())) for row in idx])
                worst &= bool((distinct == k_want).all() and (idx >= 0).all())
        same = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        rows.append({"check": f"{r['variant']} seed {r['seed']}: every token picks exactly k = {k_want} distinct "
                              "experts in each sub-layer (normal and top-1 disabled)", "value": worst,
                     "expected": True, "ok": worst})
        rows.append({"check": f"{r['variant']} seed {r['seed']}: disabling top-1 leaves every weight unchanged",
                     "value": same, "expected": True, "ok": same})
    # 3. the re-evaluation reproduces the trainer's own final held-out loss (the same weights were loaded)
    f = robustness.frame
    for r in runs.records:
        mine = float(f[(f["variant"] == r["variant"]) & (f["seed"] == r["seed"]) & (f["setting"] == "normal")]["loss"].iloc[0])
        theirs = float(r["result"]["final"]["heldout"]["loss"].double().mean())
        rows.append({"check": f"{r['variant']} seed {r['seed']}: re-evaluated loss == the trainer's final loss",
                     "value": abs(mine - theirs), "expected": "<= 1e-5", "ok": abs(mine - theirs) <= 1e-5})
    return pd.DataFrame(rows)


# ============================================================================================ comparisons


@dataclass(frozen=True)
class Comparisons:
    frame: pd.DataFrame  # one row per (metric, a - b): gap, bootstrap interval, per-seed gaps
    boot: dict  # (metric, "a - b") -> bootstrap replicates of the gap (paired windows, common seeds)
    per_seed: dict  # (metric, "a - b") -> gap per common seed
    drift: dict  # "a - b" (loss pairs) -> per common seed, the per-window drift of the held-out loss gap over the
    # last drift_frac of the steps (``trainer.heldout_drift``; None where a run was not scored there)


def _per_position(cfg, runs: Runs, rob: Robustness, variant: str, metric: str) -> dict[int, torch.Tensor]:
    """seed -> (W, T) of ``metric``: loss (positive gap = b better), error (1 - correct), or degradation (loss with
    top-1 disabled minus normal loss; CartesianMoE at ``disable_top1_in``)."""
    out = {}
    for r in runs.records:
        if r["variant"] != variant:
            continue
        ev = r["result"]["final"]["heldout"]
        if metric == "loss":
            out[r["seed"]] = ev["loss"].double()
        elif metric == "error":
            out[r["seed"]] = 1.0 - ev["correct"].double()
        else:  # "degradation" (CartesianMoE at disable_top1_in) or "degradation@A|B|both" (a protocol named)
            where = metric.partition("@")[2] or cfg.disable_top1_in
            st = where if variant.startswith("cartesian") else "all"
            key = (variant, r["seed"], st)
            if key in rob.loss:
                out[r["seed"]] = rob.loss[key] - rob.loss[(variant, r["seed"], "normal")]
    return out


def pairs(cfg: CartesianMoEConfig) -> list[tuple[str, str, str]]:
    """(metric, a, b) of every comparison: the gap is a − b (positive: b lower, i.e. better / more robust)."""
    vs = [v for v, _ in arms(cfg)]
    out = [("loss", a, "cartesian") for a in vs if a != "cartesian"]
    out += [("error", a, "cartesian") for a in vs if a != "cartesian"]
    out += [("loss", "dense", b) for b in vs if b not in ("dense", "cartesian")]
    out += [(f"degradation{w}", a, "cartesian") for w in ("", "@A", "@B", "@both") for a in vs
            if a in ROUTED and a != "cartesian"]  # "": at disable_top1_in (judged); @...: every protocol (shown)
    if "cartesian_noshared" in vs:
        out += [("loss", "fine_grained", "cartesian_noshared")]
    return out


@plan.step
def comparisons(cfg: CartesianMoEConfig, data: Data, runs: Runs, robustness: Robustness) -> Comparisons:
    """Paired gaps a − b per common seed (same batches) and by a bootstrap over held-out windows (seed-mean
    per-position values; one draw of windows shared by every comparison)."""
    W = len(data.windows)
    rng = np.random.default_rng(cfg.seed)
    boot_w = np.stack([np.bincount(rng.integers(0, W, W), minlength=W) for _ in range(cfg.n_boot)])  # (n_boot, W)
    rows, boot, per_seed = [], {}, {}
    for metric, a, b in pairs(cfg):
        pa, pb = _per_position(cfg, runs, robustness, a, metric), _per_position(cfg, runs, robustness, b, metric)
        common = sorted(set(pa) & set(pb))
        if not common:
            continue
        diff = torch.stack([pa[s] - pb[s] for s in common]).mean(0)  # (W, T)
        d_w = diff.sum(1).numpy()
        reps = (boot_w @ d_w) / (boot_w.sum(1) * diff.shape[1])
        name = f"{a} - {b}"
        boot[(metric, name)] = reps
        per_seed[(metric, name)] = [float((pa[s] - pb[s]).mean()) for s in common]
        rows.append({"metric": metric, "comparison": name, "gap": float(diff.mean()),
                     "ci_lo": float(np.quantile(reps, 0.025)), "ci_hi": float(np.quantile(reps, 0.975)),
                     "paired_seeds": len(common),
                     "gap_per_seed": " / ".join(f"{x:+.4f}" for x in per_seed[(metric, name)])})
    late = late_step(cfg.steps, cfg.drift_frac)
    drift = {f"{a} - {b}": heldout_drift_rows(runs.records, a, b, late) for metric, a, b in pairs(cfg)
             if metric == "loss"}
    frame = pd.DataFrame(rows)
    frame["heldout_gap_drift"] = [
        float(np.mean([d.mean() for d in drift[n]])) if m == "loss" and drift.get(n) is not None else None
        for m, n in zip(frame["metric"], frame["comparison"])]
    return Comparisons(frame, boot, per_seed, drift)


run_experiments = plan.run_all
