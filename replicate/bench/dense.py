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
3. ``--against REV``: our training step against the decoder of git revision ``REV`` (its ``replicate`` package
   extracted into a temporary directory under another name), same weights, alternating as above; the first step's
   loss and gradients are compared bit for bit. Rows to ``results/benchmarks/dense_vs_revision_cpu.csv``: a refactor
   of the decoder must compute the same numbers at the same speed.
4. ``--parts``: what the new parts a ``small`` run uses cost, on both small decoders (rows to
   ``results/benchmarks/decoder_parts_cpu.csv``, long format): the training step with eager attention (P
   materialised) and with per-head RoPE bases against the standard one (alternating, paired ratios); greedy decoding
   tokens/s with the KV cache, without it (the whole sequence recomputed every step) and with transformers'
   ``generate`` (its own cache), and the cache's bytes per token.
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


def alternate(fns: dict, rounds: int, after_round=lambda r, out: None) -> dict[str, list[float]]:
    """Each function's return value (a measurement) per round, the order alternating round by round (the first one
    first on even rounds), so a noisy neighbour slows both; ``after_round(r, out)`` runs after each round."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            out[name].append(fns[name]())
        after_round(r, out)
    return out


def _rounds(impls: dict, batches, rounds: int, steps: int, warmup: int = 2,
            after_round=lambda r, tps: None) -> dict[str, list[float]]:
    """tokens/s of each step function per round (:func:`alternate`), after ``warmup`` steps each."""
    for step in impls.values():
        _time(step, batches, warmup)
    tokens = batches[0].shape[0] * (batches[0].shape[1] - 1) * steps
    return alternate({name: (lambda s=step: tokens / _time(s, batches, steps)) for name, step in impls.items()},
                     rounds, after_round)


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
    peaks = []

    def after(r, tps):
        peaks.append(matmul_flops())
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {tps[n][-1]:,.0f} tok/s" for n in impls)
            + f", matmul {peaks[-1] / 1e9:.1f} GFLOP/s")

    tps = _rounds(impls, batches, rounds, steps, warmup, after)
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


# ------------------------------------------------------------------------------- against an older revision


def load_revision(rev: str):
    """The ``replicate.models.decoder`` module of git revision ``rev``, imported as ``_replicate_<sha>`` (its whole
    package extracted into a temporary directory, its imports renamed), so both decoders live in one process."""
    import importlib
    import re
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parents[2]
    sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", rev], check=True, capture_output=True,
                         text=True).stdout.strip()
    name = f"_replicate_{sha}"
    tmp = Path(tempfile.mkdtemp(prefix="replicate_rev_"))
    archive = subprocess.run(["git", "-C", str(root), "archive", sha, "replicate"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    (tmp / "replicate").rename(tmp / name)
    for f in (tmp / name).rglob("*.py"):
        text = re.sub(r"\b(from|import) replicate\b", rf"\1 {name}", f.read_text())
        f.write_text(re.sub(r"\breplicate\.(?=[a-z_])", f"{name}.", text))
    sys.path.insert(0, str(tmp))
    return importlib.import_module(f"{name}.models.decoder"), sha


def run_against(rev_module, rev: str, cfg: DecoderConfig, batch: int, seq_len: int, rounds: int = 7, steps: int = 5,
                warmup: int = 3, log=print, config_name: str = "") -> dict:
    torch.manual_seed(0)
    ours = Decoder(cfg)
    torch.manual_seed(0)
    fields = rev_module.DecoderConfig.__dataclass_fields__  # the revision's config may know fewer fields
    old = rev_module.Decoder(rev_module.DecoderConfig(**{f: getattr(cfg, f) for f in fields}))
    same_init = list(old.state_dict()) == list(ours.state_dict()) and all(
        torch.equal(a, b) for a, b in zip(old.state_dict().values(), ours.state_dict().values()))
    old.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=g) for _ in range(4)]
    grads = []
    for m in (ours, old):  # one step's loss and gradients, bit for bit
        loss, _ = m.loss(batches[0][:, :-1], batches[0][:, 1:])
        loss.backward()
        grads.append([loss.detach(), *(p.grad.clone() for p in m.parameters())])
        m.zero_grad(set_to_none=True)
    identical = all(torch.equal(a, b) for a, b in zip(*grads))
    impls = {"ours": _Step(ours, lambda m, x, y: m.loss(x, y)[0]), "rev": _Step(old, lambda m, x, y: m.loss(x, y)[0])}
    loads = []

    def after(r, tps):
        loads.append(os.getloadavg()[0])
        log(f"round {r + 1}/{rounds}: ours {tps['ours'][-1]:,.0f} tok/s, {rev} {tps['rev'][-1]:,.0f} tok/s")

    tps = _rounds(impls, batches, rounds, steps, warmup, after)
    ratios = [a / b for a, b in zip(tps["ours"], tps["rev"])]
    return {
        "config": config_name, "revision": rev, "tokens_per_s_ours": round(statistics.median(tps["ours"]), 1),
        "tokens_per_s_rev": round(statistics.median(tps["rev"]), 1),
        "ratio_median": round(statistics.median(ratios), 4), "ratio_min": round(min(ratios), 4),
        "ratio_max": round(max(ratios), 4), "ratio_best_rounds": round(max(tps["ours"]) / max(tps["rev"]), 4),
        "same_init": same_init, "identical_loss_and_grads": identical, "batch": batch, "seq_len": seq_len,
        "threads": torch.get_num_threads(), "rounds": rounds, "steps_per_round": steps,
        "load_avg_1m_min": round(min(loads), 2), "load_avg_1m_max": round(max(loads), 2),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------- what the new parts cost



def _decode_tps(fn, batch: int, new_tokens: int, rounds: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append(batch * new_tokens / (time.perf_counter() - t))
    return out


def run_parts(cfg: DecoderConfig, batch: int, seq_len: int, rounds: int = 5, steps: int = 3, config_name: str = "",
              prompt: int = 32, new_tokens: int = 96, log=print) -> list[dict]:
    from dataclasses import replace

    from replicate.models.generate import generate

    prov = {"config": config_name, "d_model": cfg.d_model, "n_layers": cfg.n_layers, "vocab_size": cfg.vocab_size,
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    rows = []

    def row(bench, variant, metric, value, **extra):
        rows.append({"benchmark": bench, "variant": variant, "metric": metric, "value": round(value, 4), **extra,
                     "load_avg_1m": round(os.getloadavg()[0], 2), **prov})

    # training step: eager attention and per-head RoPE bases against the standard decoder
    variants = {"sdpa": cfg, "eager": replace(cfg, attention="eager"),
                "rope_per_head": replace(cfg, position_kwargs=(("bases", tuple(1e4 * (1 + h) for h in range(cfg.kv_heads))),))}
    models = {}
    for name, c in variants.items():
        torch.manual_seed(0)
        models[name] = Decoder(c)
    impls = {n: _Step(m, lambda m, x, y: m.loss(x, y)[0]) for n, m in models.items()}
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=g) for _ in range(2)]
    tps = _rounds(impls, batches, rounds, steps)
    for n, v in tps.items():
        extra = dict(batch=batch, seq_len=seq_len)
        row("train_step", n, "tokens_per_s", statistics.median(v), **extra)
        row("train_step", n, "time_vs_sdpa", statistics.median(a / b for a, b in zip(tps["sdpa"], v)), **extra)
    log("train step: " + ", ".join(f"{n} {statistics.median(v):,.0f} tok/s" for n, v in tps.items()))

    # greedy decoding: ours with and without the KV cache, transformers' generate
    torch.manual_seed(0)
    hf = hf_llama(cfg).eval()
    hf.config.use_cache = True
    hf.generation_config.eos_token_id = hf.generation_config.bos_token_id = None  # no stop token: n new tokens each
    ours = Decoder(cfg).eval()
    from_llama_state_dict(ours, hf.state_dict())
    for b in (1, 8):
        ids = torch.randint(0, cfg.vocab_size, (b, prompt), generator=g)
        fns = {"ours_kv_cache": lambda: generate(ours, ids, new_tokens),
               "ours_no_cache": lambda: generate(ours, ids, new_tokens, use_cache=False),
               "transformers_generate": lambda: hf.generate(ids, attention_mask=torch.ones_like(ids),
                                                            max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)}
        with torch.no_grad():
            same = torch.equal(fns["ours_kv_cache"](), fns["transformers_generate"]())
            res = {n: _decode_tps(f, b, new_tokens, max(2, rounds // 2)) for n, f in fns.items()}
        for n, v in res.items():
            row("greedy_decode", n, "tokens_per_s", statistics.median(v), batch=b, seq_len=prompt + new_tokens,
                same_tokens_as_transformers=same)
        from replicate.models.generate import KVCache

        row("greedy_decode", "ours_kv_cache", "cache_bytes_per_token", KVCache(ours, b).bytes_per_token, batch=b,
            seq_len=prompt + new_tokens)
        log(f"decode batch {b}: " + ", ".join(f"{n} {statistics.median(v):,.0f} tok/s" for n, v in res.items())
            + f" (same tokens as transformers: {same})")
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
    p.add_argument("--against", metavar="REV", default=None,
                   help="instead: our decoder against the one at git revision REV (dense_vs_revision_cpu.csv)")
    p.add_argument("--parts", action="store_true",
                   help="instead: cost of eager attention, per-head RoPE, KV-cache decoding (decoder_parts_cpu.csv)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or min(args.threads) < 1:
        print("error: --rounds, --steps and --threads must be >= 1", file=sys.stderr)
        return 2
    rev_module, sha = load_revision(args.against) if args.against else (None, None)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name in args.config:
            cfg, batch, seq_len = CONFIGS[name]
            print(f"{name}, {threads} thread(s):", file=sys.stderr)
            log = lambda s: print("  " + s, file=sys.stderr)  # noqa: E731
            if args.against:
                r = run_against(rev_module, sha, cfg, batch, seq_len, rounds=args.rounds, steps=args.steps,
                                config_name=name, log=log)
                rows.append(r)
                print(f"{name:10s} {threads} thr  ours / {sha}: x{r['ratio_median']:.3f} (rounds "
                      f"{r['ratio_min']:.3f}..{r['ratio_max']:.3f}), bitwise identical step: "
                      f"{r['identical_loss_and_grads']}, same init: {r['same_init']}")
            elif args.parts:
                rows += run_parts(cfg, batch, seq_len, config_name=name, log=log)
            else:
                rows += run(cfg, batch, seq_len, rounds=args.rounds, steps=args.steps, config_name=name, log=log)
    default = ("dense_vs_revision_cpu.csv" if args.against else
               "decoder_parts_cpu.csv" if args.parts else "dense_cpu.csv")
    out = write_csv(rows, args.out or results_dir() / "benchmarks" / default)
    for r in rows if not (args.against or args.parts) else ():
        print(f"{r['config']:10s} {r['threads']} thr  {r['impl']:20s} {r['tokens_per_s']:>10,.0f} tok/s  "
              f"x{r['speedup_vs_transformers']:.2f} vs transformers  {r['achieved_gflops']:.1f} GFLOP/s = "
              f"{100 * r['mfu']:.0f}% of matmul {r['matmul_peak_gflops']:.1f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
