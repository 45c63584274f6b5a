"""Finedeep: Mitigating Sparse Activation in Dense LLMs via Multi-Layer Fine-Grained Experts (Pan, Su et al., arXiv
2502.12928, 2025).

Miniature replication. The paper's contribution (``method.py``): every FFN slot of a dense LLaMA-style decoder becomes
M sequential sub-layers of K small SwiGLU experts (the dense width D cut into M·K slices), every expert always active
and scaled by the sigmoid of its own output, each sub-layer with its RMSNorm and residual add (spec §3.2-3.3):

    h̃^j = RMSNorm_j(ĥ^{j-1}),   o_{j,i} = E_{j,i}(h̃^j),   r_{j,i} = σ(o_{j,i}·R_{j,i}),   ĥ^j = ĥ^{j-1} + Σ_i r_{j,i} o_{j,i}

``experiments.py`` trains, on the same batches and from paired initial weights (each Finedeep model's experts are the
slices of the dense model's FFN of the same seed), a dense decoder and Finedeep at (M, K) ∈ {(1,8), (2,4), (4,2),
(8,1)}, the pre-registered balanced (2, 4) and dense with ``n_seeds`` seeds; it checks the parameter and FLOP
accounting (the exact (M·K + M − 1)·d extra parameters per layer), the mechanism's identities and limits, measures the
non-sparse activation rate (NSAR, raw and RMS-relative thresholds, on three activation tensors) and the router
scores; ``report.py`` turns that into
the PPL table, the depth-versus-width curve, the activation analysis, the score histograms and the claims.

Not reproduced: the paper's model sizes, data (100B tokens), benchmarks and every number: the full text could not be
recovered, so ``paper_value`` stays empty. UNCONFIRMED choices are options: ``norm`` (``pre``: an RMSNorm before every
sub-layer, the default; ``shared``; ``post``), ``score`` (``output``-guided, the default; ``input``-guided; ``none``:
r ≡ 1), ``router_init`` (``normal`` N(0, 0.02), the default; ``zero``: every score starts at 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

from replicate.config import constraint, param, register
from replicate.data.corpora import CORPORA
from replicate.papers import lazy_exports
from replicate.recipe import LMConfig

PAPER_ID = "finedeep"
NORMS = ("pre", "shared", "post")  # kept equal to method.NORMS (tested): this module imports no torch
SCORES = ("output", "input", "none")
NSAR_TENSORS = ("scored", "product", "silu")  # kept equal to method.NSAR_TENSORS (tested)
ROUTER_INITS = ("normal", "zero")


@register(PAPER_ID)
@dataclass(frozen=True, kw_only=True)
class FinedeepConfig(LMConfig):
    """The shared LM fields (``replicate.recipe.LMConfig``); ``d_ff`` is the dense FFN width D that Finedeep cuts into
    ``n_experts`` = M·K experts of width D / (M·K)."""

    # --- data ---
    corpus: str = param("shakespeare", help="shipped corpus", source="spec §6 (the project's corpus)", choices=CORPORA)
    doc_max_bytes: int = param(0, help="cut every document to its first N bytes (at a line end); 0 = whole",
                               source="ours (smoke only)", min=0, max=10**12)
    heldout_fraction: float = param(0.15, help="fraction of the documents held out (whole documents)",
                                    source="ours: 6 of the 38 plays, so the held-out windows are not two documents' "
                                    "(was 0.05: 2 plays; the referee audit found the window bootstrap too narrow)",
                                    min=0.01, max=0.5)
    vocab_size: int = param(1024, help="byte-level BPE vocabulary", source="ours: scaled down for the 15-minute budget "
                            "(spec §6: 4-8k; a smaller head, and the bigram bar is beaten in 300 steps)",
                            min=300, max=262_144)
    # --- backbone (d_model ... lr: LMConfig; set below) ---
    d_ff: int = param(512, help="dense FFN width D (Finedeep: M·K experts of width D/(M·K))",
                      source="ours: scaled down (spec §6: 1024 at d 256)", min=8, max=65536)
    lr: float = param(3e-3, help="peak learning rate (AdamW), shared by every arm",
                      source="DESIGN §5 calibration (spec §6: 1e-3 for longer runs). Per-arm check after the referee "
                      "audit, in the small design (500 steps, seed 0, held-out loss in nats) at lr 1.5e-3 / 3e-3 / "
                      "6e-3: dense 3.850 / 3.774 / 3.785, Finedeep (2,4) 3.827 / 3.824 / 3.854: 3e-3 is the best "
                      "of the three for both arms, so the shared rate favours neither (at each arm's best, dense "
                      "leads by 0.05)", min=1e-6, max=1.0)
    batch_size: int = param(16, help="sequences per step", source="spec §6: 16", min=1, max=4096)
    warmup_frac: float = param(0.25, help="warm-up fraction of the steps", source="ours, measured before the small "
                               "run (spec §3.7 asks >= 1-2%): at 550 steps, lr 3e-3, a 25% warm-up against 5% gave "
                               "held-out 3.758 vs 4.101 nats for Finedeep (2,4) seed 0 and 3.696 vs 3.771 for dense "
                               "seed 1 (MaskMoE found the same at ~300 steps); chosen on those two calibration runs",
                               min=0.0, max=0.5)
    # --- Finedeep (spec §3.2-3.3) ---
    n_experts: int = param(8, help="N = M·K experts per FFN slot (fixed across the depth-width grid)",
                           source="spec §6: M·K = 8", min=1, max=1024)
    grid_M: tuple[int, ...] = param((1, 2, 4, 8), help="sub-layer counts M of the depth-width grid (K = N / M)",
                                    source="spec §6: (1,8), (2,4), (4,2), (8,1)", min=1, max=1024, min_len=2,
                                    increasing=True)
    deciding_M: int = param(2, help="M of the pre-registered best (M, K), trained with n_seeds seeds against dense "
                            "(fixed before any result: the balanced default)", source="ours, pre-registered (spec §6 "
                            "expects (2, 4) or (4, 2))", min=1, max=1024)
    norm: str = param("pre", help="sub-layer norm placement: pre (RMSNorm_j before each sub-layer) | shared (one norm "
                      "of the slot input for all) | post (pre-norm plus a norm of the weighted sum)",
                      source="UNCONFIRMED (spec §3.3): pre", choices=NORMS)
    score: str = param("output", help="expert score: output (σ(o·R), Finedeep) | input (σ(h̃·R)) | none (r ≡ 1)",
                       source="spec §3.3: output-guided", choices=SCORES)
    router_init: str = param("normal", help="router vectors R at init: normal N(0, 0.02) | zero (scores start at 0.5)",
                             source="UNCONFIRMED (spec §3.7): normal", choices=ROUTER_INITS)
    run_ablations: bool = param(True, help="also train the deciding (M, K) with r ≡ 1 (ablation b) and with the "
                                "input-guided score (ablation c), seed `seed` only", source="spec §4 (b), (c); on at "
                                "small since the referee audit: r ≡ 1 tests whether the scores (which start near 0.5, "
                                "so Finedeep starts at about half a dense FFN's strength) help or hinder")
    # --- training and evaluation ---
    steps: int = param(500, help="optimizer steps per run (equal for every variant)",
                       source="ours: sized to the 15-minute budget with 11 runs (the ablations included) trained two "
                       "at a time (workers=2, threads=1). Measured in the 600-step, 9-run design on 2 quiet cores "
                       "(two processes at once): dense 9.4k, Finedeep (1,8) 8.2k, (2,4) 8.0k, (4,2) 7.4k, (8,1) "
                       "6.4k tokens/s per process, 757 s in all; 11 runs at 500 steps: ~1,660 run-seconds at 600 "
                       "steps x 5/6 on 2 workers ~ 700 s of training + ~60 s of data, analysis and notebook",
                       min=2, max=10**8)
    n_seeds: int = param(3, help="seeds of dense and of the deciding (M, K): seed, seed+1, ...",
                         source="issue 16: 3 seeds", min=1, max=100)
    n_seeds_grid: int = param(1, help="seeds of the other (M, K) of the grid", source="issue 16: 1 at small",
                              min=1, max=100)
    eval_windows: int = param(192, help="fixed held-out windows (seq_len + 1 tokens) scored at the end",
                              source="ours: 32 per held-out play", min=2, max=1_000_000)
    analysis_windows: int = param(32, help="held-out windows on which activations and scores are recorded",
                                  source="ours", min=1, max=1_000_000)
    nsar_tensor: str = param("scored", help="the activation tensor the NSAR claim is judged on: scored (what reaches "
                             "W_down: r·a for Finedeep, a for dense) | product (the SwiGLU intermediates a, before "
                             "the score) | silu (the SiLU gate outputs); all are logged, and the claim is mixed "
                             "when another tensor is judged the opposite way", source="UNCONFIRMED (spec §3.6): "
                             "scored, chosen after the referee audit found the product (measured before the score, "
                             "the first landing's tensor) misses the score's scaling, which is part of the method",
                             choices=NSAR_TENSORS)
    nsar_eps: tuple[float, ...] = param((0.01, 0.05, 0.1), help="raw NSAR thresholds ε (|a| > ε)",
                                        source="spec §3.6", min=0.0, max=100.0, min_len=1, increasing=True)
    nsar_rel_eps: tuple[float, ...] = param((0.1, 0.25, 0.5), help="RMS-relative NSAR thresholds (|a| > ε·RMS, the "
                                            "RMS taken per Finedeep sub-layer, per dense layer)",
                                            source="ours (spec §3.6: a scale-free variant; per sub-layer since the "
                                            "referee audit)", min=0.0, max=100.0,
                                            min_len=1, increasing=True)
    nsar_eps_claim: float = param(0.05, help="the raw ε the NSAR claim is judged at", source="ours, pre-registered "
                                  "(spec §3.6's middle value)", min=0.0, max=100.0)
    nsar_rel_claim: float = param(0.25, help="the RMS-relative ε the NSAR claim is judged at",
                                  source="ours, pre-registered (the middle value)", min=0.0, max=100.0)
    drift_frac: float = param(0.2, help="every run is also scored on the held-out windows after 1 − drift_frac of "
                              "the steps; a decided comparison whose held-out gap still moves over that last stretch "
                              "(its interval excludes 0) and, continued linearly for one more run length, would no "
                              "longer pass the claim's own rule is 'still converging' (inconclusive)", source="ours, "
                              "after the second referee audit (the gaps were still closing at 500 steps); held out "
                              "since the third (a training-loss drift is in other units, and windows repeat)",
                              min=0.05, max=0.5)
    score_bins: int = param(40, help="bins of the router-score histograms on [0, 1]", source="ours", min=2, max=1000)
    learn_margin: float = param(0.05, help="'clearly below the unigram cross-entropy' means by this many nats",
                                source="ours, pre-registered", min=0.0, max=10.0)
    budget_rtol: float = param(0.01, help="parameters and FLOPs of every variant within this fraction of dense's (the "
                               "extra parameters are also checked to equal (M·K + M − 1)·d per layer exactly)",
                               source="ours: the spec's exact overhead reaches 0.59% for (8,1) at d 128, D 512 (the "
                               "0.5% rule of CartesianMoE is too tight here); smoke models are smaller still",
                               min=0.0, max=1.0)
    n_boot: int = param(1000, help="bootstrap resamples over held-out windows", source="ours", min=10, max=100_000)

    CONSTRAINTS = LMConfig.CONSTRAINTS + (
        constraint("grid_M", lambda c: all(c.n_experts % m == 0 for m in c.grid_M),
                   "every M must divide n_experts ({n_experts})", grid_M=(1, 3)),
        constraint("deciding_M", lambda c: c.deciding_M in c.grid_M, "must be one of grid_M ({grid_M})",
                   deciding_M=3),
        constraint("d_ff", lambda c: c.d_ff % c.n_experts == 0, "must be divisible by n_experts ({n_experts})",
                   d_ff=250),
        constraint("nsar_eps_claim", lambda c: c.nsar_eps_claim in c.nsar_eps, "must be one of nsar_eps ({nsar_eps})",
                   nsar_eps_claim=0.07),
        constraint("nsar_rel_claim", lambda c: c.nsar_rel_claim in c.nsar_rel_eps,
                   "must be one of nsar_rel_eps ({nsar_rel_eps})", nsar_rel_claim=0.07),
        constraint("analysis_windows", lambda c: c.analysis_windows <= c.eval_windows,
                   "must be at most eval_windows ({eval_windows})", analysis_windows=10**6),
    )

    @property
    def deciding(self) -> tuple[int, int]:
        return self.deciding_M, self.n_experts // self.deciding_M

    @property
    def grid(self) -> tuple[tuple[int, int], ...]:
        return tuple((m, self.n_experts // m) for m in self.grid_M)

    def workload(self) -> list:
        from replicate.budget import Run

        count = 2 * self.n_seeds + (len(self.grid_M) - 1) * self.n_seeds_grid + (2 if self.run_ablations else 0)
        return [Run("dense+finedeep", self.d_model, self.n_layers, self.d_ff, self.vocab_size, self.seq_len,
                    self.batch_size, self.steps, count=count)]

    @classmethod
    def smoke(cls):  # spec §6 smoke: d 64, 2 layers, D 256, M·K = 4; every code path (ablations too), no evidence
        return cls(scale="smoke", doc_max_bytes=6_000, vocab_size=400, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                   n_experts=4, grid_M=(1, 2, 4), deciding_M=2, seq_len=32, batch_size=4, steps=6, threads=1,
                   n_seeds=2, eval_windows=8, analysis_windows=4, n_boot=50, score_bins=10, run_ablations=True,
                   budget_rtol=0.05)

    @classmethod
    def small(cls):
        # the defaults above; two one-thread worker processes train two runs at once on the 2 cores
        return cls(scale="small", workers=2, threads=1)

    @classmethod
    def paper(cls):  # spec §6 paper: one GPU, hours: d 512, 8 layers, D = 4d, 3 seeds each, ablations (b), (c)
        return cls(scale="paper", accelerator="auto", precision="bf16-mixed", d_model=512, n_layers=8, n_heads=8,
                   d_ff=2048, seq_len=512, batch_size=32, steps=20_000, lr=6e-4, warmup_frac=0.02, threads=0,
                   vocab_size=8192, n_seeds=3, n_seeds_grid=3, eval_windows=1024, analysis_windows=64,
                   run_ablations=True)


__getattr__, __dir__ = lazy_exports(__name__)
