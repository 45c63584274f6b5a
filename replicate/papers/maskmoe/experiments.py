"""MaskMoE's experiments, as one plan (``run_experiments(cfg)`` -> the bundle ``report.py`` reads).

Steps, in order (the notebook runs one per cell):

- ``data``: a byte-level BPE trained on the training documents; the training stream, its token counts c(t) (the
  only input of the mask), the frequent set F, fixed held-out windows, and the held-out losses of count models:
  the add-one unigram of the training split, and interpolated Kneser-Ney bigrams of the whole split and of exactly
  the windows each seed's runs train on (the validity bar: every network must beat the bigram of its own data).
- ``runs``: Dense, SMoE (learned top-1), Hash Layer (random), the StableMoE proxy and MaskMoE, on the same batches
  (a pure function of (seed, step)) at equal active parameters; SMoE and MaskMoE with ``n_seeds`` seeds (same
  seed: same initial weights and data), the others with ``n_seeds_baselines``. Every run records, at each
  checkpoint, the per-position loss and each MoE layer's top-1 expert and gate on the held-out windows. With
  ``workers`` > 1 the runs train side by side in worker processes first (``prefetch``), then are read in order.
- ``budgets``: total / active parameters of every variant from ``replicate.moe.param_counts`` (asserted equal).
- ``mechanism``: the mask's invariants on the trained models and its two limits (all visible = SMoE bit for bit,
  all rare = Hash on the LM loss) on short training runs.
- ``buckets``, ``fluctuation``, ``diversity``, ``load``: loss by input-token frequency (bootstrap over windows),
  routing changes between checkpoints, distinct experts per frequent type, per-expert load.
- ``sweeps``: V_f, frequent fraction and per-layer masks (``run_sweeps``: paper scale, on at smoke).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from replicate.data import lm
from replicate.data.ngram import count_bars
from replicate.data.text import lm_text
from replicate.experiments import Plan
from replicate.models.decoder import Decoder, LayerSpec
from replicate.models.lm import LRMap
from replicate.models.probes import capture
from replicate.models.trainer import (CONVERSIONS, TrainSpec, continued, heldout_drift_rows, late_step, prefetch,
                                      register_conversion, train)
from replicate.moe import check_budgets, hash_table, param_counts
from replicate.moe.losses import load_balancing_loss
from replicate.kernels import route
from replicate.papers.maskmoe import DECIDING, DRIFT_FRAC, PAPER_ID, VARIANTS, MaskMoEConfig
from replicate.papers.maskmoe.method import (
    RoutedLM,
    fluctuation as fluct,
    frequent_types,
    layer_masks,
    masked_moe_spec,
    one_hot_mask,
    routing_mask,
    token_counts,
    visible_fraction,
    balanced_vote_table,
    moved_share,
    vote_table,
)
from replicate.models.context import tensor_ref

plan = Plan(PAPER_ID)


def _freeze_conversion(sd: dict, module) -> dict:
    """StableMoE proxy, stage 1 -> stage 2: every parameter of the SMoE run kept; the stage-2 module's own routing
    masks (the frozen per-token assignment, buffers) kept from the new module."""
    own = module.state_dict()
    return {k: (sd[k] if k in sd and not k.endswith("mask_VE") else v) for k, v in own.items()}


if "maskmoe_freeze" not in CONVERSIONS:
    register_conversion("maskmoe_freeze")(_freeze_conversion)


# ==================================================================================================== data


@dataclass(frozen=True)
class Data:
    tok: object
    n_ids: int  # the model's vocabulary (embedding rows)
    eos_id: int
    stream: np.ndarray  # the training documents joined by EOS
    counts_V: torch.Tensor  # c(t) over the training stream: the only input of the mask
    frequent_V: torch.Tensor  # bool [V]: the frequent set F under cfg's rule
    windows: torch.Tensor  # (W, T+1) fixed held-out windows
    unigram_nats: float  # held-out cross-entropy of the add-one training unigram
    bigram_nats: float  # ... of the interpolated Kneser-Ney bigram of the whole training split
    seen_bigram_nats: dict  # seed -> ... of the Kneser-Ney bigram of exactly the windows a run of that seed trains on
    n_train_docs: int
    n_heldout_docs: int
    n_heldout_tokens: int
    description: str


def _frequent(cfg: MaskMoEConfig, counts_V: torch.Tensor, **over) -> torch.Tensor:
    o = dict(rule=cfg.frequent_rule, fraction=cfg.frequent_fraction, coverage=cfg.frequent_coverage,
             min_count=cfg.frequent_min_count) | over
    return frequent_types(counts_V, o.pop("rule"), **o)


@plan.step
def data(cfg: MaskMoEConfig) -> Data:
    t = lm_text(cfg.corpus, cfg.vocab_size, cfg.heldout_fraction, cfg.doc_max_bytes, name=f"maskmoe-{cfg.corpus}")
    stream, n_ids = t.stream, t.n_ids
    counts = token_counts(torch.from_numpy(stream.astype(np.int64)), n_ids)  # training split only (spec §3.3)
    windows = lm.eval_windows(t.held_ids, cfg.eval_windows, cfg.seq_len)
    n_seeds = max(cfg.n_seeds, cfg.n_seeds_baselines, cfg.sweep_seeds if cfg.run_sweeps else 1)
    unigram, bigram, seen = count_bars(stream, n_ids, windows, lambda s: batches(cfg, stream, s), cfg.steps,
                                       range(cfg.seed, cfg.seed + n_seeds))
    return Data(t.tok, n_ids, t.eos_id, stream, counts, _frequent(cfg, counts), windows, unigram, bigram, seen,
                len(t.train_docs), len(t.held_docs), int(sum(len(x) for x in t.held_ids)), t.description)


# ============================================================================================ the variants


def masks_for(cfg: MaskMoEConfig, data: Data, seed: int, *, n_visible: int | None = None,
              frequent_V: torch.Tensor | None = None, per_layer: bool | None = None) -> list[torch.Tensor]:
    """The MaskMoE masks of one seed (drawn from their own generator seeded ``seed``: the model's init stream is not
    touched), one per MoE layer (the same tensor for all unless per-layer)."""
    return layer_masks(data.frequent_V if frequent_V is None else frequent_V, cfg.n_experts,
                       cfg.n_visible_frequent if n_visible is None else n_visible, seed, len(cfg.moe_layers),
                       cfg.mask_per_layer if per_layer is None else per_layer)


def _moe(cfg: MaskMoEConfig, **kw) -> LayerSpec:
    base = {"n_experts": cfg.n_experts, "k": cfg.top_k, "balance_coef": cfg.balance_coef} | kw
    return LayerSpec(ffn="moe", d_ff=cfg.d_ff, ffn_kwargs=tuple(base.items()))


def variant_model(cfg: MaskMoEConfig, data: Data, variant: str, seed: int, masks: list | None = None):
    """The decoder of one variant: MoE FFNs in ``moe_layers`` (each expert of width ``d_ff``), SwiGLU of width
    ``d_ff`` elsewhere; Dense has a SwiGLU of width ``top_k * d_ff`` in every layer (equal active parameters).
    ``masks``: one bool [V, E] per MoE layer for the masked variants (MaskMoE, the StableMoE proxy's stage 2)."""
    base = cfg.decoder(data.n_ids)
    if variant == "dense":
        return dataclasses.replace(base, d_ff=cfg.top_k * cfg.d_ff)
    if variant == "smoe":
        spec = [_moe(cfg, router="topk")] * len(cfg.moe_layers)
    elif variant == "hash":
        extra = {"hash_counts": tensor_ref(data.counts_V)} if cfg.hash_kind == "balanced" else {}
        spec = [_moe(cfg, router="hash", vocab_size=data.n_ids, hash_seed=seed, **extra)] * len(cfg.moe_layers)
    elif variant == "masked":
        spec = [masked_moe_spec(m, cfg.d_ff, cfg.top_k, cfg.balance_coef) for m in masks]
    else:
        raise ValueError(f"variant: unknown {variant!r}")
    return dataclasses.replace(base, layers=dict(zip(cfg.moe_layers, spec)))


def batches(cfg: MaskMoEConfig, stream: np.ndarray, seed: int) -> lm.Batches:
    """The training batches of every run of ``seed`` (a pure function of (seed, step): all variants see them)."""
    return lm.Batches((lm.Stream(stream),), (1.0,), cfg.batch_size, cfg.seq_len, seed)


def checkpoints(cfg: MaskMoEConfig) -> tuple[int, ...]:
    """Intermediate evaluation steps (the final evaluation is separate): n_checkpoints - 1 evenly spaced."""
    n = cfg.n_checkpoints
    return tuple(sorted({max(1, round(cfg.steps * j / n)) for j in range(1, n)} - {cfg.steps}))


def _train(cfg, data, model, seed, tag, eval_steps=(), **kw) -> dict:
    """One run; every run is also scored after ``late_step`` (the held-out drift of its comparisons)."""
    eval_steps = tuple(sorted({*eval_steps, late_step(cfg.steps, DRIFT_FRAC)}))
    spec = TrainSpec(model, cfg.optim(cfg.steps), data.description + f";variant={tag};eval=routing", cfg.batch_size,
                     cfg.seq_len, seed, eval_steps=eval_steps, ckpt_every=max(10, cfg.steps // 4))
    return train(PAPER_ID, spec, batches(cfg, data.stream, seed), {"heldout": data.windows},
                 module=lambda: RoutedLM(spec.model, spec.optim), **cfg.trainer_kwargs(), **kw)


def all_frequent(data: Data) -> torch.Tensor:
    """The frequent set of the ρ = 1 control: every token type (rule 'types' at fraction 1.0)."""
    return torch.ones_like(data.frequent_V)


def maskmoe_tag(cfg, n_visible, frac_tag, per_layer) -> str:
    return f"maskmoe:Vf={n_visible}:{frac_tag}:per_layer={per_layer}"


def _frac_tag(cfg) -> str:
    return {"types": f"types={cfg.frequent_fraction}", "coverage": f"coverage={cfg.frequent_coverage}",
            "count": f"count={cfg.frequent_min_count}"}[cfg.frequent_rule]


def stablemoe_proxy(cfg: MaskMoEConfig, data: Data, seed: int) -> tuple[dict, torch.Tensor]:
    """StableMoE *proxy* (not StableMoE: spec §4.4's honest stand-in). Stage 1: SMoE for ``stable_freeze_frac`` of
    the steps (the schedule of a whole run). The top-1 choices of the last ``stable_vote_batches`` stage-1
    training batches vote each token id's expert per layer (``stable_assign``: under a load capacity by default,
    ``balanced_vote_table``; the plain majority, ``vote_table``, as the option; ids without a vote: the seed's
    random hash). Stage 2:
    routing frozen to that table (a one-expert mask: gate 1, no router gradient), training continues with the
    same data order and schedule. Returns (stage-2 result, the tables [L, V])."""
    schedule = cfg.optim(cfg.steps)
    s1 = max(1, min(cfg.steps - 1, round(cfg.stable_freeze_frac * cfg.steps)))
    smoe = variant_model(cfg, data, "smoe", seed)
    b = batches(cfg, data.stream, seed)
    spec1 = TrainSpec(smoe, dataclasses.replace(schedule, max_steps=s1), data.description + ";variant=stable_stage1",
                      cfg.batch_size, cfg.seq_len, seed, ckpt_every=max(10, s1 // 4), lr_map=LRMap(schedule))
    p1 = train(PAPER_ID, spec1, b, {"heldout": data.windows}, keep_weights=True,
               module=lambda: RoutedLM(spec1.model, spec1.optim, spec1.lr_map), **cfg.trainer_kwargs())
    model = Decoder(smoe)
    model.load_state_dict({k.removeprefix("model."): v for k, v in p1["state_dict"].items()})
    model.eval()
    L = len(cfg.moe_layers)
    votes = torch.zeros(L, data.n_ids, cfg.n_experts, dtype=torch.int64)
    with torch.no_grad():
        for step in range(max(0, s1 - cfg.stable_vote_batches), s1):
            ids = b.batch(step)[:, :-1]
            with capture(model, ["router"]) as rec:
                model(ids)
            for j, (layer, t) in enumerate(sorted(rec.by_layer("router").items())):
                votes[j].index_put_((ids.reshape(-1), t[0][:, 0]), torch.ones(ids.numel(), dtype=torch.int64),
                                    accumulate=True)
    fallback = hash_table(data.n_ids, cfg.n_experts, 1, seed)[:, 0]
    if cfg.stable_assign == "balanced":
        tables = torch.stack([balanced_vote_table(votes[j], fallback, cfg.stable_slack) for j in range(L)])
    else:
        tables = torch.stack([vote_table(votes[j], fallback) for j in range(L)])
    moved = [moved_share(votes[j], tables[j]) for j in range(L)]
    frozen = proxy_stage2_model(cfg, data, seed, tables)
    assign = "" if cfg.stable_assign == "vote" else f"assign=balanced;slack={cfg.stable_slack:g};"
    lr2 = LRMap(schedule, offset=s1)
    spec2 = continued(TrainSpec(frozen, dataclasses.replace(schedule, max_steps=cfg.steps - s1),
                                data.description + f";variant=stable_stage2;votes={cfg.stable_vote_batches};{assign}"
                                f"gate={cfg.stable_gate};data_offset={s1}", cfg.batch_size, cfg.seq_len, seed,
                                ckpt_every=max(10, (cfg.steps - s1) // 4)), p1, "maskmoe_freeze", lr_map=lr2)
    res = train(PAPER_ID, spec2, dataclasses.replace(b, offset=s1), {"heldout": data.windows}, parent=p1,
                module=lambda: RoutedLM(spec2.model, spec2.optim, spec2.lr_map), **cfg.trainer_kwargs())
    return {**res, "proxy_moved": moved}, tables  # a new dict: the cached result stays as it is


def proxy_stage2_model(cfg: MaskMoEConfig, data: Data, seed: int, tables: torch.Tensor):
    """The proxy's stage 2: routing frozen to the voted table (a one-expert mask per token id); the gate is the
    sigmoid of its router logit (``stable_gate="sigmoid"``, still learned), its probability under the full softmax
    (``"full"``) or exactly 1
    (``"masked"``); no load balancing (the routing can no longer move)."""
    spec = [_moe(cfg, router="masked", routing_mask=tensor_ref(one_hot_mask(t, cfg.n_experts)),
                 mask_gate=cfg.stable_gate, balance_coef=0.0) for t in tables]
    return dataclasses.replace(cfg.decoder(data.n_ids), layers=dict(zip(cfg.moe_layers, spec)))


@dataclass(frozen=True)
class Runs:
    records: list  # {"variant", "seed", "result", "masks" (masked variants)}
    frame: pd.DataFrame  # one row per (variant, seed, evaluated step)
    stable_tables: dict  # seed -> [L, V] frozen assignment of the StableMoE proxy


def seeds_of(cfg: MaskMoEConfig, variant: str) -> range:
    n = cfg.n_seeds if variant in DECIDING else cfg.n_seeds_baselines
    return range(cfg.seed, cfg.seed + n)


def frame_of(records: list, steps: int) -> pd.DataFrame:
    rows = []
    for r in records:
        res = r["result"]
        points = sorted(res["evals"].get("heldout", {}).items()) + [(steps, res["final"]["heldout"])]
        for step, ev in points:
            loss = float(ev["loss"].double().mean())
            rows.append({"variant": r["variant"], "seed": r["seed"], "step": step, "final": step == steps,
                         "loss": loss, "ppl": float(np.exp(loss)), "accuracy": float(ev["correct"].float().mean()),
                         "n_params": res["n_params"], "wall_s": res["wall_s"], **r.get("extra", {})})
    return pd.DataFrame(rows)


def run_variant(cfg: MaskMoEConfig, data: Data, variant: str, seed: int) -> dict:
    """Train (or read from the run cache) one variant at one seed: ``{"result", "masks", "table"}``."""
    ck = checkpoints(cfg)
    masks = table = None
    if variant == "dense":
        res = _train(cfg, data, variant_model(cfg, data, "dense", seed), seed, "dense")
    elif variant == "smoe":
        res = _train(cfg, data, variant_model(cfg, data, "smoe", seed), seed, "smoe", ck)
    elif variant == "hash":
        res = _train(cfg, data, variant_model(cfg, data, "hash", seed), seed, f"hash:{cfg.hash_kind}")
    elif variant == "stablemoe_proxy":
        res, table = stablemoe_proxy(cfg, data, seed)
    elif variant == "maskmoe":
        masks = masks_for(cfg, data, seed)
        res = _train(cfg, data, variant_model(cfg, data, "masked", seed, masks), seed,
                     maskmoe_tag(cfg, cfg.n_visible_frequent, _frac_tag(cfg), cfg.mask_per_layer), ck)
    elif variant == "maskmoe_rho1":  # the control: every type frequent (the frequent-fraction sweep's point 1.0)
        masks = masks_for(cfg, data, seed, frequent_V=all_frequent(data))
        res = _train(cfg, data, variant_model(cfg, data, "masked", seed, masks), seed,
                     maskmoe_tag(cfg, cfg.n_visible_frequent, "types=1.0", cfg.mask_per_layer))
    else:
        raise ValueError(f"variant: unknown {variant!r}; allowed: {', '.join(VARIANTS)}")
    return {"result": res, "masks": masks, "table": table}


@plan.step
def runs(cfg: MaskMoEConfig, data: Data) -> Runs:
    order = [(v, s) for v in VARIANTS for s in seeds_of(cfg, v)]
    # the longest first (the proxy's two stages, then the MoEs), so two workers finish together
    slow_first = sorted(order, key=lambda vs: (vs[0] != "stablemoe_proxy", vs[0] == "dense"))
    prefetch([functools.partial(run_variant, cfg, data, v, s) for v, s in slow_first], cfg.workers, cfg.threads)
    recs, tables = [], {}
    for variant, seed in order:
        out = run_variant(cfg, data, variant, seed)
        if out["table"] is not None:
            tables[seed] = out["table"]
        recs.append({"variant": variant, "seed": seed, "result": out["result"], "masks": out["masks"]})
    return Runs(recs, frame_of(recs, cfg.steps), tables)


@plan.step
def budgets(cfg: MaskMoEConfig, data: Data) -> pd.DataFrame:
    """Total and active parameters of every variant (``replicate.moe.param_counts``; embeddings included), and
    the check that every variant has the active budget of the first (Dense) within 0.5%."""
    masks = masks_for(cfg, data, cfg.seed)
    models = {"dense": variant_model(cfg, data, "dense", cfg.seed), "smoe": variant_model(cfg, data, "smoe", cfg.seed),
              "hash": variant_model(cfg, data, "hash", cfg.seed),
              "stablemoe_proxy": proxy_stage2_model(cfg, data, cfg.seed, [hash_table(data.n_ids, cfg.n_experts, 1,
                                                                                  cfg.seed)[:, 0]] * len(masks)),
              "maskmoe": variant_model(cfg, data, "masked", cfg.seed, masks),
              "maskmoe_rho1": variant_model(cfg, data, "masked", cfg.seed,
                                            masks_for(cfg, data, cfg.seed, frequent_V=all_frequent(data)))}
    counts = {v: param_counts(Decoder(m)) for v, m in models.items()}
    check_budgets(counts, field="active", rtol=0.005)  # raises naming the variant that breaks the budget
    ref = counts["dense"].active
    return pd.DataFrame([{"variant": v, "total_params": c.total, "active_params": c.active,
                          "active_vs_dense": c.active / ref - 1.0} for v, c in counts.items()])


# ============================================================================================== mechanism


def _lm_steps(model: Decoder, batch_list, cfg: MaskMoEConfig) -> list[float]:
    """A few plain AdamW steps (lm + aux loss); returns the LM losses (for the bit-for-bit limits)."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay,
                            foreach=False)
    out = []
    for b in batch_list:
        lm_loss, aux = model.loss(b[:, :-1], b[:, 1:])
        (lm_loss + sum(aux.values())).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(float(lm_loss.detach()))
    return out


def masked_logit_grad(cfg: MaskMoEConfig, data: Data, seed: int, ids: torch.Tensor) -> tuple[float, float, float]:
    """(max |dL/dz| on masked logits, max |dL/dz| on visible logits, max |dL/dW_r| from rare-only tokens) for a
    fresh MaskMoE model: the masked entries must be exactly 0, and so must the router gradient of rare tokens."""
    torch.manual_seed(seed)
    masks = masks_for(cfg, data, seed)
    model = Decoder(variant_model(cfg, data, "masked", seed, masks))
    router = model.layers[cfg.moe_layers[0]].ffn.router
    store = []
    orig = router.logits

    def logits(x):
        z = orig(x)
        z.retain_grad()
        store.append(z)
        return z

    router.logits = logits
    lm_loss, aux = model.loss(ids[:, :-1], ids[:, 1:])
    (lm_loss + sum(aux.values())).backward()
    g = store[0].grad
    vis = masks[0][ids[:, :-1].reshape(-1)]
    masked_max = float(g[~vis].abs().max()) if (~vis).any() else 0.0
    visible_max = float(g[vis].abs().max())
    model.zero_grad(set_to_none=True)
    rare_ids = torch.nonzero(~data.frequent_V).flatten()
    r = rare_ids[torch.randint(len(rare_ids), ids.shape, generator=torch.Generator().manual_seed(seed))]
    lm_loss, aux = model.loss(r[:, :-1], r[:, 1:])
    (lm_loss + sum(aux.values())).backward()
    grads = [model.layers[i].ffn.router.weight.grad for i in cfg.moe_layers]
    rare_grad = max(float(g.abs().max()) if g is not None else 0.0 for g in grads)
    del router.logits
    return masked_max, visible_max, rare_grad


@plan.step
def mechanism(cfg: MaskMoEConfig, data: Data, runs: Runs) -> pd.DataFrame:
    """The mask's invariants (value and what it must be), on the trained MaskMoE models (every held-out position)
    and on short runs of fresh models for the gradient and the two limits of spec §3.6."""
    rows = []
    ids_WT = data.windows[:, :-1]
    rare_WT = ~data.frequent_V[ids_WT]
    for r in runs.records:
        if r["variant"] != "maskmoe":
            continue
        ev = r["result"]["final"]["heldout"]
        vis = min(visible_fraction(m, ids_WT, ev["expert"][j].long()[..., None]) for j, m in enumerate(r["masks"]))
        gates = ev["gate"][:, rare_WT]
        rows += [{"check": f"routed expert in the visible set (seed {r['seed']}, all positions, all layers)",
                  "value": vis, "expected": 1.0, "ok": vis == 1.0},
                 {"check": f"rare-token gates exactly 1 (seed {r['seed']}, {int(rare_WT.sum())} positions x layers)",
                  "value": float((gates == 1.0).float().mean()) if gates.numel() else 1.0, "expected": 1.0,
                  "ok": bool((gates == 1.0).all())}]
    b = batches(cfg, data.stream, cfg.seed)
    n = min(4, cfg.batch_size)
    few = [b.batch(s)[:n] for s in range(3)]
    masked_max, visible_max, rare_grad = masked_logit_grad(cfg, data, cfg.seed, few[0])
    rows += [{"check": "max |dL/dz| on masked router logits", "value": masked_max, "expected": 0.0,
              "ok": masked_max == 0.0},
             {"check": "max |dL/dz| on visible router logits (must be > 0: the router learns)", "value": visible_max,
              "expected": "> 0", "ok": visible_max > 0.0},
             {"check": "max |dL/dW_r| from a batch of rare tokens only", "value": rare_grad, "expected": 0.0,
              "ok": rare_grad == 0.0}]
    # limit 1: every expert visible == SMoE, bit for bit (same seed, same init, same batches)
    V, E, L = data.n_ids, cfg.n_experts, len(cfg.moe_layers)
    torch.manual_seed(cfg.seed)
    smoe = Decoder(variant_model(cfg, data, "smoe", cfg.seed))
    torch.manual_seed(cfg.seed)
    allvis = Decoder(variant_model(cfg, data, "masked", cfg.seed, [torch.ones(V, E, dtype=torch.bool)] * L))
    a, c = _lm_steps(smoe, few, cfg), _lm_steps(allvis, few, cfg)
    same_w = all(torch.equal(p, q) for p, q in zip(smoe.parameters(), allvis.parameters()))
    rows.append({"check": f"every expert visible == SMoE ({len(few)} training steps): LM losses and weights equal "
                          "bit for bit", "value": max(abs(x - y) for x, y in zip(a, c)), "expected": 0.0,
                 "ok": a == c and same_w})
    # limit 2: every token rare == Hash Layer of the same seed on the LM loss (shared weights copied: the masked
    # model also holds a router, which receives no gradient)
    none_frequent = torch.zeros(V, dtype=torch.bool)
    rare_masks = masks_for(cfg, data, cfg.seed, frequent_V=none_frequent, per_layer=False)
    same_table = torch.equal(rare_masks[0], one_hot_mask(hash_table(V, E, 1, cfg.seed)[:, 0], E))
    torch.manual_seed(cfg.seed)
    hashm = Decoder(dataclasses.replace(variant_model(cfg, data, "hash", cfg.seed),
                                        layers=dict(zip(cfg.moe_layers, [_moe(cfg, router="hash", vocab_size=V,
                                                                              hash_seed=cfg.seed)] * L))))
    rarem = Decoder(variant_model(cfg, data, "masked", cfg.seed, rare_masks))
    missing = rarem.load_state_dict(hashm.state_dict(), strict=False).missing_keys
    assert all(k.endswith(("router.weight", "router.mask_VE")) for k in missing), missing
    a, c = _lm_steps(hashm, few, cfg), _lm_steps(rarem, few, cfg)
    rows.append({"check": f"every token rare == Hash Layer ({len(few)} training steps): LM losses equal bit for bit; "
                          "mask == hash table", "value": max(abs(x - y) for x, y in zip(a, c)), "expected": 0.0,
                 "ok": a == c and same_table})
    return pd.DataFrame(rows)


# ============================================================================================== analyses


def _final(runs: Runs, variant: str) -> list[dict]:
    return [r["result"]["final"]["heldout"] for r in runs.records if r["variant"] == variant]


def bucket_of(cfg: MaskMoEConfig, counts: torch.Tensor) -> np.ndarray:
    """Index of each count's bucket: lower edges ``bucket_edges`` (the last bucket is open)."""
    return np.searchsorted(np.asarray(cfg.bucket_edges), counts.numpy(), side="right") - 1


def bucket_labels(cfg: MaskMoEConfig) -> list[str]:
    e = list(cfg.bucket_edges)
    return [f"[{a}, {b})" for a, b in zip(e[:-1], e[1:])] + [f">= {e[-1]}"]


@dataclass(frozen=True)
class Buckets:
    frame: pd.DataFrame  # one row per (variant, group): mean loss (seed mean), 95% bootstrap, positions, types
    gaps: pd.DataFrame  # one row per (comparison, group): paired gap, its bootstrap interval, per-seed gaps
    boot: dict  # (comparison, group) -> bootstrap replicates of the gap
    per_seed: dict  # (comparison, group) -> the gap of each common seed
    drift: dict  # comparison -> per common seed, the per-window drift of its held-out gap (all positions) over the
    # last DRIFT_FRAC of the steps (``trainer.heldout_drift``; None where a run was not scored there)


@plan.step
def buckets(cfg: MaskMoEConfig, data: Data, runs: Runs) -> Buckets:
    """Held-out loss by the training count of the *input* token (the routed one): count buckets, and the mask's
    own split rare / frequent. Per variant, the per-position loss is averaged over its seeds; intervals come from
    one bootstrap over held-out windows shared by every variant (so gaps are paired)."""
    ids = data.windows[:, :-1]
    cnt = data.counts_V[ids]
    groups = {lab: torch.from_numpy(bucket_of(cfg, cnt) == k) for k, lab in enumerate(bucket_labels(cfg))}
    groups["rare (mask: 1 expert)"] = ~data.frequent_V[ids]
    groups["frequent (mask: V_f experts)"] = data.frequent_V[ids]
    groups["all"] = torch.ones_like(ids, dtype=torch.bool)
    W = len(ids)
    rng = np.random.default_rng(cfg.seed)
    boot_w = np.stack([np.bincount(rng.integers(0, W, W), minlength=W) for _ in range(cfg.n_boot)])  # (n_boot, W)
    seed_loss = {v: [ev["loss"].double() for ev in _final(runs, v)] for v in VARIANTS}
    mean_loss = {v: torch.stack(x).mean(0) for v, x in seed_loss.items() if x}
    rows, gaps, boot, seed_gaps = [], [], {}, {}
    for g, sel in groups.items():
        n_w = sel.sum(1).numpy().astype(float)  # selected positions per window
        n_types = int(torch.unique(ids[sel]).numel())
        if n_w.sum() == 0:
            continue
        for v, m in mean_loss.items():
            s_w = (m * sel).sum(1).numpy()
            reps = (boot_w @ s_w) / np.maximum(boot_w @ n_w, 1)
            per_seed = [float((x * sel).sum() / sel.sum()) for x in seed_loss[v]]
            rows.append({"variant": v, "group": g, "loss": s_w.sum() / n_w.sum(), "ci_lo": np.quantile(reps, 0.025),
                         "ci_hi": np.quantile(reps, 0.975), "seeds": len(per_seed),
                         "loss_per_seed": " / ".join(f"{x:.4f}" for x in per_seed),
                         "seed_std": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else float("nan"),
                         "positions": int(n_w.sum()), "types": n_types})
        for a, b in (("smoe", "maskmoe"), ("hash", "maskmoe"), ("stablemoe_proxy", "maskmoe"), ("dense", "maskmoe"),
                     ("maskmoe_rho1", "maskmoe"), ("smoe", "maskmoe_rho1"), ("dense", "smoe"), ("smoe", "hash")):
            if a not in mean_loss or b not in mean_loss:
                continue
            pa = {r["seed"]: r["result"]["final"]["heldout"]["loss"].double() for r in runs.records if r["variant"] == a}
            pb = {r["seed"]: r["result"]["final"]["heldout"]["loss"].double() for r in runs.records if r["variant"] == b}
            common = sorted(set(pa) & set(pb))  # paired: same seed = same batches (and mask / hash draw)
            if not common:
                continue
            diff = torch.stack([pa[s] - pb[s] for s in common]).mean(0)
            d_w = (diff * sel).sum(1).numpy()
            reps = (boot_w @ d_w) / np.maximum(boot_w @ n_w, 1)
            per_seed = [float(((pa[s] - pb[s]) * sel).sum() / sel.sum()) for s in common]
            boot[(f"{a} - {b}", g)] = reps
            seed_gaps[(f"{a} - {b}", g)] = per_seed
            gaps.append({"comparison": f"{a} - {b}", "group": g, "gap": d_w.sum() / n_w.sum(),
                         "ci_lo": np.quantile(reps, 0.025), "ci_hi": np.quantile(reps, 0.975),
                         "paired_seeds": len(per_seed), "gap_per_seed": " / ".join(f"{x:+.4f}" for x in per_seed),
                         "positions": int(n_w.sum())})
    comps = sorted({c for c, _ in seed_gaps})
    # None where a run was not scored at late_step: the proxy's stage 2 is not (a drift across its freeze would
    # measure the freeze, not a trend)
    late = late_step(cfg.steps, DRIFT_FRAC)
    drift = {c: heldout_drift_rows(runs.records, *c.split(" - "), late) for c in comps}
    return Buckets(pd.DataFrame(rows), pd.DataFrame(gaps), boot, seed_gaps, drift)


@plan.step
def fluctuation(cfg: MaskMoEConfig, data: Data, runs: Runs) -> pd.DataFrame:
    """Routing fluctuation: between consecutive checkpoints, the fraction of the fixed held-out positions whose
    top-1 expert changed (MoE layers pooled), over all positions and over frequent / rare input tokens (MaskMoE's
    rare positions cannot change: one visible expert)."""
    ids = data.windows[:, :-1]
    sel = {"all": None, "frequent": data.frequent_V[ids], "rare": ~data.frequent_V[ids]}
    rows = []
    ck = set(checkpoints(cfg))  # the fluctuation checkpoints (not the drift's extra evaluation where it differs)
    for r in runs.records:
        if r["variant"] not in DECIDING:
            continue
        res = r["result"]
        pts = sorted((k, v) for k, v in res["evals"].get("heldout", {}).items() if k in ck)
        pts += [(cfg.steps, res["final"]["heldout"])]
        for (s0, e0), (s1, e1) in zip(pts[:-1], pts[1:]):
            for g, m in sel.items():
                rows.append({"variant": r["variant"], "seed": r["seed"], "from_step": s0, "to_step": s1,
                             "positions": g, "changed": fluct(e0["expert"], e1["expert"], m)})
    return pd.DataFrame(rows)


@plan.step
def diversity(cfg: MaskMoEConfig, data: Data, runs: Runs) -> "Diversity":
    """Expert-usage diversity per frequent token type (final models): over a type's held-out occurrences, the
    number of distinct top-1 experts and the entropy of their distribution (bits), averaged over the MoE layers;
    types with at least ``diversity_min_occurrences`` occurrences. ``frame``: one row per (variant, seed, type);
    ``summary``: per variant, the mean over types (of the seed mean) with a 95% bootstrap over types."""
    ids = data.windows[:, :-1].reshape(-1)
    freq_types = [int(t) for t in torch.unique(ids[data.frequent_V[ids]])]
    occ = torch.bincount(ids, minlength=data.n_ids)
    keep = [t for t in freq_types if occ[t] >= cfg.diversity_min_occurrences]
    rows = []
    for r in runs.records:
        ev = r["result"]["final"]["heldout"]
        if ev["expert"].shape[0] == 0:
            continue
        E = cfg.n_experts
        per_layer = []
        for j in range(ev["expert"].shape[0]):
            c = torch.zeros(data.n_ids, E, dtype=torch.int64)
            c.index_put_((ids, ev["expert"][j].reshape(-1).long()), torch.ones_like(ids), accumulate=True)
            per_layer.append(c)
        for t in keep:
            d, h = [], []
            for c in per_layer:
                p = c[t].double() / c[t].sum()
                d.append(int((c[t] > 0).sum()))
                h.append(float(-(p[p > 0] * p[p > 0].log2()).sum()))
            rows.append({"variant": r["variant"], "seed": r["seed"], "token": t, "occurrences": int(occ[t]),
                         "distinct_experts": float(np.mean(d)), "entropy_bits": float(np.mean(h))})
    frame = pd.DataFrame(rows, columns=["variant", "seed", "token", "occurrences", "distinct_experts",
                                        "entropy_bits"])
    rng = np.random.default_rng(cfg.seed)
    summ = []
    for v, g in frame.groupby("variant", sort=False):
        per_type = g.groupby("token")[["distinct_experts", "entropy_bits"]].mean()
        n = len(per_type)
        idx = rng.integers(0, n, (cfg.n_boot, n))
        row = {"variant": v, "types": n, "seeds": g["seed"].nunique()}
        for col in ("distinct_experts", "entropy_bits"):
            x = per_type[col].to_numpy()
            reps = x[idx].mean(1)
            row |= {col: x.mean(), f"{col}_ci_lo": np.quantile(reps, 0.025), f"{col}_ci_hi": np.quantile(reps, 0.975)}
        summ.append(row)
    return Diversity(frame, pd.DataFrame(summ))


@dataclass(frozen=True)
class Diversity:
    frame: pd.DataFrame
    summary: pd.DataFrame


@plan.step
def load(cfg: MaskMoEConfig, runs: Runs) -> pd.DataFrame:
    """Per-expert load on the held-out windows (final models): fraction of positions per expert, per MoE layer,
    mean over seeds; its coefficient of variation is the imbalance (rare tokens' fixed experts make part of it
    irreducible under MaskMoE, spec §3.5)."""
    rows = []
    for r in runs.records:
        ev = r["result"]["final"]["heldout"]
        for j in range(ev["expert"].shape[0]):
            frac = torch.bincount(ev["expert"][j].reshape(-1).long(), minlength=cfg.n_experts).double()
            frac = frac / frac.sum()
            rows += [{"variant": r["variant"], "seed": r["seed"], "layer": cfg.moe_layers[j], "expert": e,
                      "load": float(frac[e])} for e in range(cfg.n_experts)]
    return pd.DataFrame(rows)


# ================================================================================================ sweeps


@plan.step
def sweeps(cfg: MaskMoEConfig, data: Data) -> pd.DataFrame | None:
    """V_f sweep (at the default fraction), frequent-fraction sweep (rule 'types', at the default V_f) and the
    per-layer-mask ablation; ``sweep_seeds`` seeds each (paper scale; on at smoke). A point equal to the main
    MaskMoE run is the same cached run."""
    if not cfg.run_sweeps:
        return None
    points = [("n_visible_frequent", v, dict(n_visible=v)) for v in cfg.sweep_visible]
    points += [("frequent_fraction", f, dict(fraction=f)) for f in cfg.sweep_fractions]
    points += [("mask_per_layer", pl, dict(per_layer=pl)) for pl in (False, True)]
    recs = []
    for sweep, value, kw in points:
        for seed in range(cfg.seed, cfg.seed + cfg.sweep_seeds):
            nv = kw.get("n_visible", cfg.n_visible_frequent)
            pl = kw.get("per_layer", cfg.mask_per_layer)
            if "fraction" in kw:
                fv, ftag = _frequent(cfg, data.counts_V, rule="types", fraction=kw["fraction"]), f"types={kw['fraction']}"
            else:
                fv, ftag = data.frequent_V, _frac_tag(cfg)
            masks = masks_for(cfg, data, seed, n_visible=nv, frequent_V=fv, per_layer=pl)
            res = _train(cfg, data, variant_model(cfg, data, "masked", seed, masks), seed,
                         maskmoe_tag(cfg, nv, ftag, pl), checkpoints(cfg) if (nv, ftag, pl) == (
                             cfg.n_visible_frequent, _frac_tag(cfg), cfg.mask_per_layer) else ())
            recs.append({"variant": "maskmoe", "seed": seed, "result": res,
                         "extra": {"sweep": sweep, "value": value, "frequent_types": int(fv.sum())}})
    f = frame_of(recs, cfg.steps)
    return f[f["final"]].reset_index(drop=True)


run_experiments = plan.run_all
