"""Temporal Scaling Law for Large Language Models (Xiong et al., arXiv 2404.17785 v3/v4, EMNLP 2025).

Miniature replication. What the paper contributes (``method.py``, equations beside the lines):

1. Per-position test loss L_i(N) = mean_x -log p_θN(x_i | x_<i), i = 1..n, on fixed validation windows cut from
   inside held-out documents, at checkpoints N (training tokens).
2. The dynamic hyperbolic law per checkpoint:   L_i = a0 / (1 + a1 * i) + a2,   a0, a1, a2 > 0.
3. The temporal law: each parameter's trajectory over N, fitted on a prefix of training and extrapolated:
   a0 ~ logarithmic, a1 ~ hyperbolic, a2 ~ piecewise cosine (following the LR schedule). The exact
   parametrisations are UNCONFIRMED in the paper; every candidate form is implemented, switchable per parameter
   (``a0_form``, ``a1_form``, ``a2_form``), and fitted to every parameter so the notebook reports which fits best.
4. Future-loss prediction from the first 20/30/40 % of training against whole-loss baselines: E + A N^-α,
   (N_c/N)^α, the learning-rate-annealing law of Tissue et al. (2024), and the ablation that puts the
   piecewise-cosine form directly on L(N).
5. Data-mixture selection on the target model, reduced to a few code fractions.
6. The v1 insight: relative improvement is uniform across positions; and (paper scale) position re-weighting
   w_i ∝ L_i^γ gives no gain.

``experiments.py`` trains E1 (the studied model), E3 (mixture candidates) and the re-weighted models and computes
every fit, prediction and bootstrap into one bundle; ``report.py`` turns the bundle into tables, figures and claims.

Not reproduced here: the paper's model sizes (hundreds of millions of parameters), the Pile, downstream accuracy of
the chosen mixture, and any of the paper's numbers (none were recoverable; ``paper_value`` stays empty except the
"< 0.5 % error" figure that the spec attributes, with low confidence, to a third-party summary).
Uncertainty: a paired bootstrap over the held-out evaluation windows (the same resample at every checkpoint and for
every method), which captures evaluation noise; training-seed noise is not resampled at ``small``.
"""

from __future__ import annotations

from dataclasses import dataclass

from replicate.config import ConfigError, constraint, param, register
from replicate.papers import lazy_exports
from replicate.recipe import LMConfig

PAPER_ID = "temporal_scaling_law"
FORMS = ("log", "hyperbolic", "piecewise_cosine", "power")


@register(PAPER_ID)
@dataclass(frozen=True, kw_only=True)
class TSLConfig(LMConfig):
    """E1's model and optimiser are the shared LM fields (``replicate.recipe.LMConfig``; values per scale in the
    factories below); E3's mixture models are the ``mix_`` fields (batch size, weight decay and schedule shape
    shared with E1)."""

    # --- data (ours: offline stand-ins for the Pile and the paper's OOD sets) ---
    id_corpus: str = param("shakespeare", help="in-distribution corpus: shakespeare, or hf:<dataset> (needs network)",
                           source="ours (the paper: the Pile)")
    vocab_size: int = param(2048, help="byte-level BPE vocabulary", source="spec §6: 2,048-4,096", min=257, max=65536)
    code_max_bytes: int = param(4_000_000, help="bytes of stdlib source used as the code corpus", min=100_000,
                                max=100_000_000)
    eval_windows: int = param(128, help="fixed validation windows per evaluation set",
                              source="spec §6 says 64; ours: 128, per-position losses are too noisy at 64", min=4,
                              max=4096)
    # --- E1: the model whose checkpoints are studied (d_model ... min_lr_ratio: LMConfig) ---
    steps: int = param(800, help="E1 optimizer steps", source="spec §6 small: ~800", min=10, max=10_000_000)
    n_checkpoints: int = param(30, help="evaluated checkpoints (log-spaced early, uniform later)",
                               source="spec §6: ~30", min=5, max=1000)
    drop_before_frac: float = param(0.05, help="checkpoints before this fraction of training are excluded from every "
                                    "temporal fit (warm-up / unigram phase)", source="ours (spec §8)", min=0.0, max=0.5)
    # --- the law's UNCONFIRMED choices (switchable; defaults as the spec reads the paper) ---
    position_start: int = param(1, help="index of the first predicted position: 1 (i tokens of context) or 0",
                                source="UNCONFIRMED (spec §3.1)", choices=(0, 1))
    a0_form: str = param("log", help="temporal form of a0", source="UNCONFIRMED (spec §3.3)", choices=FORMS)
    a1_form: str = param("hyperbolic", help="temporal form of a1", source="UNCONFIRMED (spec §3.3)", choices=FORMS)
    a2_form: str = param("piecewise_cosine", help="temporal form of a2", source="UNCONFIRMED (spec §3.3)",
                         choices=FORMS)
    cosine_linear_term: bool = param(False, help="add δ·progress to the piecewise-cosine form",
                                     source="UNCONFIRMED (spec §3.3: δ2 = 0 first)")
    # --- E2: prediction ---
    fit_fractions: tuple[float, ...] = param((0.2, 0.3, 0.4), help="observed prefix of training for the fits",
                                             source="spec §6", min=0.05, max=0.95, min_len=1)
    main_fit_fraction: float = param(0.3, help="prefix used by the claims", source="spec §6", min=0.05, max=0.95)
    tissue_lambda: float = param(0.999, help="momentum decay λ of the LR-annealing law", source="Tissue et al. 2024",
                                 min=0.0, max=1.0)
    n_boot: int = param(100, help="bootstrap resamples of the evaluation windows", source="ours", min=2, max=100_000)
    # --- E3: data-mixture selection ---
    mixture_code_fractions: tuple[float, ...] = param((0.1, 0.3, 0.5), help="candidate code fractions r",
                                                      source="spec §6", min=0.0, max=1.0, min_len=2)
    mix_d_model: int = param(128, help="E3 model width", source="spec §6", min=16, max=8192)
    mix_n_layers: int = param(2, help="E3 layers", source="spec §6", min=1, max=128)
    mix_n_heads: int = param(4, help="E3 heads", source="ours", min=1, max=128)
    mix_d_ff: int = param(344, help="E3 SwiGLU width", source="ours", min=8, max=65536)
    mix_seq_len: int = param(128, help="E3 context length", source="spec §6", min=8, max=32768)
    mix_steps: int = param(300, help="E3 steps per candidate", source="spec §6", min=10, max=10_000_000)
    mix_lr: float = param(2e-3, help="E3 peak learning rate", source="ours", min=1e-6, max=1.0)
    mix_n_checkpoints: int = param(20, help="E3 evaluated checkpoints", source="ours", min=5, max=1000)
    # --- position re-weighting (v1 insight; paper scale) ---
    reweight_gammas: tuple[float, ...] = param((-1.0, 1.0), help="γ of w_i ∝ L_i^γ compared with uniform (γ=0)",
                                               source="spec §3.6", min=-4.0, max=4.0)
    run_reweighting: bool = param(False, help="train the re-weighted models (paper scale; on at smoke to test the path)",
                                  source="spec §6: paper")
    equivalence_margin: float = param(0.25, help="relative margin for 'uniform across positions'", source="ours",
                                      min=0.0, max=10.0)

    CONSTRAINTS = LMConfig.CONSTRAINTS + (
        constraint("mix_n_heads", lambda c: c.mix_d_model % c.mix_n_heads == 0, "must divide mix_d_model "
                   "({mix_d_model})", mix_n_heads=3),
        constraint("main_fit_fraction", lambda c: c.main_fit_fraction in c.fit_fractions,
                   "must be one of fit_fractions {fit_fractions}", main_fit_fraction=0.25),
        constraint("n_checkpoints", lambda c: c.n_checkpoints <= c.steps, "must be <= steps ({steps})",
                   n_checkpoints=31),
    )

    def validate(self):
        if self.id_corpus != "shakespeare" and not self.id_corpus.startswith("hf:"):
            raise ConfigError(f"parameter 'id_corpus': must be 'shakespeare' or 'hf:<dataset>', got {self.id_corpus!r}")

    @classmethod
    def smoke(cls):  # spec §6 smoke: seconds; every code path, no evidence
        return cls(scale="smoke", vocab_size=512, code_max_bytes=600_000, eval_windows=8, d_model=32, n_layers=1,
                   n_heads=2, d_ff=64, seq_len=32, batch_size=4, steps=30, lr=3e-3, n_checkpoints=6, n_boot=4,
                   mix_d_model=32, mix_n_layers=1, mix_n_heads=2, mix_d_ff=64, mix_seq_len=32, mix_steps=20,
                   mix_n_checkpoints=6, mixture_code_fractions=(0.1, 0.5), run_reweighting=True,
                   reweight_gammas=(1.0,))

    @classmethod
    def small(cls):  # spec §6 small: E1 d 192, 3 layers, 3 heads, SwiGLU 512, context 256, batch 8, AdamW 1e-3
        return cls(scale="small", d_model=192, n_layers=3, n_heads=3, d_ff=512, seq_len=256, batch_size=8, lr=1e-3)

    @classmethod
    def paper(cls):  # spec §6 paper: one GPU, hours (the middle of the 25M/85M/150M ladder)
        return cls(scale="paper", accelerator="auto", precision="bf16-mixed", vocab_size=4096, d_model=512,
                   n_layers=8, n_heads=8, d_ff=1376, seq_len=1024, batch_size=32, steps=30_000, lr=6e-4,
                   code_max_bytes=20_000_000, eval_windows=256, n_checkpoints=60, n_boot=500, mix_d_model=512,
                   mix_n_layers=8, mix_n_heads=8, mix_d_ff=1376, mix_seq_len=1024, mix_steps=10_000, mix_lr=6e-4,
                   mix_n_checkpoints=40, mixture_code_fractions=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5),
                   run_reweighting=True)


__getattr__, __dir__ = lazy_exports(__name__)
