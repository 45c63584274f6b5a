"""Next-token cross-entropy fused with the LM head, computed in row chunks (as Liger-Kernel's
``fused_linear_cross_entropy``, here in plain PyTorch).

For hidden states h (N x d), LM-head weight W (V x d) and targets y (N):

    z_i = W h_i,   lse_i = log Σ_v exp z_iv,   L = (1/N) Σ_i (lse_i - z_{i,y_i})
    ∂L/∂z_i = (softmax(z_i) - onehot(y_i)) / N,   ∂L/∂h = (∂L/∂z) W,   ∂L/∂W = (∂L/∂z)^T h

The forward pass computes the loss and both gradients chunk by chunk (``chunk`` rows of logits at a time, in place:
the N x V logits never exist whole, and neither the log-softmax output nor its backward is materialised); the
backward pass only scales them by the incoming gradient. Numerically it is ``F.cross_entropy(h @ W.T, y)`` up to
float rounding (tested). Per chunk the softmax takes one exp pass, in place: m = max z, e = exp(z - m) (in place),
lse = m + log Σ e, softmax = e / Σ e (in place). Measured on this project's 2-core CPU, fp32, forward + backward
of head and loss, medians of 15: 4,096 tokens x d 128 x V 4,096 (LBPE's ``small``): 252-278 ms -> 114-128 ms;
2,048 x 192 x 2,048 (Temporal Scaling Law's): 49-50 -> 37-45 ms (chunk 512; 256 and 1,024 were slower). Under
autocast the two products run in the autocast dtype and the softmax in fp32.
"""

from __future__ import annotations

import torch

CHUNK_ROWS = 512  # rows of logits per chunk (measured best of 128..2048 on the 2-core CPU, V 2K-4K)


def _chunks(h_ND, w_VD, y_N, chunk: int, with_grad: bool):
    """Loss sum over rows and, if ``with_grad``, N * dL/dh and N * dL/dW (fp32, or fp64 for fp64 inputs)."""
    N = h_ND.shape[0]
    dev = h_ND.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h_ND.dtype
    acc = torch.promote_types(dtype, torch.float32)  # softmax and accumulators: fp32 (fp64 for fp64 inputs)
    with torch.autocast(dev, enabled=False):
        h, w = h_ND.to(dtype), w_VD.to(dtype)
        loss = torch.zeros((), dtype=acc, device=h_ND.device)
        grad_h = torch.empty(h_ND.shape, dtype=acc, device=h_ND.device) if with_grad else None
        grad_w = torch.zeros(w_VD.shape, dtype=acc, device=w_VD.device) if with_grad else None
        for s in range(0, N, chunk):
            h_c, y_c = h[s : s + chunk], y_N[s : s + chunk]
            z = (h_c @ w.T).to(acc)  # (n, V) logits of this chunk
            z_y = z.gather(1, y_c[:, None]).squeeze(1)
            m = z.amax(dim=-1, keepdim=True)
            z.sub_(m).exp_()  # one exp pass, in place: exp(z - max)
            total = z.sum(dim=-1)
            loss += (m.squeeze(1) + total.log() - z_y).sum()  # lse - z_y
            if not with_grad:
                continue
            z.div_(total[:, None])  # softmax
            z[torch.arange(len(y_c), device=z.device), y_c] -= 1.0  # softmax - onehot  (= N * dL/dz)
            z = z.to(dtype)
            grad_h[s : s + chunk] = z @ w
            if dtype == acc:
                grad_w.addmm_(z.T, h_c)
            else:
                grad_w += (z.T @ h_c).to(acc)
    return loss, grad_h, grad_w


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_ND, w_VD, y_N, chunk: int):
        loss, grad_h, grad_w = _chunks(h_ND, w_VD, y_N, chunk, with_grad=True)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.n, ctx.dtypes = h_ND.shape[0], (h_ND.dtype, w_VD.dtype)
        return loss / ctx.n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_out / ctx.n
        return (grad_h * scale).to(ctx.dtypes[0]), (grad_w * scale).to(ctx.dtypes[1]), None, None


def linear_cross_entropy(h_ND: torch.Tensor, w_VD: torch.Tensor, y_N: torch.Tensor,
                         chunk: int = CHUNK_ROWS) -> torch.Tensor:
    """Mean next-token cross-entropy of ``h_ND @ w_VD.T`` against ``y_N`` (fp32 scalar), without the full logits.

    Only first derivatives are supported (the gradients are formed in the forward pass)."""
    if h_ND.dim() != 2 or w_VD.dim() != 2 or y_N.dim() != 1 or h_ND.shape[0] != y_N.shape[0]:
        raise ValueError(f"linear_cross_entropy: need h (N, d), w (V, d), y (N); got {tuple(h_ND.shape)}, "
                         f"{tuple(w_VD.shape)}, {tuple(y_N.shape)}")
    if h_ND.shape[0] == 0:
        raise ValueError("linear_cross_entropy: no tokens (N = 0)")
    if chunk < 1:
        raise ValueError(f"chunk: must be >= 1, got {chunk}")
    if torch.is_grad_enabled() and (h_ND.requires_grad or w_VD.requires_grad):
        return _LinearCrossEntropy.apply(h_ND, w_VD, y_N, chunk)
    return _chunks(h_ND, w_VD, y_N, chunk, with_grad=False)[0] / h_ND.shape[0]


def weighted_linear_cross_entropy(h_ND: torch.Tensor, w_VD: torch.Tensor, y_N: torch.Tensor, weight_N: torch.Tensor,
                                  chunk: int = CHUNK_ROWS) -> torch.Tensor:
    """Weighted mean next-token cross-entropy Σ_i a_i ℓ_i / Σ_i a_i (a_i = ``weight_N`` >= 0; a token of weight 0
    does not count), without the full logits: one :func:`linear_cross_entropy` per distinct positive weight (meant
    for a few: e.g. 1 on text and an up-weight on answer tokens), combined with the shares a_v n_v / Σ a n."""
    if weight_N.shape != y_N.shape:
        raise ValueError(f"weight_N: shape {tuple(weight_N.shape)} must equal the targets' {tuple(y_N.shape)}")
    if not bool(torch.isfinite(weight_N).all()) or bool((weight_N < 0).any()):
        raise ValueError("weight_N: weights must be finite and >= 0")
    values = torch.unique(weight_N[weight_N > 0])
    if len(values) == 0:
        raise ValueError("weight_N: no token has a positive weight")
    if len(values) > 16:
        raise ValueError(f"weight_N: at most 16 distinct weights (one loss pass each), got {len(values)}")
    parts, shares = [], []
    for v in values.tolist():
        sel = weight_N == v
        parts.append(linear_cross_entropy(h_ND[sel], w_VD, y_N[sel], chunk))
        shares.append(v * int(sel.sum()))
    total = float(sum(shares))
    return sum(p * (a / total) for p, a in zip(parts, shares))
