"""DSMoE: Matrix-Partitioned Experts with Dynamic Routing for Computation-Efficient Dense LLMs (Lv, Su et al., arXiv
2502.12455, EMNLP 2025).

Miniature replication. The paper's contribution (``method.py``): every FFN of a trained dense decoder is cut along
its intermediate axis into n experts whose outputs sum to the dense output; an independent sigmoid gate per expert
with a hard threshold τ decides which experts a token uses (k varies per token), trained with a straight-through
estimator, a dropout-style n/k rescale and an L1 sparsity loss weighted 1/(L·N) (spec §3.2-3.5).

``experiments.py`` runs the two-phase recipe: one dense decoder pre-trained from scratch on English (Shakespeare)
and code (the Python standard library) -- the stand-in for the public checkpoint, cached and shared -- then every
method continued from it on the same tokens: DSMoE (``n_seeds`` seeds), the top-k MoE built from the same partition
(LLaMA-MoE style, ``n_seeds`` seeds, k from DSMoE's measured activation), structured FFN-neuron pruning (LLM-Pruner
style, importance |activation|·‖row of V‖ on calibration windows), unstructured magnitude pruning of the FFN weights
(a stand-in for SparseGPT, named as one: no OBS update), the dense model continued, DSMoE without the STE (Table 3)
and trained without G (Figure 2's soft gates). ``report.py``: Table 1 beside the paper's numbers, the ablation, the
τ sweep (inference re-thresholding of the trained model: Table 4 analogue), PPL against activated fraction, activated
experts per layer and per domain, gate histograms, measured inference FLOPs and time per token.

Not reproduced: the paper's sizes (1B/7B), data (10B tokens), downstream benchmarks (Table 2: hub data), the
token-count sweep (Tables 5/6) and the W-shaped layer profile (needs >= 12 layers: ``paper`` scale).

UNCONFIRMED choices are options: ``gate_init_std`` (Y ~ N(0, 0.02), default), ``topk_split`` (``contiguous``
default: "similar partitioning" | ``random``: LLaMA-MoE's own neuron-independent split), ``topk_scale`` (``n_over_k``
default: LLaMA-MoE's score scale factor | ``none``), ``soft_rescale`` (Figure 2's soft model thresholded at inference
with the n/k rescale or not: default False, it was trained without it), ``lam`` (λ on the sparsity loss, paper 1;
the equilibrium sparsity depends on it), ``cont_lr`` (the paper's 2e-5 is for a converged 1B model). Fixed and stated:
the gate reads the FFN's input (the normed stream), the sparsity loss is the mean over tokens, the pruning masks stay
fixed during the continued training, the dense row is continued on the same tokens as every method.
"""

from __future__ import annotations

from dataclasses import dataclass

from replicate.config import constraint, param, register
from replicate.papers import lazy_exports
from replicate.recipe import LMConfig

PAPER_ID = "dsmoe"
TOPK_SPLITS = ("contiguous", "random")
TOPK_SCALES = ("n_over_k", "none")


@register(PAPER_ID)
@dataclass(frozen=True, kw_only=True)
class DSMoEConfig(LMConfig):
    """The shared LM fields (``replicate.recipe.LMConfig``: ``d_ff`` is the dense width D cut into ``n_experts``;
    ``steps`` / ``lr`` are the pre-training phase's)."""

    # --- data: English and code, so activation can be read per domain (spec §6) ---
    english_max_bytes: int = param(0, help="cut every play to its first N bytes (at a line end); 0 = whole",
                                   source="ours (smoke only)", min=0, max=10**12)
    code_bytes: int = param(1_000_000, help="bytes of Python standard-library source mixed into the corpus (whole "
                            "files, sorted by name)", source="ours: the paper's mixture has code (StarCoder); ~1/5 "
                            "of the text", min=1_000, max=6_000_000)
    code_doc_max_bytes: int = param(0, help="cut every code file to its first N bytes; 0 = whole",
                                    source="ours (smoke only)", min=0, max=10**12)
    heldout_fraction: float = param(0.15, help="fraction of each corpus's documents held out (whole documents)",
                                    source="ours (as Finedeep)", min=0.01, max=0.5)
    vocab_size: int = param(1024, help="byte-level BPE vocabulary (trained on both domains)",
                            source="ours: scaled down (spec §6: 4-8k)", min=300, max=262_144)
    # --- backbone (d_model ... lr: LMConfig) ---
    d_ff: int = param(512, help="dense FFN width D (n experts of width D/n)", source="ours: scaled down (spec §6: "
                      "1024 at d 256)", min=8, max=65536)
    steps: int = param(600, help="pre-training steps of the dense decoder (one run, shared by every method)",
                       source="ours: sized for the 15-minute budget (an estimate, not yet timed: ~8-11k tokens/s at "
                       "this size per process as Finedeep measured, so ~110 s); with the 300 continued steps every "
                       "model has trained 900 steps (Finedeep's dense runs beat their bigram bar by 0.47 nats at 500)",
                       min=2, max=10**8)
    lr: float = param(3e-3, help="peak learning rate of the dense pre-training", source="DESIGN §5 calibration",
                      min=1e-6, max=1.0)
    batch_size: int = param(16, help="sequences per step (both phases)", source="spec §6: 16", min=1, max=4096)
    warmup_frac: float = param(0.25, help="warm-up fraction of the pre-training steps", source="ours: Finedeep's "
                               "measured calibration at this size and lr (25% against 5% at ~500 steps: 3.758 vs "
                               "4.101 nats; MaskMoE found the same)", min=0.0, max=0.5)
    # --- continued training (spec §3.6) ---
    cont_steps: int = param(300, help="continued-training steps of every method (same batches for all)",
                            source="ours: half the pre-training (the paper continues a converged model on 10B tokens)",
                            min=2, max=10**8)
    cont_lr: float = param(1e-3, help="peak learning rate of the continued training (every method)",
                           source="ours (spec §6: 3e-4 at d 256; the paper's 2e-5 is for a converged 1B model)",
                           min=1e-7, max=1.0)
    cont_warmup_frac: float = param(0.1, help="warm-up fraction of the continued steps", source="ours", min=0.0,
                                    max=0.5)
    # --- DSMoE (spec §3.2-3.5) ---
    n_experts: int = param(8, help="n experts per FFN (contiguous blocks of width D/n)", source="spec §3.2: n = 8",
                           min=1, max=1024)
    tau: float = param(0.5, help="gate threshold τ (an expert is active when σ(ĥY) > τ)", source="spec §3.6: 0.5",
                       min=0.0, max=1.0)
    lam: float = param(1.0, help="λ on the sparsity loss (1/(L·N)) Σ G; the equilibrium sparsity depends on it",
                       source="spec §3.5: 1 (spec §6: expose it)", min=0.0, max=1000.0)
    gate_init_std: float = param(0.02, help="std of the gate weights Y at init", source="UNCONFIRMED (spec §3.3): "
                                 "N(0, 0.02)", min=0.0, max=10.0)
    soft_rescale: bool = param(False, help="thresholding the soft-trained model at inference (Figure 2) also applies "
                               "the n/k rescale", source="UNCONFIRMED (spec §5): off, it was trained without it")
    tau_sweep: tuple[float, ...] = param((0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8), help="τ at which the trained DSMoE "
                                         "model is re-thresholded at inference (Table 4 analogue)",
                                         source="spec §5 Table 4", min=0.0, max=1.0, min_len=2, increasing=True)
    soft_taus: tuple[float, ...] = param((0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65,
                                          0.7, 0.75, 0.8, 0.85, 0.9, 0.95),
                                         help="τ at which the soft-trained model is thresholded (Figure 2)",
                                         source="spec §5 Figure 2: steps of 0.05", min=0.0, max=1.0, min_len=2,
                                         increasing=True)
    lam_sweep: tuple[float, ...] = param((0.25,), help="further λ at which DSMoE is continued (seed `seed`): more "
                                         "points of PPL against activation (Figure 2); () = none",
                                         source="ours (spec §6: the 1/(L·N) weighting is 4× the paper's 1B per gate "
                                         "at L = 4; λ = 0.25 matches it)", min=0.0, max=1000.0, distinct=True)
    sweep_fracs: tuple[float, ...] = param((0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05),
                                           help="active fractions at which each swept model is also thresholded: τ is "
                                           "the gate-value quantile on the calibration windows giving that fraction "
                                           "(the grid follows the gates wherever they sit)", source="ours (audit: "
                                           "the learned gates sit within ±0.03 of τ)", min=0.0, max=1.0, distinct=True)
    sweep_min_frac: float = param(0.05, help="C6 judges sweep points whose active fraction lies in [x, 1 − x] and "
                                  "whose loss lies in (0, ln V]", source="ours, pre-registered at the audit",
                                  min=0.0, max=0.5)
    null_gates: int = param(40, help="fresh-gate conversions of the pre-trained model (no training): the null of "
                            "C8's per-domain activation gap", source="ours (audit: untrained gates also differ by "
                            "domain)", min=0, max=1000)
    dead_share: float = param(0.01, help="an expert is dead when it is active on fewer than this share of the "
                              "held-out tokens (C4's second metric)", source="ours", min=0.0, max=1.0)
    # --- baselines (spec §4) ---
    topk_k: int = param(0, help="k of the top-k MoE; 0 = DSMoE's measured mean active experts (seed `seed`), rounded",
                        source="spec §3.7: matched activated parameters (the paper's top-3 of 8)", min=0, max=1024)
    topk_split: str = param("contiguous", help="neuron split of the top-k MoE's experts: contiguous (DSMoE's) | "
                            "random (LLaMA-MoE's default)", source="UNCONFIRMED (spec §4): contiguous",
                            choices=TOPK_SPLITS)
    topk_scale: str = param("n_over_k", help="constant on the top-k MoE's renormalized weights: n_over_k | none",
                            source="UNCONFIRMED (spec §4: LLaMA-MoE's score_scale_factor)", choices=TOPK_SCALES)
    balance_coef: float = param(0.01, help="load-balancing loss weight of the top-k MoE", source="spec §4: 1e-2 "
                                "(LLaMA-MoE; ours the Switch form, not CV²)", min=0.0, max=10.0)
    calib_windows: int = param(32, help="training windows the structured pruning's neuron importance is measured on",
                               source="ours", min=1, max=100_000)
    # --- seeds, evaluation, rules ---
    n_seeds: int = param(3, help="seeds of DSMoE and the top-k MoE (the deciding pair): continued-phase batches and "
                         "new parameters; the other arms: seed `seed` only", source="issue 17: 3", min=1, max=100)
    run_ablations: bool = param(True, help="also continue DSMoE without the STE (Table 3) and with soft gates "
                                "(Figure 2)", source="spec §5")
    eval_windows: int = param(192, help="fixed held-out windows scored at the end: half English, half code (the "
                              "halves are the per-domain sets)", source="ours", min=2, max=1_000_000)
    gate_bins: int = param(40, help="bins of the gate-value histograms on [0, 1]", source="ours", min=2, max=1000)
    timing_repeats: int = param(3, help="repeats of each timed inference pass (the median is reported)",
                                source="ours", min=1, max=100)
    match_rtol: float = param(0.05, help="activated parameters of every baseline within this fraction of DSMoE's "
                              "(else the comparison is invalid)", source="ours, pre-registered (the paper: 735M vs "
                              "736M; an integer k cannot match a fractional mean exactly)", min=0.0, max=1.0)
    drift_frac: float = param(0.2, help="'still converging' window (claims.converging_paired)", source="ours (as "
                              "Finedeep)", min=0.05, max=0.5)
    learn_margin: float = param(0.05, help="'clearly below the unigram' by this many nats", source="ours", min=0.0,
                                max=10.0)
    n_boot: int = param(1000, help="bootstrap resamples over held-out windows", source="ours", min=10, max=100_000)

    CONSTRAINTS = LMConfig.CONSTRAINTS + (
        constraint("d_ff", lambda c: c.d_ff % c.n_experts == 0, "must be divisible by n_experts ({n_experts})",
                   d_ff=250),
        constraint("topk_k", lambda c: c.topk_k <= c.n_experts, "must be at most n_experts ({n_experts})",
                   topk_k=2000),
        constraint("lam_sweep", lambda c: c.lam not in c.lam_sweep, "must not repeat lam ({lam}): that run is DSMoE",
                   lam_sweep=(1.0,)),
    )

    def workload(self) -> list:
        from replicate.budget import Run

        cont = 2 * self.n_seeds + 3 + len(self.lam_sweep) + (2 if self.run_ablations else 0)
        return [Run("dense pre-training", self.d_model, self.n_layers, self.d_ff, self.vocab_size, self.seq_len,
                    self.batch_size, self.steps, count=1),
                Run("continued runs", self.d_model, self.n_layers, self.d_ff, self.vocab_size, self.seq_len,
                    self.batch_size, self.cont_steps, count=cont)]

    @classmethod
    def smoke(cls):  # spec §6 smoke: every code path (ablations, baselines, sweeps), no evidence
        return cls(scale="smoke", english_max_bytes=5_000, code_bytes=60_000, code_doc_max_bytes=3_000,
                   vocab_size=400, d_model=32, n_layers=2, n_heads=2, d_ff=64, n_experts=4, seq_len=32,
                   batch_size=4, steps=8, cont_steps=6, threads=1, n_seeds=2, eval_windows=16,
                   calib_windows=4, n_boot=50, gate_bins=10, timing_repeats=1, tau_sweep=(0.3, 0.5, 0.7),
                   soft_taus=(0.2, 0.4, 0.5, 0.6, 0.8), match_rtol=0.5, lam_sweep=(0.25,),
                   sweep_fracs=(0.9, 0.5, 0.1), null_gates=3)

    @classmethod
    def small(cls):
        # the defaults above; the continued runs train two at a time in one-thread worker processes
        return cls(scale="small", workers=2, threads=1)

    @classmethod
    def paper(cls):  # spec §6 paper: one GPU; 12 layers for the W-shape question; 3 seeds
        return cls(scale="paper", accelerator="auto", precision="bf16-mixed", d_model=512, n_layers=12, n_heads=8,
                   d_ff=2048, seq_len=512, batch_size=32, steps=20_000, cont_steps=4_000, lr=6e-4, cont_lr=2e-4,
                   warmup_frac=0.02, threads=0, vocab_size=8192, code_bytes=6_000_000, eval_windows=1024, n_seeds=3,
                   calib_windows=256)


__getattr__, __dir__ = lazy_exports(__name__)
