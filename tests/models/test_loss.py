"""The fused LM-head cross-entropy equals ``F.cross_entropy(h @ W.T, y)``: value and both gradients."""

import pytest
import torch
import torch.nn.functional as F

from replicate.models.decoder import Decoder, DecoderConfig
from replicate.models.loss import linear_cross_entropy, weighted_linear_cross_entropy


def _data(N=97, d=16, V=53, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, d, generator=g, dtype=dtype)
    w = torch.randn(V, d, generator=g, dtype=dtype) * 0.3
    y = torch.randint(0, V, (N,), generator=g)
    return h, w, y


def _grads(fn, h, w, y, scale=1.0):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = fn(h, w, y)
    (scale * loss).backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk", [1, 7, 97, 512])
@pytest.mark.parametrize("scale", [1.0, -2.5])
def test_equals_cross_entropy_fp64(chunk, scale):
    h, w, y = _data()
    ref = _grads(lambda h, w, y: F.cross_entropy(h @ w.T, y), h, w, y, scale)
    got = _grads(lambda h, w, y: linear_cross_entropy(h, w, y, chunk=chunk), h, w, y, scale)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)


def test_fp32_close_and_no_grad_path():
    h, w, y = _data(dtype=torch.float32)
    ref = F.cross_entropy(h @ w.T, y)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, y, chunk=10), ref)
    torch.testing.assert_close(linear_cross_entropy(h, w, y), ref)  # no input needs a gradient


def test_bf16_autocast_close():
    h, w, y = _data(dtype=torch.float32)
    ref = _grads(lambda h, w, y: F.cross_entropy(h @ w.T, y), h, w, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _grads(lambda h, w, y: linear_cross_entropy(h, w, y, chunk=16), h, w, y)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-3)


def test_tied_weight_gradients_accumulate():
    """A tied head (W also used as the embedding) receives both gradients, as with autograd."""
    h, w, y = _data()
    ids = torch.randint(0, w.shape[0], (h.shape[0],))

    def run(loss_fn):
        w_ = w.clone().requires_grad_()
        x = h + F.embedding(ids, w_)
        loss_fn(x, w_, y).backward()
        return w_.grad

    torch.testing.assert_close(run(linear_cross_entropy), run(lambda x, w, y: F.cross_entropy(x @ w.T, y)))


@pytest.mark.parametrize("tie", [False, True])
def test_decoder_loss_equals_logits_loss(tie):
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=67, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=16, tie_embeddings=tie)
    m = Decoder(cfg).double()
    ids = torch.randint(0, 67, (3, 17))
    loss, aux = m.loss(ids[:, :-1], ids[:, 1:])
    loss.backward()
    g_fused = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    ref = F.cross_entropy(m(ids[:, :-1]).logits.flatten(0, 1), ids[:, 1:].flatten())
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-14)
    for n, p in m.named_parameters():
        torch.testing.assert_close(g_fused[n], p.grad, rtol=1e-10, atol=1e-13, msg=n)
    assert aux == {}


def test_bad_shapes_one_line():
    h, w, y = _data()
    with pytest.raises(ValueError, match="need h"):
        linear_cross_entropy(h[None], w, y)
    with pytest.raises(ValueError, match="chunk"):
        linear_cross_entropy(h, w, y, chunk=0)


def test_weighted_equals_weighted_cross_entropy_fp64():
    """Σ a ℓ / Σ a, value and both gradients; weight-0 tokens do not count; bad weights are refused."""
    h, w, y = _data()
    a = torch.tensor([0.0, 1.0, 10.0, 2.5], dtype=torch.float64)[torch.arange(len(y)) % 4]

    def ref(h, w, y):
        nll = F.cross_entropy(h @ w.T, y, reduction="none")
        return (a * nll).sum() / a.sum()

    want = _grads(ref, h, w, y, 1.5)
    got = _grads(lambda h, w, y: weighted_linear_cross_entropy(h, w, y, a, chunk=7), h, w, y, 1.5)
    for x, z in zip(want, got):
        torch.testing.assert_close(z, x, rtol=1e-12, atol=1e-14)
    assert got[1][a == 0].abs().max() == 0  # a weight-0 token gets no gradient
    ones = weighted_linear_cross_entropy(h, w, y, torch.ones_like(a))
    torch.testing.assert_close(ones, F.cross_entropy(h @ w.T, y))
    for bad, msg in ((-a, ">= 0"), (a[:-1], "shape"), (torch.zeros_like(a), "positive"),
                     (torch.arange(len(y), dtype=torch.float64), "distinct")):
        with pytest.raises(ValueError, match=msg):
            weighted_linear_cross_entropy(h, w, y, bad)
