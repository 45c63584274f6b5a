"""The papers: one package per paper, keyed by the id used everywhere (notebook, results folder, spec file).

A paper package ``replicate.papers.<id>`` has the shape of DESIGN.md §1:

- ``__init__.py``: its config dataclass (registered with :func:`replicate.config.register`) and the public names its
  notebook uses. It imports no torch: the names that need it load on first use, so validating a config is fast.
- ``method.py``: what the paper contributes (model parts, encoder, algorithm), equations beside the lines.
- ``experiments.py``: ``run_experiments(cfg)`` -> one frozen bundle of every result (trains, evaluates, fits).
- ``report.py``: pure ``table*`` / ``fig*`` functions of the bundle and ``claims(cfg, bundle)``.

This module is the one place that imports a paper by id (:func:`load`); the layers below it (config, models, data,
results) never do.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from replicate.config import ConfigError, registered, resolve

# id -> title, in the order the README lists them.
PAPERS: dict[str, str] = {
    "temporal_scaling_law": "Temporal Scaling Law for Large Language Models",
    "lbpe": "LBPE: Long-token-first Tokenization to Improve Large Language Models",
    "maskmoe": "MaskMoE: Boosting Token-Level Learning via Routing Mask in Mixture-of-Experts",
    "cartesian_moe": ("CartesianMoE: Boosting Knowledge Sharing among Experts via Cartesian Product Routing in "
                      "Mixture-of-Experts"),
    "finedeep": "Finedeep: Mitigating Sparse Activation in Dense LLMs via Multi-Layer Fine-Grained Experts",
    "dsmoe": "DSMoE: Matrix-Partitioned Experts with Dynamic Routing",
    "uniattn": "UniAttn: Softmax Unification in Attention",
    "harpe": "HARPE: Head-Adaptive Rotary Position Encoding",
    "mmssr": "mmSSR: Harvesting Rich, Scalable and Transferable Multi-Modal Data for Instruction Fine-Tuning",
    "heie": "HEIE: MLLM-Based Hierarchical Explainable AIGC Image Implausibility Evaluator",
}


def lazy_exports(package: str, submodules: tuple[str, ...] = ("method", "experiments", "report")):
    """``(__getattr__, __dir__)`` for a paper package's ``__init__``: a public name not defined there is looked up
    in its ``submodules`` (in order) on first use, so ``replicate.papers.<id>.run_experiments`` works while importing
    the package itself (to validate a config) stays free of torch."""

    def __getattr__(name: str):
        if not name.startswith("_"):
            for sub in submodules:
                mod = importlib.import_module(f"{package}.{sub}")
                if name in vars(mod):
                    return getattr(mod, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        names = set(vars(importlib.import_module(package)))
        for sub in submodules:
            names |= {n for n in vars(importlib.import_module(f"{package}.{sub}")) if not n.startswith("_")}
        return sorted(names)

    return __getattr__, __dir__


def implemented() -> list[str]:
    """The paper ids whose package exists, in README order (found without importing them)."""
    return [p for p in PAPERS if importlib.util.find_spec(f"replicate.papers.{p}") is not None]


def load(paper_id: str) -> ModuleType:
    """The package of ``paper_id``, imported (its config registered). Unknown or unimplemented ids raise a one-line
    :class:`ConfigError`."""
    if paper_id not in PAPERS:
        raise ConfigError(f"paper: unknown paper id {paper_id!r}; allowed: {', '.join(PAPERS)}")
    if paper_id not in implemented():
        raise ConfigError(
            f"paper: {paper_id!r} is not implemented yet; implemented: {', '.join(implemented()) or 'none'}")
    return importlib.import_module(f"replicate.papers.{paper_id}")


def config_class(paper_id: str) -> type:
    """The config dataclass of ``paper_id`` (its package imported by :func:`load`)."""
    load(paper_id)
    cls = registered(paper_id)
    if cls is None:
        raise ConfigError(f"paper: replicate.papers.{paper_id} registers no config (use @register({paper_id!r}))")
    return cls


def resolve_config(paper_id: str, scale: str = "small", /, **overrides):
    """The validated config of ``paper_id`` at ``scale`` with ``overrides`` (:func:`replicate.config.resolve`)."""
    return resolve(config_class(paper_id), scale, **overrides)
