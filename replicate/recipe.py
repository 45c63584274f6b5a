"""The language-model training fields every LM paper shares, and the factories that turn them into runs.

A paper config that trains decoders subclasses :class:`LMConfig` instead of ``PaperConfig``: it inherits the
model and optimiser fields once (defaults: the DESIGN.md §5 calibration, a 1.3 M-parameter LLaMA-style model that
beats count models on the plays in ~100 s) and sets its own values in its ``smoke()`` / ``small()`` / ``paper()``
factories, commented with their source. A paper that trains a second recipe (Temporal Scaling Law's mixture
models) declares the second set with a prefix (``mix_d_model``, ...) and asks for it with ``prefix="mix_"``; a
prefixed field it does not declare falls back to the unprefixed one (``mix_`` shares ``batch_size``, ``weight_decay``).

    cfg.decoder(vocab_size)            -> DecoderConfig (SwiGLU, RoPE, SDPA: the standard LLaMA block)
    cfg.optim(steps)                   -> OptimConfig (AdamW, warm-up, cosine to min_lr_ratio)
    cfg.trainer_kwargs()               -> accelerator / devices / strategy / precision / threads for ``train()``
    cfg.workers                        -> how many independent runs ``prefetch`` trains side by side

Nothing here imports torch at import time: configs validate before the heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass

from replicate.config import PaperConfig, constraint, param


@dataclass(frozen=True, kw_only=True)
class LMConfig(PaperConfig):
    d_model: int = param(128, help="model width", source="DESIGN §5 calibration", min=16, max=8192)
    n_layers: int = param(4, help="decoder layers", source="DESIGN §5 calibration", min=1, max=128)
    n_heads: int = param(4, help="attention heads", source="DESIGN §5 calibration", min=1, max=128)
    d_ff: int = param(344, help="SwiGLU hidden width", source="DESIGN §5 calibration", min=8, max=65536)
    seq_len: int = param(128, help="context length (tokens)", source="DESIGN §5 calibration", min=8, max=32768)
    batch_size: int = param(32, help="sequences per step", source="DESIGN §5 calibration", min=1, max=4096)
    lr: float = param(3e-3, help="peak learning rate (AdamW)", source="DESIGN §5 calibration", min=1e-6, max=1.0)
    weight_decay: float = param(0.1, help="AdamW weight decay", source="DESIGN §5 calibration", min=0.0, max=1.0)
    warmup_frac: float = param(0.02, help="warm-up fraction of the steps", source="DESIGN §5", min=0.0, max=0.5)
    min_lr_ratio: float = param(0.1, help="cosine floor as a fraction of the peak", source="DESIGN §5", min=0.0,
                                max=1.0)
    threads: int = param(0, help="torch intra-op threads while training (0 = torch's default: all cores); 1 avoids "
                         "oversubscribing cores that other jobs share", source="ours", min=0, max=1024)
    workers: int = param(1, help="independent training runs trained at once, each in its own process at `threads` "
                         "threads (replicate.models.trainer.prefetch); 1 = one after another in this process",
                         source="ours", min=1, max=256)

    CONSTRAINTS = (constraint("n_heads", lambda c: c.d_model % c.n_heads == 0, "must divide d_model ({d_model})",
                              n_heads=3),)

    def _get(self, name: str, prefix: str):
        return getattr(self, prefix + name) if prefix and hasattr(self, prefix + name) else getattr(self, name)

    def decoder(self, vocab_size: int, prefix: str = "", **overrides):
        """The recipe's decoder over ``vocab_size`` ids, context ``seq_len``; ``overrides`` go to DecoderConfig."""
        from replicate.models.decoder import DecoderConfig

        g = lambda n: self._get(n, prefix)
        return DecoderConfig(vocab_size=vocab_size, d_model=g("d_model"), n_layers=g("n_layers"),
                             n_heads=g("n_heads"), d_ff=g("d_ff"), max_seq_len=g("seq_len"), **overrides)

    def optim(self, steps: int, prefix: str = ""):
        """AdamW at ``lr`` for ``steps`` steps: linear warm-up over ``warmup_frac`` of them (at least one), then
        cosine to ``min_lr_ratio`` of the peak."""
        from replicate.models.lm import OptimConfig

        g = lambda n: self._get(n, prefix)
        return OptimConfig(lr=g("lr"), weight_decay=g("weight_decay"), max_steps=steps, min_lr_ratio=g("min_lr_ratio"),
                           warmup_steps=max(1, round(g("warmup_frac") * steps)))

    def trainer_kwargs(self) -> dict:
        """Where and how ``replicate.models.trainer.train`` runs (not part of any run's key)."""
        return dict(accelerator=self.accelerator, devices=self.devices, num_nodes=self.num_nodes,
                    strategy=self.strategy, precision=self.precision, threads=self.threads)
