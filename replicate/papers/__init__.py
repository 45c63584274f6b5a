"""One module per paper, keyed by the paper id used everywhere (notebook, results folder, spec file).

A paper module defines its config (registered with :func:`replicate.config.register`), ``run_experiments(cfg)``
returning tidy frames, pure ``table_*`` / ``figure_*`` functions of those frames, and ``claims(...)``.
"""

from __future__ import annotations

import importlib.util

# id -> title, in the order the README lists them.
PAPERS: dict[str, str] = {
    "temporal_scaling_law": "Temporal Scaling Law for Large Language Models",
    "lbpe": "LBPE: Long-token-first Tokenization to Improve Large Language Models",
    "maskmoe": "MaskMoE: routing masks in Mixture-of-Experts",
    "cartesian_moe": "CartesianMoE: Cartesian-product routing of experts",
    "finedeep": "Finedeep: Multi-Layer Fine-Grained Experts for Dense LLMs",
    "dsmoe": "DSMoE: Matrix-Partitioned Experts with Dynamic Routing",
    "uniattn": "UniAttn: Softmax Unification in Attention",
    "harpe": "HARPE: Head-Adaptive Rotary Position Encoding",
    "mmssr": "mmSSR: Harvesting Rich, Scalable and Transferable Multi-Modal Data for Instruction Fine-Tuning",
    "heie": "HEIE: MLLM-Based Hierarchical Explainable AIGC Image Implausibility Evaluator",
}


def implemented() -> list[str]:
    """The paper ids whose module exists, in README order."""
    return [p for p in PAPERS if importlib.util.find_spec(f"replicate.papers.{p}") is not None]
