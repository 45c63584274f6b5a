"""Fused router: Triton (interpreter on CPU) vs the PyTorch reference, forward and gradient w.r.t. the logits.

Covered: softmax / masked softmax / sigmoid-threshold modes, renormalization on and off, T=1, T below and
above a tile, prime and single expert counts, k=1 and k=E, tokens with one or zero visible experts; indices
and counts exactly equal; exact tie-breaking (lower expert id first); MaskMoE's properties (weight exactly 1
for a single visible expert, no gradient to masked logits); the reference against a per-token loop.
"""

import pytest
import torch

from kernel_cases import DEVICE
from replicate.kernels.router.reference import route_reference
from replicate.kernels.router.triton import route_triton
from replicate.kernels.testing import assert_close

CASES = [
    # (T, E, K, mode, renormalize, masked)
    pytest.param(1, 4, 2, "softmax", True, False, id="T1-E4-K2-softmax-renorm"),
    pytest.param(7, 5, 2, "softmax", False, False, id="T7-E5-K2-softmax"),
    pytest.param(9, 1, 1, "softmax", False, False, id="T9-E1-K1-softmax"),
    pytest.param(11, 3, 3, "softmax", True, False, id="T11-E3-K3-K_equals_E-renorm"),
    pytest.param(70, 13, 1, "softmax", False, False, id="T70-E13-K1-two_programs"),
    pytest.param(23, 7, 2, "softmax", True, True, id="T23-E7-K2-masked-renorm"),
    pytest.param(19, 6, 1, "softmax", False, True, id="T19-E6-K1-masked"),
    pytest.param(17, 5, 5, "softmax", False, True, id="T17-E5-K5-masked-K_equals_E"),
    pytest.param(15, 8, 8, "sigmoid", False, False, id="T15-E8-K8-sigmoid"),
    pytest.param(13, 7, 3, "sigmoid", True, True, id="T13-E7-K3-sigmoid-masked-renorm"),
]


def _inputs(T, E, masked, mode, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, E, generator=g) * 2
    if mode == "sigmoid":  # keep gates away from the threshold 0.5 (logit 0): no ulp-level coin flips
        logits = torch.where(logits.abs() < 0.05, logits.sign() * 0.05 + logits, logits)
    mask = None
    if masked:
        mask = torch.rand(T, E, generator=g) < 0.5
        mask[0] = False  # a token with no visible expert
        mask[1 % T, :] = False
        mask[1 % T, E - 1] = True  # a token with exactly one visible expert
        if T > 2:
            mask[2] = True  # a token that sees every expert
    return logits.to(DEVICE), (mask.to(DEVICE) if mask is not None else None)


@pytest.mark.parametrize("T, E, K, mode, renormalize, masked", CASES)
def test_router_triton_matches_reference(T, E, K, mode, renormalize, masked):
    logits, mask = _inputs(T, E, masked, mode)
    kw = dict(mode=mode, renormalize=renormalize, mask_TE=mask)
    z_ref = logits.clone().requires_grad_()
    z_tri = logits.clone().requires_grad_()
    idx_r, w_r, p_r, c_r = route_reference(z_ref, K, **kw)
    idx_t, w_t, p_t, c_t = route_triton(z_tri, K, **kw)
    assert torch.equal(idx_t, idx_r)
    assert torch.equal(c_t, c_r)
    assert idx_t.dtype == torch.int64 and c_t.dtype == torch.int64
    assert_close("topk_w", w_r, w_t)
    assert_close("probs", p_r, p_t)
    gw, gp = torch.randn_like(w_r), torch.randn_like(p_r)
    (d_ref,) = torch.autograd.grad((w_r * gw).sum() + (p_r * gp).sum(), z_ref)
    (d_tri,) = torch.autograd.grad((w_t * gw).sum() + (p_t * gp).sum(), z_tri)
    assert_close("dlogits", d_ref, d_tri, "bwd")
    # each path alone (only the weights / only the probabilities feed the loss)
    for upstream in ("w", "p"):
        z_ref.grad = z_tri.grad = None
        out_r, out_t = route_reference(z_ref, K, **kw), route_triton(z_tri, K, **kw)
        pick = (lambda o: (o[1] * gw).sum()) if upstream == "w" else (lambda o: (o[2] * gp).sum())
        (a,) = torch.autograd.grad(pick(out_r), z_ref)
        (b,) = torch.autograd.grad(pick(out_t), z_tri)
        assert_close(f"dlogits via {upstream}", a, b, "bwd")


@pytest.mark.parametrize("T, E, K, mode, renormalize, masked", CASES)
def test_router_reference_matches_per_token_loop(T, E, K, mode, renormalize, masked):
    """The vectorized reference against the definition, one token at a time."""
    logits, mask = _inputs(T, E, masked, mode)
    idx, w, p, counts = route_reference(logits, K, mode=mode, renormalize=renormalize, mask_TE=mask)
    expect_counts = torch.zeros(E, dtype=torch.int64)
    for t in range(T):
        z = [float(v) + (0.0 if mask is None or mask[t, e] else -1e9) for e, v in enumerate(logits[t])]
        zt = torch.tensor(z)
        pt = torch.softmax(zt, 0) if mode == "softmax" else torch.sigmoid(zt)
        ranked = sorted(range(E), key=lambda e: (-z[e], e))[:K]
        chosen = [e for e in ranked if (mask is None or mask[t, e]) and (mode == "softmax" or pt[e] > 0.5)]
        ws = [float(pt[e]) for e in chosen]
        if renormalize and ws:
            s = max(sum(ws), torch.finfo(torch.float32).eps)
            ws = [v / s for v in ws]
        got = [int(i) for i in idx[t] if i >= 0]
        assert got == chosen, f"token {t}"
        assert idx[t, len(chosen):].eq(-1).all() and w[t, len(chosen):].eq(0).all()
        torch.testing.assert_close(w[t, : len(chosen)], torch.tensor(ws), atol=1e-6, rtol=1e-5)
        for e in chosen:
            expect_counts[e] += 1
    assert torch.equal(counts, expect_counts)


@pytest.mark.parametrize("fn", [route_reference, route_triton], ids=["reference", "triton"])
def test_router_ties_go_to_lower_expert_id(fn):
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0]], device=DEVICE)
    idx, w, _, counts = fn(logits, 3)
    assert idx.tolist() == [[1, 2, 4], [0, 1, 2]]
    assert counts.tolist() == [1, 2, 2, 0, 1]


@pytest.mark.parametrize("fn", [route_reference, route_triton], ids=["reference", "triton"])
def test_masked_router_single_visible_expert_has_weight_one_and_no_router_gradient(fn):
    T, E = 6, 5
    logits = torch.randn(T, E, device=DEVICE, requires_grad=True)
    mask = torch.zeros(T, E, dtype=torch.bool, device=DEVICE)
    mask[torch.arange(T), torch.arange(T) % E] = True  # exactly one visible expert per token
    mask[5, :] = True  # except the last token, which sees all
    idx, w, p, _ = fn(logits, 1, mask_TE=mask)
    assert torch.equal(idx[:5, 0], torch.arange(5, device=DEVICE) % E)
    assert torch.equal(w[:5, 0], torch.ones(5, device=DEVICE))  # exactly 1, not approximately
    (g,) = torch.autograd.grad((w * torch.randn_like(w)).sum() + (p * torch.randn_like(p)).sum(), logits)
    assert torch.equal(g[:5], torch.zeros_like(g[:5]))  # fixed routing: nothing to learn
    assert g[5].abs().sum() > 0
    # masked entries of a partly visible row get exactly zero gradient too
    mask2 = torch.rand(T, E, device=DEVICE) < 0.5
    mask2[:, 0] = True
    idx, w, p, _ = fn(logits, 2, mask_TE=mask2, renormalize=True)
    (g,) = torch.autograd.grad((w * torch.randn_like(w)).sum() + (p * torch.randn_like(p)).sum(), logits)
    assert torch.equal(g[~mask2], torch.zeros_like(g[~mask2]))


def test_router_rejects_bad_arguments():
    z = torch.randn(3, 4)
    for fn in (route_reference, route_triton):
        with pytest.raises(ValueError, match="k=5"):
            fn(z, 5)
        with pytest.raises(ValueError, match="mode"):
            fn(z, 1, mode="relu")
