"""The causal-LM LightningModule: next-token loss, AdamW, warm-up + cosine schedule, per-position evaluation.

Loss:  L = mean_{b,i} -log p(x_{b,i+1} | x_{b,<=i})  +  sum_k w_k * aux_k
(aux: the FFN parts' auxiliary losses, which the MoE layers already scale by their own coefficients, so w_k = 1
unless ``OptimConfig.aux_weights`` says otherwise; w_k = 0 logs an aux loss without training on it).
Schedule (per optimizer step s, peak lr η):  η_s = η * s / W  for s < W;  then cosine from η down to
``min_lr_ratio * η`` at ``max_steps``. :func:`lr_at` is the same schedule as a plain function, for laws that
need the learning-rate history (Temporal Scaling Law's schedule-aware terms).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass

import lightning as L
import torch
import torch.nn.functional as F

from replicate.models.decoder import Decoder, DecoderConfig
from replicate.models.loss import linear_cross_entropy, weighted_linear_cross_entropy


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 3e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 20
    max_steps: int = 400
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    aux_weights: tuple = ()  # (("load_balance", 0.0), ...): extra factors on the layers' aux losses (default 1)
    trainable: tuple = ()  # fnmatch patterns of parameter names that train ("layers.*.attn.*"); () = all of them


@dataclass(frozen=True)
class LRMap:
    """A run whose learning rate follows a longer schedule: at its own step s the rate is
    ``lr_at(offset + s * stretch, schedule)``. Phase 1 of a continued recipe is (offset 0, stretch 1) of the whole
    schedule, stopped early; a later phase maps its own steps onto the rest of the same schedule."""

    schedule: OptimConfig
    offset: int = 0
    stretch: float = 1.0

    def lr(self, step: int) -> float:
        return lr_at(self.offset + step * self.stretch, self.schedule)


def lr_at(step: int | float, opt: OptimConfig) -> float:
    """Learning rate in effect for optimizer step ``step`` (0-based)."""
    if step < opt.warmup_steps:
        return opt.lr * (step + 1) / opt.warmup_steps
    progress = min(1.0, (step - opt.warmup_steps) / max(1, opt.max_steps - opt.warmup_steps))
    return opt.lr * (opt.min_lr_ratio + (1 - opt.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def per_token_nll(logits_BTV: torch.Tensor, targets_BT: torch.Tensor) -> torch.Tensor:
    """-log p(target) per token, in fp32: (B, T)."""
    return F.cross_entropy(logits_BTV.float().flatten(0, 1), targets_BT.flatten(), reduction="none").view_as(targets_BT)


class CausalLM(L.LightningModule):
    """The LightningModule every decoder trains in. The protocol ``replicate.models.trainer.train`` relies on (a
    paper's subclass keeps it):

    - ``training_step(batch, i) -> loss``: ``batch`` is (B, T+1) ids, or a dict with ``ids`` and ``loss_mask``
      (B, T+1 bool: which tokens are targets; answer-only fine-tuning) or ``loss_weight`` (B, T+1 float >= 0: the
      weighted mean Σ a ℓ / Σ a, e.g. up-weighted answer tokens in a mixed batch; a few distinct values);
    - ``evaluate(data)``: per-token metrics of a fixed evaluation set, computed at the scheduled steps and at the
      end: (W, T) losses for (W, T+1) windows, or for a masked set (a dict with ``ids`` and ``loss_mask``) a dict of
      (W, T) ``loss``, ``correct`` (argmax == target) and ``mask``;
    - ``model``: the decoder; ``lr(step)``: the learning rate of a step (a pure function of it).
    Only parameters matching ``OptimConfig.trainable`` train (all by default); the others are frozen.
    """

    def __init__(self, model: DecoderConfig | dict, optim: OptimConfig | dict, lr_map: LRMap | None = None):
        super().__init__()
        model = DecoderConfig(**model) if isinstance(model, dict) else model
        optim = OptimConfig(**optim) if isinstance(optim, dict) else optim
        self.save_hyperparameters({"model": asdict(model), "optim": asdict(optim)})
        self.model_cfg, self.optim_cfg, self.lr_map = model, optim, lr_map
        self.model = Decoder(model)
        self.aux_weights = dict(optim.aux_weights)

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step ``step``: this run's own schedule, or the longer one ``lr_map``
        maps it onto."""
        return self.lr_map.lr(step) if self.lr_map is not None else lr_at(step, self.optim_cfg)

    def forward(self, input_ids_BT):
        return self.model(input_ids_BT)

    def training_step(self, batch, batch_idx):
        if isinstance(batch, dict) and "loss_weight" in batch:  # per-token weights (e.g. up-weighted answers)
            ids, a = batch["ids"], batch["loss_weight"][:, 1:]
            h, aux = self.model.hidden(ids[:, :-1])
            lm_loss = weighted_linear_cross_entropy(h.flatten(0, 1), self.model.lm_head.weight, ids[:, 1:].flatten(),
                                                    a.flatten())
        elif isinstance(batch, dict):  # a loss mask: only the masked targets count (answer-only fine-tuning)
            ids, m = batch["ids"], batch["loss_mask"][:, 1:]
            h, aux = self.model.hidden(ids[:, :-1])
            lm_loss = linear_cross_entropy(h[m], self.model.lm_head.weight, ids[:, 1:][m])
        else:
            x, y = batch[:, :-1], batch[:, 1:]
            lm_loss, aux = self.model.loss(x, y)  # head + cross-entropy fused (replicate.models.loss)
        loss = lm_loss + sum(self.aux_weights.get(k, 1.0) * v for k, v in aux.items())
        self.log("train_loss", lm_loss, prog_bar=True)
        for k, v in aux.items():
            self.log(f"aux_{k}", v)
        for k, v in self.model.layer_stats().items():  # per-layer MoE load, router entropy (empty when dense)
            self.log(f"stats/{k}", v)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"] if self._trainer else 0.0)
        return loss

    def evaluate(self, data):
        """Per-token metrics of an evaluation set: (W, T) losses of windows, or a dict for a masked set."""
        if isinstance(data, dict):
            return self.masked_metrics(data["ids"], data["loss_mask"])
        return self.per_token_loss(data)

    @torch.no_grad()
    def masked_metrics(self, ids_BT1: torch.Tensor, loss_mask_BT1: torch.Tensor, chunk: int = 16) -> dict:
        """``loss`` (-log p), ``correct`` (argmax == target) per predicted token, and ``mask`` (the targets that
        count): each (W, T). Exact match of a row = all its masked tokens correct (teacher forcing)."""
        was_training = self.training
        self.eval()
        loss, correct = [], []
        for s in range(0, len(ids_BT1), chunk):
            w = ids_BT1[s : s + chunk].to(self.device)
            logits = self.model(w[:, :-1]).logits
            loss.append(per_token_nll(logits, w[:, 1:]).cpu())
            correct.append((logits.argmax(-1) == w[:, 1:]).cpu())
        self.train(was_training)
        return {"loss": torch.cat(loss), "correct": torch.cat(correct), "mask": loss_mask_BT1[:, 1:].clone()}

    @torch.no_grad()
    def per_token_loss(self, windows_BT1: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """-log p per predicted token on fixed windows: (W, T), fp32. Column i predicts token i+1 from i+1
        tokens of context (positions are counted 1..T in the Temporal Scaling Law's notation)."""
        was_training = self.training
        self.eval()
        out = []
        for s in range(0, len(windows_BT1), chunk):
            w = windows_BT1[s : s + chunk].to(self.device)
            out.append(per_token_nll(self.model(w[:, :-1]).logits, w[:, 1:]).cpu())
        self.train(was_training)
        return torch.cat(out)

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, parameter) of what trains; the rest is frozen (``requires_grad=False``)."""
        pats = self.optim_cfg.trainable
        out = []
        for n, p in self.named_parameters():  # patterns name the decoder's parameters ("layers.1.*")
            keep = not pats or any(fnmatch.fnmatchcase(n.removeprefix("model."), pat) for pat in pats)
            p.requires_grad_(keep)
            if keep:
                out.append((n, p))
        if not out:
            raise ValueError(f"trainable: {pats} matches no parameter of the model")
        return out

    def configure_optimizers(self):
        params = self.trainable_parameters()
        decay = [p for n, p in params if p.dim() >= 2 and "embed" not in n]
        no_decay = [p for n, p in params if not (p.dim() >= 2 and "embed" not in n)]
        o = self.optim_cfg
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(
            [g for g in groups if g["params"]],
            lr=o.lr, betas=(o.beta1, o.beta2), foreach=True,
        )
        return opt

    def on_train_batch_start(self, batch, batch_idx):
        # The learning rate is a pure function of the global step (no scheduler state to save and restore), so a
        # run resumed from a checkpoint takes exactly the steps an uninterrupted run takes.
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = self.lr(self.global_step)
