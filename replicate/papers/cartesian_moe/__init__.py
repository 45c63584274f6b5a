"""CartesianMoE: Boosting Knowledge Sharing among Experts via Cartesian Product Routing in Mixture-of-Experts (Su et
al., arXiv 2410.16077, NAACL 2025).

Miniature replication. The paper's contribution (``method.py``): the FFN half of every MoE block becomes two routed
sub-layers in sequence, A then B, each with N half-width sub-experts, its own top-k router, one shared sub-expert mixed
in by a learned 2-way gate, and an RMSNorm and residual add between them (spec §3.3):

    x_A = x + o_A(RMSNorm_post(x)),    y = x_A + o_B(RMSNorm_mid(x_A)),    o(u) = a_1 Σ_j w_j E_{I_j}(u) + a_2 S(u)

so a token passes through k_A·k_B composite experts (E^B_j ∘ E^A_i) of the N_A × N_B Cartesian product, built from
only N_A + N_B sub-experts' parameters. ``experiments.py`` trains, on the same batches, at equal total and active FFN
width per MoE layer (asserted by the shared parameter counter): Dense, SMoE-Share, SMoE-Top3, Hash Layer,
Fine-grained, TopP and CartesianMoE (CartesianMoE and Fine-grained, the deciding pair, with ``n_seeds`` seeds; the
others with ``n_seeds_baselines``); evaluates held-out perplexity and next-token accuracy, the learning curves of
the deciding pair, and every routed model with its top-1 expert disabled at inference (Table 4); ``report.py`` turns
them into Tables 1-5 beside the paper's numbers and the claims.

Not reproduced: the model sizes, the Pile and 100-400B tokens, the downstream suite (Tables 2 and 5: hub data sets;
held-out next-token accuracy stands in, named as a proxy), the 7.25B model. UNCONFIRMED choices are options:
``shared_mix`` (``gate``: the learned 2-way softmax, the paper's code, default; ``add``: DeepSeekMoE's plain sum),
``disable_top1_in`` (``both`` sub-layers, default; ``A``; ``B``: all three are also measured), ``hash_kind``
(``random``, default; ``balanced``), ``balance_coef`` (0.01 per router), and the re-matching of CartesianMoE without
shared experts (``run_no_shared``; ours: N + 1 sub-experts per sub-layer, top-3, so totals and actives stay equal).
"""

from __future__ import annotations

from dataclasses import dataclass

from replicate.config import constraint, param, register
from replicate.data.corpora import CORPORA
from replicate.papers import lazy_exports
from replicate.recipe import LMConfig

PAPER_ID = "cartesian_moe"
# the variants of the budget table (spec §3.4, §6), in Table 1's order; "cartesian_noshared" is Table 3's ablation
VARIANTS = ("dense", "smoe_share", "smoe_top3", "hash", "fine_grained", "topp", "cartesian")
LABELS = {"dense": "Dense", "smoe_share": "SMoE-Share", "smoe_top3": "SMoE-Top3", "hash": "Hash Layer",
          "fine_grained": "Fine-grained", "topp": "TopP", "cartesian": "CartesianMoE",
          "cartesian_noshared": "CartesianMoE w/o shared"}
DECIDING = ("fine_grained", "cartesian")  # the paper's best baseline at MoE-Base and the method: n_seeds seeds
ROUTED = ("smoe_share", "smoe_top3", "fine_grained", "topp", "cartesian")  # Table 4 (Hash excluded: fixed routing)
SHARED_MIXES = ("gate", "add")
DISABLE_IN = ("A", "B", "both")
HASH_KINDS = ("random", "balanced")


@register(PAPER_ID)
@dataclass(frozen=True, kw_only=True)
class CartesianMoEConfig(LMConfig):
    """The shared LM fields (``replicate.recipe.LMConfig``) at the spec's §6 backbone (d 128, 4 layers, 4 heads, MoE in
    layers 1 and 3); ``d_ff`` is the dense FFN width D, the unit of every budget of spec §3.4."""

    # --- data ---
    corpus: str = param("shakespeare", help="shipped corpus", source="spec §6 (the project's corpus)", choices=CORPORA)
    doc_max_bytes: int = param(0, help="cut every document to its first N bytes (at a line end); 0 = whole",
                               source="ours (smoke only)", min=0, max=10**12)
    heldout_fraction: float = param(0.15, help="fraction of the documents held out (whole documents)",
                                    source="ours (spec §6: 5%, two plays of Shakespeare: the referee audit found the "
                                    "two plays' gaps disagreeing beyond their intervals; 15% = 6 plays, as MaskMoE "
                                    "and Finedeep)", min=0.01, max=0.5)
    vocab_size: int = param(1024, help="byte-level BPE vocabulary", source="ours: scaled down for the 15-minute "
                            "budget (spec §6: 4096; Finedeep's 1024 beats the bigram bar in a few hundred steps)",
                            min=300, max=262_144)
    # --- backbone and budget (d_model ... lr: LMConfig; set below) ---
    d_ff: int = param(384, help="dense FFN width D (every non-MoE layer; SMoE experts; 2 x a sub-expert)",
                      source="spec §6: D = 384", min=8, max=65536)
    moe_layers: tuple[int, ...] = param((1, 3), help="decoder layers whose FFN is an MoE (0-based)",
                                        source="spec §3.1/§6: every other layer, 1 and 3", min=0, max=127, min_len=1,
                                        increasing=True)
    n_experts: int = param(8, help="N: experts of width D per MoE layer (Fine-grained: 2N of D/2; Cartesian: N of "
                           "D/2 per sub-layer)", source="spec §6: N = 8 (paper: 16)", min=2, max=256)
    lr: float = param(4e-3, help="peak learning rate (AdamW), shared by every arm", source="ours, after the referee "
                      "audit's per-arm sweep (400 steps, seed 0, 2 held-out plays; held-out nats at 1e-3 / 2e-3 / "
                      "3e-3 / 4e-3): CartesianMoE 4.061 / 3.893 / 3.852 / 3.858, Fine-grained 4.043 / 3.892 / 3.868 "
                      "/ 3.844, SMoE-Top3 4.014 / 3.878 / 3.859 / 3.877, SMoE-Share 4.029 / 3.871 / 3.870 / 3.828. "
                      "The former 2e-3 was below every arm's best; 4e-3 has the smallest total shortfall from each "
                      "arm's own best (0.024 nats, 3e-3: 0.066) and is within 0.006 of both deciding arms' bests (one seed, 2 "
                      "plays). Chosen after seeing these results; every pairwise gap changes sign across the sweep; "
                      "Dense, Hash and TopP were not in it, 4e-3 is its edge for Fine-grained and SMoE-Share, and at "
                      "4e-3 every MoE arm ends behind dense where at 2e-3 every one was ahead (C3 flips with the lr)",
                      min=1e-6, max=1.0)
    batch_size: int = param(16, help="sequences per step", source="ours (spec §6: 32; halved for more updates in "
                            "the same tokens)", min=1, max=4096)
    warmup_frac: float = param(0.25, help="warm-up fraction of the steps", source="ours (spec §6: 50 steps; MaskMoE "
                               "and Finedeep measured 25% against 5-10% at ~300-600 steps: routers collapsed less)",
                               min=0.0, max=0.5)
    # --- routing (spec §3.2-3.6) ---
    shared_mix: str = param("gate", help="shared expert mixing: gate (learned 2-way softmax a_1 r + a_2 S, the "
                            "paper's code) | add (plain sum r + S, DeepSeekMoE)", source="UNCONFIRMED (spec §3.2, §8): "
                            "gate", choices=SHARED_MIXES)
    balance_coef: float = param(0.01, help="Switch load-balancing coefficient α per router",
                                source="UNCONFIRMED (spec §3.5): 0.01", min=0.0, max=10.0)
    top_p: float = param(0.4, help="TopP threshold p", source="spec §3.5: 0.4 (the code's default)", min=0.01,
                         max=1.0)
    hash_kind: str = param("random", help="Hash Layer table: random | balanced (by training frequency)",
                           source="UNCONFIRMED (spec §4.4): random", choices=HASH_KINDS)
    disable_top1_in: str = param("both", help="Table 4 for CartesianMoE: disable each token's top-1 sub-expert in "
                                 "sub-layer A, B or both (all three are measured; this one is judged)",
                                 source="UNCONFIRMED (spec §3.6): both", choices=DISABLE_IN)
    variants: tuple[str, ...] = param(VARIANTS, help="variants trained (Table 1's rows)", source="spec §3.4",
                                      choices=VARIANTS, min_len=2, distinct=True)
    run_no_shared: bool = param(False, help="also train CartesianMoE without shared sub-experts (Table 3; N + 1 "
                                "sub-experts per sub-layer, top-3: equal total and active width), seed `seed`",
                                source="spec §6: paper scale (on at smoke to test the path)")
    # --- training and evaluation ---
    steps: int = param(370, help="optimizer steps per run (equal for every variant)",
                       source="ours: sized to the 15-minute budget and the bigram bar (400 steps measured 924 s cold, "
                       "over the budget; 370 after the referee audit). Measured at one thread on the 2 "
                       "shared cores (13:47 UTC, load ~3): 0.18 s/step dense, 0.30-0.37 s/step for the MoE variants "
                       "(batch 16 x 128), so 11 runs on two workers take ~1.7 s of makespan per step: 400 steps ~11 "
                       "min of training. Calibration at 400 steps, seed 0 (lr 2e-3, 2 held-out plays): held-out 3.896 (dense), "
                       "3.892 (Fine-grained), 3.893 (CartesianMoE) nats against the seen-window bigram bar 4.287",
                       min=2, max=10**8)
    n_seeds: int = param(3, help="seeds of the deciding pair (Fine-grained, CartesianMoE): seed, seed+1, ...",
                         source="issue 15: 3", min=1, max=100)
    n_seeds_baselines: int = param(1, help="seeds of Dense, SMoE-Share, SMoE-Top3, Hash and TopP",
                                   source="issue 15: 1 at small", min=1, max=100)
    eval_windows: int = param(128, help="fixed held-out windows (seq_len + 1 tokens): final PPL, accuracy, Table 4",
                              source="ours", min=2, max=1_000_000)
    curve_points: int = param(4, help="held-out evaluations during training of the deciding pair (Fig. 4)",
                              source="ours (spec §6: every 50 steps)", min=1, max=1000)
    learn_margin: float = param(0.05, help="'clearly below the unigram cross-entropy' means by this many nats",
                                source="ours, pre-registered", min=0.0, max=10.0)
    budget_rtol: float = param(0.005, help="total (and fixed-k active) FFN parameters of every MoE variant within "
                               "this fraction of SMoE-Share's", source="spec §3.4: 0.5%", min=0.0, max=1.0)
    drift_frac: float = param(0.2, help="every run is also scored on the held-out windows after 1 − drift_frac of "
                              "the steps; a decided loss comparison whose held-out gap still moves over that last "
                              "stretch (its interval excludes 0) and, continued linearly for one more run length, "
                              "would no longer pass the claim's own rule is 'still converging' (inconclusive)",
                              source="ours (the runs are short: PPL still falls steeply at the last step); held out, "
                              "as the other MoE papers after their audits, instead of the paired training-loss gap "
                              "(other units, and noisy)", min=0.05, max=0.5)
    n_boot: int = param(1000, help="bootstrap resamples over held-out windows", source="ours", min=10, max=100_000)

    CONSTRAINTS = LMConfig.CONSTRAINTS + (
        constraint("moe_layers", lambda c: max(c.moe_layers) < c.n_layers, "must lie below n_layers ({n_layers})",
                   moe_layers=(5,)),
        constraint("d_ff", lambda c: c.d_ff % 2 == 0 and (c.d_ff * (c.n_experts + 1)) % c.n_experts == 0,
                   "must be even and (n_experts + 1) * d_ff divisible by n_experts (SMoE-Top3's width)", d_ff=383),
        constraint("variants", lambda c: set(DECIDING) <= set(c.variants) and len(set(c.variants)) == len(c.variants),
                   "must contain fine_grained and cartesian, each once", variants=("dense", "cartesian")),
        constraint("curve_points", lambda c: c.curve_points < c.steps, "must be below steps ({steps})",
                   curve_points=10**6),
    )

    def workload(self) -> list:  # the budget estimate counts runs one after another (workers only speed them up)
        from replicate.budget import Run

        # per layer on average (MoE every other layer): (N+2)/2 stored FFNs of width D, 2 D active
        moe = lambda name, count: Run(name, self.d_model, self.n_layers, self.d_ff, self.vocab_size, self.seq_len,
                                      self.batch_size, self.steps, count=count,
                                      n_experts=max(1, (self.n_experts + 2) // 2), top_k=2)
        n_dec = sum(v in DECIDING for v in self.variants)
        n_base = len(self.variants) - n_dec
        return [moe("deciding pair", n_dec * self.n_seeds), moe("baselines", n_base * self.n_seeds_baselines
                                                                + (1 if self.run_no_shared else 0))]

    @classmethod
    def smoke(cls):  # spec §6 smoke: d 32, 2 layers (1 MoE layer), N 4; every variant and Table 3's path, no evidence
        return cls(scale="smoke", doc_max_bytes=6_000, vocab_size=400, d_model=32, n_layers=2, n_heads=2, d_ff=32,
                   moe_layers=(1,), n_experts=4, seq_len=32, batch_size=4, steps=6, threads=1, n_seeds=2,
                   eval_windows=8, curve_points=2, n_boot=50, run_no_shared=True, budget_rtol=0.03)

    @classmethod
    def small(cls):  # the defaults above; two one-thread worker processes train two runs at once on the 2 cores
        return cls(scale="small", workers=2, threads=1)

    @classmethod
    def paper(cls):  # spec §6 paper: one GPU, hours: d 512, 8 layers, MoE every other layer, N 16, D 2048, seq 512
        return cls(scale="paper", accelerator="auto", precision="bf16-mixed", d_model=512, n_layers=8, n_heads=8,
                   d_ff=2048, seq_len=512, batch_size=32, moe_layers=(1, 3, 5, 7), n_experts=16, steps=20_000,
                   lr=6e-4, warmup_frac=0.02, threads=0, vocab_size=8192, n_seeds=3, n_seeds_baselines=3,
                   eval_windows=1024, curve_points=20, run_no_shared=True)


__getattr__, __dir__ = lazy_exports(__name__)
