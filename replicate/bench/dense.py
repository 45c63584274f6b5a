"""Dense decoder benchmark: our decoder against ``transformers.LlamaForCausalLM``, and model FLOP utilisation.

``python -m replicate.bench dense [--config tsl_small lbpe_small] [--rounds R] [--steps K] [--out results/benchmarks/dense_cpu.csv]``

1. Speed. The same configuration for both (the project's ``small`` decoders as the papers train them:
   ``tsl_small``, E1 of Temporal Scaling Law: d 192, 3 layers, 3 heads, SwiGLU 512, vocabulary 2,048, batch 8 x 256
   tokens; ``lbpe_small``, LBPE's LM comparison: d 128, 4 layers, 4 heads, SwiGLU 344, vocabulary 4,096, batch
   32 x 128), fp32, the machine's threads, identical weights. One training step is forward, next-token cross-entropy, backward, gradient clipping
   and AdamW (``foreach``), exactly what ``replicate.models.lm.CausalLM`` runs under Lightning (ours: the LM head
   fused with the loss, ``Decoder.loss``; transformers: logits, then ``F.cross_entropy``). The two models are
   timed side by side in one process, alternating ``K`` steps of one with ``K`` steps of the other for ``R``
   rounds, so a noisy neighbour on the machine slows both; tokens/s are medians over rounds, the speed ratio is
   the median of the per-round ratios (each round's pair measured back to back). The 1-minute load average is
   recorded next to the numbers: on a shared machine, read them with it.
2. Model FLOP utilisation (MFU). Achieved FLOP/s of our training step over the FLOP/s of a large fp32 matrix
   product (2048 x 2048 x 2048) measured between the rounds of the same run. Model FLOPs per token, training
   = 3 x forward (PaLM, Chowdhery et al. 2022, App. B):
       6 * N_matmul                       every weight matrix (QKV, output, gate/up/down, LM head)
     + 12 * n_layers * d_model * T        attention scores Q K^T and the weighted sum A V (causal mask not subtracted)
   Embedding lookups, norms, softmax, activations and the optimiser are not counted (they are memory-bound work
   that MFU, by its definition, charges as overhead).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from replicate.models.decoder import Decoder, DecoderConfig, from_llama_state_dict

# The project's `small` decoders: (model, batch, seq_len) as the papers train them at `small`.
CONFIGS = {
    # Temporal Scaling Law, E1 (replicate/papers/temporal_scaling_law.py)
    "tsl_small": (DecoderConfig(vocab_size=2048, d_model=192, n_layers=3, n_heads=3, d_ff=512, max_seq_len=256), 8, 256),
    # LBPE, the LM comparison (replicate/papers/lbpe.py): a larger vocabulary, so the LM head weighs more
    "lbpe_small": (DecoderConfig(vocab_size=4096, d_model=128, n_layers=4, n_heads=4, d_ff=344, max_seq_len=128), 32,
                   128),
}
SMALL, BATCH, SEQ_LEN = CONFIGS["tsl_small"]


def hf_llama(cfg: DecoderConfig):
    """``LlamaForCausalLM`` of the same configuration (SDPA attention, fp32, no biases, untied)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                         num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                         num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.max_seq_len,
                         rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
                         attention_bias=False, mlp_bias=False, attn_implementation="sdpa", use_cache=False)
    return LlamaForCausalLM(hf_cfg)


def model_flops_per_token(cfg: DecoderConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 * (every weight matrix) + 12 * n_layers * d_model * seq_len (attention)."""
    d, hd = cfg.d_model, cfg.head_dim
    qkv = d * (cfg.n_heads + 2 * cfg.kv_heads) * hd
    per_layer = qkv + cfg.n_heads * hd * d + 3 * d * cfg.d_ff
    n_matmul = cfg.n_layers * per_layer + d * cfg.vocab_size
    return 6 * n_matmul + 12 * cfg.n_layers * d * seq_len


class _Step:
    """One training step of ``model`` (ours or HF): forward, CE loss, backward, clip, AdamW."""

    def __init__(self, model, loss_of):
        self.model, self.loss_of = model, loss_of
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)

    def __call__(self, batch_BT1):
        loss = self.loss_of(self.model, batch_BT1[:, :-1], batch_BT1[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()


def _hf_loss(model, x, y):
    return F.cross_entropy(model(input_ids=x, use_cache=False).logits.flatten(0, 1).float(), y.flatten())


def matmul_flops(n: int = 2048, reps: int = 3) -> float:
    """Best FLOP/s of an ``n x n @ n x n`` fp32 product (the attainable peak of this CPU for dense matmul)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _time(step, batches, k: int) -> float:
    t = time.perf_counter()
    for i in range(k):
        step(batches[i % len(batches)])
    return time.perf_counter() - t


def run(cfg: DecoderConfig = SMALL, batch: int = BATCH, seq_len: int = SEQ_LEN, rounds: int = 7, steps: int = 5,
        warmup: int = 3, log=print, config_name: str = "tsl_small") -> list[dict]:
    """Measure; return one row per implementation plus the matmul peak (see the module docstring)."""
    torch.manual_seed(0)
    ours = Decoder(cfg)
    hf = hf_llama(cfg)
    from_llama_state_dict(ours, hf.state_dict())  # identical weights
    ours.train(), hf.train()
    impls = {
        "ours": _Step(ours, lambda m, x, y: m.loss(x, y)[0]),  # what CausalLM.training_step runs
        "transformers_llama": _Step(hf, _hf_loss),
    }
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=g) for _ in range(4)]
    for step in impls.values():
        _time(step, batches, warmup)
    tokens = batch * seq_len * steps
    tps: dict[str, list[float]] = {name: [] for name in impls}
    peaks = []
    for r in range(rounds):
        order = list(impls) if r % 2 == 0 else list(impls)[::-1]  # alternate which goes first
        for name in order:
            tps[name].append(tokens / _time(impls[name], batches, steps))
        peaks.append(matmul_flops())
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {tps[n][-1]:,.0f} tok/s" for n in impls)
            + f", matmul {peaks[-1] / 1e9:.1f} GFLOP/s")
    fpt = model_flops_per_token(cfg, seq_len)
    peak = statistics.median(peaks)
    med = {n: statistics.median(v) for n, v in tps.items()}
    # The speed ratio is paired by round (both measured back to back), then the median over rounds.
    ratio = {n: statistics.median(a / b for a, b in zip(tps[n], tps["transformers_llama"])) for n in impls}
    common = {
        "d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_ff": cfg.d_ff,
        "vocab_size": cfg.vocab_size, "batch": batch, "seq_len": seq_len, "dtype": "fp32",
        "threads": torch.get_num_threads(), "rounds": rounds, "steps_per_round": steps,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    rows = []
    for impl in impls:
        achieved = med[impl] * fpt
        rows.append({
            "config": config_name,
            "impl": impl,
            "tokens_per_s": round(med[impl], 1),
            "tokens_per_s_min": round(min(tps[impl]), 1),
            "tokens_per_s_max": round(max(tps[impl]), 1),
            "speedup_vs_transformers": round(ratio[impl], 3),
            "step_ms": round(1000 * batch * seq_len / med[impl], 2),
            "model_flops_per_token": fpt,
            "achieved_gflops": round(achieved / 1e9, 2),
            "matmul_peak_gflops": round(peak / 1e9, 2),
            "mfu": round(achieved / peak, 3),
            **common,
        })
    return rows


def write_csv(rows: list[dict], out: Path) -> Path:
    import pandas as pd

    from replicate.io import atomic_write

    df = pd.DataFrame(rows)
    atomic_write(out, lambda p: df.to_csv(p, index=False))
    return out


def main(argv: list[str] | None = None) -> int:
    from replicate.paths import results_dir

    p = argparse.ArgumentParser(prog="python -m replicate.bench dense", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (median reported)")
    p.add_argument("--steps", type=int, default=5, help="training steps per implementation per round")
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                   help="torch thread counts to measure, one table block each (default: the machine's, %(default)s)")
    p.add_argument("--config", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                   help="which small decoders (default: all)")
    p.add_argument("--out", type=Path, default=None, help="CSV path (default results/benchmarks/dense_cpu.csv)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or min(args.threads) < 1:
        print("error: --rounds, --steps and --threads must be >= 1", file=sys.stderr)
        return 2
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name in args.config:
            cfg, batch, seq_len = CONFIGS[name]
            print(f"{name}, {threads} thread(s):", file=sys.stderr)
            rows += run(cfg, batch, seq_len, rounds=args.rounds, steps=args.steps, config_name=name,
                        log=lambda s: print("  " + s, file=sys.stderr))
    out = write_csv(rows, args.out or results_dir() / "benchmarks" / "dense_cpu.csv")
    for r in rows:
        print(f"{r['config']:10s} {r['threads']} thr  {r['impl']:20s} {r['tokens_per_s']:>10,.0f} tok/s  x{r['speedup_vs_transformers']:.2f} vs transformers"
              f"  {r['achieved_gflops']:.1f} GFLOP/s = {100 * r['mfu']:.0f}% of matmul {r['matmul_peak_gflops']:.1f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
