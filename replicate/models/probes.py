"""Probes: capture per-layer tensors during evaluation, off by default and free when off.

    with capture(decoder, ["ffn_hidden", "router", "attn_probs"]) as rec:
        decoder(ids)
    rec["layer1.ffn/ffn_hidden"]        # list, one detached tensor per forward call
    rec.by_layer("router")              # {1: [...], 3: [...]}

A module that can emit derives from ``Probed``, lists its names in ``probe_names`` and, in its forward, runs
``if self._probe is not None: self._probe(name, tensor)``. ``_probe`` is a class attribute that is None until
``capture`` installs a sink on the modules that emit a requested name (and removes it on exit), so with probes
off the whole cost is that one attribute test. What emits what:

| name | module | tensor |
|---|---|---|
| ``resid_in``, ``attn_in``, ``resid_mid``, ``resid_out`` | ``Block`` | block input x, normed attention input u, x + attn(u), block output (B, T, D) |
| ``attn_probs`` | attention parts | softmax probabilities (B, H, T, S); an SDPA layer computes them beside its output, which stays SDPA's |
| ``ffn_hidden`` | ``SwiGLU``, ``ExpertBank.all_outputs`` | SwiGLU intermediate silu(x W_g) * (x W_u): (B, T, F), or (T, E*F) over all experts |
| ``router``, ``router_probs`` | ``MoE`` | top-k expert ids (T, K), -1 = empty slot; router probabilities (T, E) |
| ``gate`` | ``SigmoidGatedMoE`` | per-expert weights (T, E) |

Keys are ``<module path>/<name>`` with ``layers.3`` written ``layer3``: ``layer3/resid_mid``, ``layer3.attn/attn_probs``,
``layer1.ffn.sub.0.ffn/router`` (a sub-layer of a residual-owning FFN part).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Callable, Iterable

import torch
from torch import nn


class Probed:
    """Mixin for modules that can hand intermediate tensors to a probe (see the module docstring)."""

    probe_names: tuple[str, ...] = ()
    _probe: Callable[[str, torch.Tensor], None] | None = None


class Recording:
    """What ``capture`` collected: key -> list of tensors (one per forward call, in call order)."""

    def __init__(self):
        self.data: dict[str, list] = {}

    def __getitem__(self, key: str) -> list:
        return self.data[key]

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def keys(self):
        return self.data.keys()

    def cat(self, key: str, dim: int = 0) -> torch.Tensor:
        return torch.cat(self.data[key], dim=dim)

    def by_layer(self, name: str) -> dict[int, list]:
        """``{layer index: tensors}`` of the keys ``layer<i>.../<name>`` (first match per layer)."""
        out: dict[int, list] = {}
        for key, v in self.data.items():
            m = re.fullmatch(rf"layer(\d+)[^/]*/{re.escape(name)}", key)
            if m:
                out.setdefault(int(m.group(1)), v)
        return out


def _prefix(path: str) -> str:
    return re.sub(r"^layers\.(\d+)", r"layer\1", path)


@contextmanager
def capture(model: nn.Module, names: Iterable[str], *, fn: Callable[[str, torch.Tensor], object] | None = None,
            cpu: bool = True):
    """Record the tensors ``names`` emitted by ``model``'s modules while the block runs.

    ``fn(key, tensor)``, if given, is stored instead of the tensor (reduce on the fly: a count, a histogram), else
    the detached tensor (moved to the CPU unless ``cpu=False``). Outputs of the model are unchanged."""
    names = set(names)
    offered = {n for m in model.modules() if isinstance(m, Probed) for n in m.probe_names}
    if names - offered:
        raise ValueError(f"probes: {sorted(names - offered)} not emitted by this model; "
                         f"allowed: {', '.join(sorted(offered))}")
    rec = Recording()
    installed = []

    def sink_for(prefix: str):
        def sink(name: str, t: torch.Tensor) -> None:
            if name not in names:
                return
            key = f"{prefix}/{name}" if prefix else name
            v = t.detach()
            v = fn(key, v) if fn is not None else (v.cpu() if cpu else v)
            rec.data.setdefault(key, []).append(v)

        return sink

    for path, m in model.named_modules():
        if isinstance(m, Probed) and names & set(m.probe_names):
            m._probe = sink_for(_prefix(path))
            installed.append(m)
    try:
        yield rec
    finally:
        for m in installed:
            del m._probe  # back to the class attribute: None


@torch.no_grad()
def module_inputs(model: nn.Module, modules: list[nn.Module], windows: torch.Tensor, chunk: int = 16,
                  fn: Callable[[int, nn.Module, torch.Tensor], torch.Tensor] | None = None) -> list[torch.Tensor]:
    """What each of ``modules`` receives (its first positional input, flattened to (tokens, features)) during eval
    forwards of ``model`` over ``windows`` (W, T+1: inputs are ``[:, :-1]``), in ``chunk``-window batches, read by
    forward pre-hooks; a list in the order of ``modules`` of the chunks concatenated (W·T rows). ``fn(i, module, x)``,
    if given, is stored instead of ``x`` (reduce on the fly: gate values, activations). ``model`` is left in eval
    mode; its outputs are not changed."""
    model.eval()
    acc: list[list] = [[] for _ in modules]

    def hook_for(i: int):
        def hook(mod, args):
            x = args[0].reshape(-1, args[0].shape[-1])
            acc[i].append(x if fn is None else fn(i, mod, x))
        return hook

    hooks = [m.register_forward_pre_hook(hook_for(i)) for i, m in enumerate(modules)]
    try:
        for s in range(0, len(windows), chunk):
            model(windows[s: s + chunk, :-1])
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(a) for a in acc]
