"""HARPE's YaRN and Self-Extend baselines against references computed outside our code.

YaRN (``replicate.models.position``, wired for HARPE by ``method.position_kwargs("yarn", ...)`` plus β_fast /
β_slow in ``experiments.model_config``): its frequencies and its temperature must be those of Hugging Face
``transformers`` (``ROPE_INIT_FUNCTIONS["yarn"]``), the implementation the YaRN baseline claims to follow. We apply
the temperature as transformers does, multiplying cos and sin by ``attention_factor`` (0.1 ln s + 1, so q·k scales
by its square), so the rotated q and k themselves are compared with ``LlamaRotaryEmbedding`` +
``apply_rotary_pos_emb``, at positions up to the extended length; the correction range is truncated (floor / ceil),
transformers' default, and ``truncate=False`` matches theirs too.

Self-Extend (``baselines.SelfExtendAttention``, Jin et al. 2024, Algorithm 1): a 10-token case worked out by hand.
The effective relative position of every (query i, key j) pair is written out as a table (neighbours,
i - j < w: i - j; farther: ⌊i/G⌋ + w - ⌊w/G⌋ - ⌊j/G⌋), and the expected output is computed here with plain torch:
rotate q_i by that relative angle (RoPE scores depend only on the distance), causal softmax, weighted sum of v.
Rows past the window mix the two score matrices; the output there must differ from both plain RoPE attention and
all-grouped attention, so using one matrix for all keys, or swapping the two, fails; and the case is sensitive to
every entry of the table (any one off by one moves the output far beyond the tolerance). Further (w, G) and
grouped-query heads are checked against the same reference. CPU only, about a second of compute."""

import math

import pytest
import torch

from replicate.models.context import ForwardContext
from replicate.models.decoder import DecoderConfig
from replicate.models.position import POSITION, RoPE, yarn_attention_factor, yarn_inv_freq
from replicate.papers import resolve_config
from replicate.papers.harpe.baselines import SelfExtendAttention
import replicate.papers.harpe.experiments as X
import replicate.papers.harpe.method as M

PAPER = "harpe"

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb  # noqa: E402


# ------------------------------------------------------------------------------------------------ YaRN


def _hf_config(head_dim, base, factor, orig_len, beta_fast=32.0, beta_slow=1.0, truncate=None):
    """A Llama config with YaRN; max_position_embeddings = s · L (the ratio transformers expects, no warning)."""
    rp = {"rope_type": "yarn", "rope_theta": float(base), "factor": float(factor),
          "original_max_position_embeddings": int(orig_len), "beta_fast": float(beta_fast),
          "beta_slow": float(beta_slow)}
    if truncate is not None:
        rp["truncate"] = truncate
    return LlamaConfig(hidden_size=2 * head_dim, num_attention_heads=2, head_dim=head_dim,
                       max_position_embeddings=int(factor * orig_len), rope_parameters=rp)


def _ours(head_dim, base, factor, orig_len, beta_fast=32.0, beta_slow=1.0) -> RoPE:
    """Our YaRN position part, built the way HARPE's arm "yarn" builds it."""
    kw = M.position_kwargs("yarn", factor=factor, short_len=orig_len) + (("beta_fast", beta_fast),
                                                                         ("beta_slow", beta_slow))
    cfg = DecoderConfig(vocab_size=8, d_model=2 * head_dim, n_layers=1, n_heads=2, d_ff=8, rope_theta=base,
                        max_seq_len=int(factor * orig_len), position_kwargs=kw)
    return POSITION[cfg.position](cfg, **dict(cfg.position_kwargs))


SETTINGS = [(32, 1e4, 8, 128),  # HARPE small: head_dim 32, 128 -> 1024
            (64, 1e4, 4, 4096), (64, 1e4, 8, 128), (32, 1e4, 4, 4096),
            (128, 1e4, 32, 4096),  # the paper's scale: LLaMA-2 head_dim, 4k -> 128k
            (32, 5e5, 16, 2048)]


@pytest.mark.parametrize("head_dim,base,factor,orig_len", SETTINGS)
def test_yarn_frequencies_and_temperature_equal_transformers(head_dim, base, factor, orig_len):
    inv_hf, att_hf = ROPE_INIT_FUNCTIONS["yarn"](_hf_config(head_dim, base, factor, orig_len), "cpu")
    pos = _ours(head_dim, base, factor, orig_len)
    torch.testing.assert_close(pos.inv_freq, inv_hf, rtol=1e-6, atol=0)  # (in fact bit for bit)
    assert pos.attention_scaling == pytest.approx(att_hf, rel=1e-12)
    assert att_hf == pytest.approx(0.1 * math.log(factor) + 1, rel=1e-12)
    # YaRN really changed something: the lowest frequencies are interpolated (θ / s), the highest kept
    plain = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    assert pos.inv_freq[0].item() == pytest.approx(1.0)
    assert pos.inv_freq[-1].item() == pytest.approx(plain[-1].item() / factor, rel=1e-5)


@pytest.mark.parametrize("head_dim,base,factor,orig_len", [SETTINGS[0], SETTINGS[1], SETTINGS[4]])
def test_yarn_rotated_queries_and_keys_equal_transformers(head_dim, base, factor, orig_len):
    """The whole rotation, temperature included (transformers scales cos and sin by attention_factor, as we do)."""
    hf_cfg = _hf_config(head_dim, base, factor, orig_len)
    rot = LlamaRotaryEmbedding(hf_cfg)
    pos = _ours(head_dim, base, factor, orig_len)
    L = int(factor * orig_len)
    ids = torch.tensor([0, 1, 7, orig_len - 1, orig_len, orig_len + 13, L // 2 + 3, L - 1])
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, len(ids), head_dim, generator=g)
    k = torch.randn(1, 2, len(ids), head_dim, generator=g)
    cos, sin = rot(q, ids[None])
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin)
    q_us, k_us = pos(q, k, ForwardContext(position_ids=ids))
    torch.testing.assert_close(q_us, q_hf, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k_us, k_hf, rtol=1e-5, atol=1e-5)
    # the temperature enters the score as its square: q·k at distance 0 is mscale² |q|·|k| cos 0 for q = k
    s = yarn_attention_factor(factor)
    qq, _ = pos(q, None, ForwardContext(position_ids=ids))
    torch.testing.assert_close((qq * qq).sum(-1), s**2 * (q * q).sum(-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head_dim,base,factor,orig_len", [(32, 1e4, 8, 128), (64, 1e4, 4, 4096)])
def test_yarn_untruncated_correction_range_equals_transformers(head_dim, base, factor, orig_len):
    """transformers' ``truncate=False`` (the range ends left fractional) is our ``truncate=False``; it differs from
    the truncated default, so the option is not silently ignored by either side."""
    ours_t = yarn_inv_freq(base, head_dim, factor, orig_len, truncate=True)
    ours_f = yarn_inv_freq(base, head_dim, factor, orig_len, truncate=False)
    hf_t, _ = ROPE_INIT_FUNCTIONS["yarn"](_hf_config(head_dim, base, factor, orig_len, truncate=True), "cpu")
    hf_f, _ = ROPE_INIT_FUNCTIONS["yarn"](_hf_config(head_dim, base, factor, orig_len, truncate=False), "cpu")
    torch.testing.assert_close(ours_t, hf_t, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours_f, hf_f, rtol=1e-6, atol=0)
    assert not torch.allclose(ours_t, ours_f, rtol=1e-3)


@pytest.mark.parametrize("betas", [{}, {"yarn_beta_fast": 4.0, "yarn_beta_slow": 2.0}])
def test_harpe_yarn_arm_is_transformers_yarn(betas):
    """The arm as the experiments build it (``model_config``, the ``small`` scale: 128 -> 1024, head_dim 32), with
    the default β and with other β (at this scale they move the ramp: the config's β reach the frequencies)."""
    cfg = resolve_config(PAPER, "small", **betas)
    dcfg = X.model_config(cfg, 64, "yarn", None)
    assert dcfg.position == "rope" and dict(dcfg.position_kwargs)["scaling"] == "yarn"
    pos = POSITION[dcfg.position](dcfg, **dict(dcfg.position_kwargs))
    hf = _hf_config(cfg.head_dim, cfg.rope_theta, cfg.factor, cfg.seq_len, cfg.yarn_beta_fast, cfg.yarn_beta_slow)
    inv_hf, att_hf = ROPE_INIT_FUNCTIONS["yarn"](hf, "cpu")
    torch.testing.assert_close(pos.inv_freq, inv_hf, rtol=1e-6, atol=0)
    assert pos.attention_scaling == pytest.approx(att_hf, rel=1e-12)
    if betas:
        default, _ = ROPE_INIT_FUNCTIONS["yarn"](_hf_config(cfg.head_dim, cfg.rope_theta, cfg.factor, cfg.seq_len),
                                                 "cpu")
        assert not torch.allclose(pos.inv_freq, default, rtol=1e-3)


# ----------------------------------------------------------------------------------------- Self-Extend

# effective relative positions of a 10-token sequence, w = 3, G = 2, worked out by hand (row i = query, column
# j = key, -1 = masked): neighbours (i - j < 3) keep i - j; farther pairs get ⌊i/2⌋ + 3 - ⌊3/2⌋ - ⌊j/2⌋, that is
# ⌊i/2⌋ + 2 - ⌊j/2⌋. w = 3 is not a multiple of G, so the boundary (i - j < w, not <=) and the floor in ⌊w/G⌋ both
# show (with G | w the grouped distance at i - j = w is w either way).
REL_W3_G2 = [
    # j: 0   1   2   3   4   5   6   7   8   9
    [0, -1, -1, -1, -1, -1, -1, -1, -1, -1],  # i = 0
    [1, 0, -1, -1, -1, -1, -1, -1, -1, -1],  # i = 1
    [2, 1, 0, -1, -1, -1, -1, -1, -1, -1],  # i = 2
    [3, 2, 1, 0, -1, -1, -1, -1, -1, -1],  # i = 3: ⌊3/2⌋ + 2 - 0 = 3 at j = 0 (continuous with the window)
    [4, 4, 2, 1, 0, -1, -1, -1, -1, -1],  # i = 4: j = 0, 1 -> 2 + 2 - 0 = 4
    [4, 4, 3, 2, 1, 0, -1, -1, -1, -1],  # i = 5: j = 2 -> 2 + 2 - 1 = 3
    [5, 5, 4, 4, 2, 1, 0, -1, -1, -1],  # i = 6: 3 + 2 - ⌊j/2⌋ for j <= 3
    [5, 5, 4, 4, 3, 2, 1, 0, -1, -1],  # i = 7
    [6, 6, 5, 5, 4, 4, 2, 1, 0, -1],  # i = 8: 4 + 2 - ⌊j/2⌋ for j <= 5
    [6, 6, 5, 5, 4, 4, 3, 2, 1, 0],  # i = 9
]


def _relative_positions(T, w, G):
    """The same table from the paper's definition (Algorithm 1: shift = w - w // G, grouped where i - j >= w).
    The authors' eager Llama patch (LongLM ``self_extend_patch/Llama.py``) shifts by w - w / G, a fractional position
    when G does not divide w; its decoding path and Algorithm 1 floor. Every HARPE scale has G | w (w 32, G 2 or 8)."""
    rel = [[-1] * T for _ in range(T)]
    for i in range(T):
        for j in range(i + 1):
            rel[i][j] = i - j if i - j < w else (i // G + w - w // G) - j // G
    return rel


def _rotate(x, angles):
    """RoPE's half-split rotation: [x1 cos - x2 sin, x2 cos + x1 sin] (angles: one per pair)."""
    x1, x2 = x.chunk(2, dim=-1)
    c, s = torch.cos(angles), torch.sin(angles)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def _reference(q, k, v, rel, base=1e4):
    """Attention of one head (q, k, v: (T, d)) where pair (i, j) sits at relative position rel[i][j] (-1: masked):
    s_ij = R(rel_ij θ) q_i · k_j / √d (= q_i at rel_ij against k_j at 0), softmax over j, Σ_j p_ij v_j; float64."""
    T, d = q.shape
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    r = torch.tensor(rel, dtype=torch.float64)  # (T, T)
    q_ij = _rotate(q[:, None, :].expand(T, T, d), r[..., None] * theta)  # q_i rotated for key j: (T, T, d)
    s = (q_ij * k[None, :, :]).sum(-1) / math.sqrt(d)
    s = s.masked_fill(r < 0, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def _self_extend_case(T, w, G, n_heads=1, n_kv=1, head_dim=4, seed=0):
    """Our attention part with fixed random weights (o_proj = identity), its output, and the per-head q, k, v.
    q and k are scaled down (scores O(1)) so that no key's weight is negligible: every pair's position counts."""
    cfg = DecoderConfig(vocab_size=8, d_model=n_heads * head_dim, n_layers=1, n_heads=n_heads, n_kv_heads=n_kv,
                        d_ff=8, max_seq_len=32)
    attn, pos = SelfExtendAttention(cfg, window=w, group=G).double(), RoPE(cfg).double()
    g = torch.Generator().manual_seed(seed)
    D = cfg.d_model
    with torch.no_grad():
        W = torch.randn((n_heads + 2 * n_kv) * head_dim, D, generator=g, dtype=torch.float64)
        W[: (n_heads + n_kv) * head_dim] *= 0.5
        attn.qkv_proj.weight.copy_(W)
        attn.o_proj.weight.copy_(torch.eye(D, dtype=torch.float64))
    x = torch.randn(1, T, D, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = attn(x, pos, ForwardContext()).view(T, n_heads, head_dim)
    q = (x[0] @ W[: n_heads * head_dim].T).view(T, n_heads, head_dim)
    k = (x[0] @ W[n_heads * head_dim : (n_heads + n_kv) * head_dim].T).view(T, n_kv, head_dim)
    v = (x[0] @ W[(n_heads + n_kv) * head_dim :].T).view(T, n_kv, head_dim)
    return y, q, k, v


def test_self_extend_hand_table_is_the_paper_definition():
    assert _relative_positions(10, 3, 2) == REL_W3_G2


def test_self_extend_equals_hand_computed_attention():
    """1 head, head_dim 4, T = 10, w = 3, G = 2: every row against the reference at the hand-written positions."""
    y, q, k, v = _self_extend_case(10, 3, 2)
    expected = _reference(q[:, 0], k[:, 0], v[:, 0], REL_W3_G2)
    torch.testing.assert_close(y[:, 0], expected, rtol=1e-5, atol=1e-5)
    # the merge matters: rows 3.. see keys inside and outside the window, and there the output is neither plain
    # RoPE attention (every pair at i - j; from row 4 on) nor all-grouped attention (every pair at the grouped
    # distance)
    plain = [[i - j if j <= i else -1 for j in range(10)] for i in range(10)]
    grouped = [[(i // 2 + 2) - j // 2 if j <= i else -1 for j in range(10)] for i in range(10)]
    y_plain = _reference(q[:, 0], k[:, 0], v[:, 0], plain)
    y_grouped = _reference(q[:, 0], k[:, 0], v[:, 0], grouped)
    # rows 0-2 lie inside the window; row 3's one far key (j = 0) gets grouped distance 3 = i - j (continuity)
    torch.testing.assert_close(y[:4, 0], y_plain[:4], rtol=1e-5, atol=1e-5)
    for i in range(4, 10):
        assert (y[i, 0] - y_plain[i]).abs().max() > 1e-4, f"row {i}: grouped keys ignored"
    for i in range(3, 10):
        assert (y[i, 0] - y_grouped[i]).abs().max() > 1e-4, f"row {i}: neighbours not at their plain distance"
    # the case pins down every entry of the table: any one position off by one (rows 1..; row 0 has one key) moves
    # the expected output far beyond the tolerance
    for i in range(1, 10):
        for j in range(i + 1):
            for step in (-1, 1):
                rel = [row[:] for row in REL_W3_G2]
                rel[i][j] = max(0, rel[i][j] + step)
                if rel[i][j] != REL_W3_G2[i][j]:
                    moved = (_reference(q[:, 0], k[:, 0], v[:, 0], rel) - expected).abs().max()
                    assert moved > 1e-3, f"entry ({i}, {j}) {step:+d}: the case does not constrain it"


@pytest.mark.parametrize("T,w,G,n_heads,n_kv", [(10, 4, 2, 1, 1), (12, 4, 3, 1, 1), (12, 5, 3, 1, 1),
                                               (10, 3, 2, 4, 2), (10, 3, 2, 2, 1)])
def test_self_extend_equals_reference_other_windows_and_grouped_query_heads(T, w, G, n_heads, n_kv):
    """More (w, G), w not always a multiple of G (w = 5, G = 3: shift w - ⌊w/G⌋ = 4), and grouped-query heads
    (query head h reads KV head h // (n_heads / n_kv))."""
    y, q, k, v = _self_extend_case(T, w, G, n_heads, n_kv, seed=1)
    rel = _relative_positions(T, w, G)
    rep = n_heads // n_kv
    for h in range(n_heads):
        expected = _reference(q[:, h], k[:, h // rep], v[:, h // rep], rel)
        torch.testing.assert_close(y[:, h], expected, rtol=1e-5, atol=1e-5)
