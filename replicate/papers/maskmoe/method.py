"""MaskMoE's contribution: a frozen, frequency-dependent routing mask per vocabulary token (spec §3.2-3.3).

Legend: V vocabulary, E experts, T tokens, L MoE layers.

    c(t)      = occurrences of id t in the training split (unseen ids: 0)
    F         = the frequent types (``frequent_types``: top fraction of types | coverage of occurrences | count)
    π_t       = a uniformly random permutation of the E experts per token, from the mask's own generator
    V_t       = V_f if t ∈ F else 1                                   (visible experts of token t)
    m_t[e]    = 0 if e ∈ {π_t(1), ..., π_t(V_t)} else -∞              (``routing_mask``: bool, True = visible)
    p_s       = softmax(W_r h_s + m_{t_s})                            (``replicate.moe.MaskedRouter``, fp32,
    e*_s      = argmax_e p_s[e],   y_s = p_s[e*_s] · E_{e*_s}(h_s)      -1e9 as the finite -∞)

so a rare token (V_t = 1) has p = 1 on its one expert: fixed routing with gate 1 and no gradient to the router
(Hash Layer); a frequent token is routed by the learned router among its V_f experts. The routing itself is the
shared ``MaskedRouter`` (``replicate.moe.routers``); this module builds the mask and places it in the decoder.

The permutation is the one ``replicate.moe.hash_table`` draws from the same seed (``torch.rand(V, E).argsort``), so
the single expert of every rare token *is* the random Hash Layer's expert of that seed, and a frequent token's V_f
experts start with it: with no frequent type the mask equals the hash table exactly (spec §3.6), and the Hash
baseline of a seed routes rare tokens exactly as MaskMoE of that seed does. Masks are drawn from their own
``torch.Generator``, so building one never moves the model's initialisation stream.
"""

from __future__ import annotations

import torch

from replicate.models.context import tensor_ref
from replicate.models.decoder import LayerSpec
from replicate.models.lm import CausalLM, per_token_nll
from replicate.models.probes import capture

RULES = ("types", "coverage", "count")  # how the frequent set F is chosen (spec §3.3 step 2: UNCONFIRMED)


def frequency_order(counts_V: torch.Tensor) -> torch.Tensor:
    """Ids by decreasing training count, ties by increasing id (a stable order: reproducible masks, spec §8)."""
    counts_V = torch.as_tensor(counts_V, dtype=torch.int64)
    ids = torch.arange(counts_V.numel())
    # lexicographic (count desc, id asc): sort by id first (already), then a stable sort by -count
    return ids[torch.sort(-counts_V, stable=True).indices]


def frequent_types(counts_V: torch.Tensor, rule: str = "types", *, fraction: float = 0.1, coverage: float = 0.8,
                   min_count: int = 100) -> torch.Tensor:
    """bool [V]: the frequent set F.

    - ``types``:    the top ``round(fraction * V)`` ids by count (the spec's default, ρ = 0.1 of the vocabulary);
    - ``coverage``: the fewest top ids whose counts cover at least ``coverage`` of all training occurrences;
    - ``count``:    every id with c(t) >= ``min_count``.
    Unseen ids (c = 0) are never frequent under ``coverage`` and ``count``."""
    counts_V = torch.as_tensor(counts_V, dtype=torch.int64)
    V = counts_V.numel()
    if rule not in RULES:
        raise ValueError(f"frequent_rule: {rule!r}; allowed: {', '.join(RULES)}")
    order = frequency_order(counts_V)
    if rule == "count":
        return counts_V >= min_count
    if rule == "types":
        n = round(fraction * V)
    else:
        cum = torch.cumsum(counts_V[order].double(), 0) / max(int(counts_V.sum()), 1)
        n = int(torch.searchsorted(cum, torch.tensor([coverage], dtype=torch.float64)).item()) + 1 if coverage > 0 else 0
        n = min(n, int((counts_V > 0).sum()))
    out = torch.zeros(V, dtype=torch.bool)
    out[order[:n]] = True
    return out


def routing_mask(frequent_V: torch.Tensor, n_experts: int, n_visible: int, seed: int, draw: int = 0) -> torch.Tensor:
    """bool [V, E]: token t sees the first V_t experts of its permutation π_t (V_t = ``n_visible`` if frequent, else
    1). ``draw`` k takes the (k+1)-th matrix of the generator seeded ``seed`` (per-layer masks: draw = MoE layer
    index); draw 0 is the permutation ``hash_table(V, E, k, seed)`` uses."""
    if not 1 <= n_visible <= n_experts:
        raise ValueError(f"n_visible_frequent: {n_visible} must be in [1, n_experts={n_experts}]")
    V = frequent_V.numel()
    g = torch.Generator().manual_seed(seed)
    for _ in range(draw + 1):
        u_VE = torch.rand(V, n_experts, generator=g)
    rank_VE = u_VE.argsort(-1).argsort(-1)  # rank of expert e in π_t: π_t(1) has rank 0
    n_open_V = torch.where(frequent_V, n_visible, 1)  # V_t
    return rank_VE < n_open_V[:, None]  # m_t[e] = 0 (visible) for the first V_t experts of π_t


def layer_masks(frequent_V: torch.Tensor, n_experts: int, n_visible: int, seed: int, n_moe_layers: int,
                per_layer: bool = False) -> list[torch.Tensor]:
    """One mask per MoE layer: the same table for all of them (the authors' code: one vocab x E table at model
    level, spec §3.3 step 4), or independent draws per layer (``per_layer``; layer 0's is the shared one)."""
    return [routing_mask(frequent_V, n_experts, n_visible, seed, draw=j if per_layer else 0)
            for j in range(n_moe_layers)]


def masked_moe_spec(mask_VE: torch.Tensor, d_expert: int, k: int = 1, balance_coef: float = 0.01) -> LayerSpec:
    """The decoder layer part of one MaskMoE layer: the shared ``"moe"`` FFN with the ``MaskedRouter``; the mask
    enters the hashed config by its content hash (``TensorRef``), so a run's key changes exactly when its mask does.
    Load balancing is Switch's loss on the masked probabilities (spec §3.5)."""
    return LayerSpec(ffn="moe", d_ff=d_expert, ffn_kwargs=(
        ("n_experts", mask_VE.shape[1]), ("k", k), ("router", "masked"), ("routing_mask", tensor_ref(mask_VE)),
        ("balance_coef", balance_coef)))


def visible_fraction(mask_VE: torch.Tensor, input_ids: torch.Tensor, experts: torch.Tensor) -> float:
    """Fraction of filled routing slots whose expert the token may see (MaskMoE: exactly 1). ``experts``: [..., K]
    expert ids (-1 = empty slot) at the positions of ``input_ids`` [...]."""
    ids = input_ids.reshape(-1)
    idx = experts.reshape(ids.numel(), -1).long()
    filled = idx >= 0
    ok = mask_VE[ids[:, None].expand_as(idx)[filled], idx[filled]]
    return float(ok.float().mean()) if ok.numel() else 1.0


def one_hot_mask(table_V: torch.Tensor, n_experts: int) -> torch.Tensor:
    """bool [V, E] with exactly one visible expert per token, ``table_V[t]``: fixed routing with gate 1 through the
    ``MaskedRouter`` (the StableMoE proxy's frozen stage; the same LM as a Hash Layer with that table)."""
    return torch.nn.functional.one_hot(table_V.long(), n_experts).bool()


def token_counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """c(t): occurrences of every id in ``ids`` (any shape), int64 [V]."""
    return torch.bincount(torch.as_tensor(ids).reshape(-1).long(), minlength=vocab_size)


def vote_table(counts_VE: torch.Tensor, fallback_V: torch.Tensor) -> torch.Tensor:
    """The StableMoE proxy's frozen assignment: each token id's most frequent top-1 expert in the votes
    (``counts_VE``; ties: the lowest expert id), ``fallback_V`` (a random hash) for ids that got no vote."""
    best_V = counts_VE.argmax(-1)  # argmax returns the first maximum: the lowest id among ties
    return torch.where(counts_VE.sum(-1) > 0, best_V, fallback_V.long())


def balanced_vote_table(counts_VE: torch.Tensor, fallback_V: torch.Tensor, slack: float) -> torch.Tensor:
    """The StableMoE proxy's frozen assignment under a capacity: StableMoE's stage 1 trains its routing with a
    balance loss, and a per-token majority vote of a context-dependent router loses that balance (a frequent type
    split 40/60 between two experts sends all of it to one). Token ids in decreasing voted occurrences (ties: lowest
    id) each take their most-voted expert (ties: lowest id) whose voted load stays within ``(1 + slack)`` x the mean
    load (total votes / E); an id that fits nowhere goes to the least-loaded expert (ties: lowest id); ids without a
    vote: ``fallback_V``. ``slack`` large enough reduces to :func:`vote_table`."""
    occ_V = counts_VE.sum(-1)
    E = counts_VE.shape[-1]
    cap = (1.0 + slack) * float(occ_V.sum()) / E
    table = fallback_V.clone().long()
    load = [0] * E
    order = torch.sort(-occ_V, stable=True).indices  # decreasing count, ties by increasing id
    for t in order[occ_V[order] > 0].tolist():
        n = int(occ_V[t])
        prefs = torch.sort(-counts_VE[t], stable=True).indices.tolist()  # most votes first, ties lowest id
        e = next((e for e in prefs if load[e] + n <= cap), None)
        if e is None:
            e = min(range(E), key=lambda j: (load[j], j))
        table[t] = e
        load[e] += n
    return table


def moved_share(counts_VE: torch.Tensor, table_V: torch.Tensor) -> float:
    """The share of the voted occurrences (``counts_VE``) whose token id ``table_V`` sends elsewhere than its
    majority expert: every occurrence of a reassigned id counts (the table no longer routes that type as the voting
    router did); 0 for :func:`vote_table`'s own table."""
    occ_V = counts_VE.sum(-1)
    moved = table_V.long() != counts_VE.argmax(-1)
    return float(occ_V[moved].sum()) / max(1, int(occ_V.sum()))


class RoutedLM(CausalLM):
    """``CausalLM`` whose evaluation also records the routing of every held-out position: ``evaluate(windows)``
    returns ``{"loss": (W, T) fp32, "correct": (W, T) bool (argmax = target), "expert": (L, W, T) int16,
    "gate": (L, W, T) fp32}`` for the L MoE layers in
    order (top-1 expert and its gate weight; a Hash Layer's gate is 1; a dense model has L = 0). Training is
    ``CausalLM``'s, unchanged; the routing comes from the decoder's ``router`` / ``router_probs`` probes."""

    @torch.no_grad()
    def evaluate(self, data, chunk: int = 16):
        was_training = self.training
        self.eval()
        loss, correct, experts, gates = [], [], [], []
        names = [n for n in ("router", "router_probs")
                 if any(n in getattr(m, "probe_names", ()) for m in self.model.modules())]
        for s in range(0, len(data), chunk):
            w = data[s : s + chunk].to(self.device)
            B, T = w.shape[0], w.shape[1] - 1
            if names:
                with capture(self.model, names) as rec:
                    logits = self.model(w[:, :-1]).logits
                idx = rec.by_layer("router")
                probs = rec.by_layer("router_probs") if "router_probs" in names else {}
                layers = sorted(idx)
                e = [idx[i][0][:, 0].view(B, T) for i in layers]
                g = [probs[i][0].gather(1, idx[i][0][:, :1].clamp(min=0))[:, 0].view(B, T) if i in probs
                     else torch.ones(B, T) for i in layers]
                experts.append(torch.stack(e).to(torch.int16))
                gates.append(torch.stack(g).float())
            else:
                logits = self.model(w[:, :-1]).logits
                experts.append(torch.zeros(0, B, T, dtype=torch.int16))
                gates.append(torch.zeros(0, B, T))
            loss.append(per_token_nll(logits, w[:, 1:]).cpu())
            correct.append((logits.argmax(-1) == w[:, 1:]).cpu())
        self.train(was_training)
        return {"loss": torch.cat(loss), "correct": torch.cat(correct), "expert": torch.cat(experts, 1), "gate": torch.cat(gates, 1)}


def fluctuation(expert_a_LWT: torch.Tensor, expert_b_LWT: torch.Tensor, select_WT: torch.Tensor | None = None) -> float:
    """Routing fluctuation between two checkpoints: the fraction of the selected held-out positions (all MoE
    layers pooled) whose top-1 expert differs."""
    changed = expert_a_LWT != expert_b_LWT
    if select_WT is not None:
        changed = changed[:, select_WT]
    return float(changed.float().mean()) if changed.numel() else float("nan")
