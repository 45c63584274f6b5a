"""GPU check of the routing kernels: correctness against the PyTorch path at realistic sizes, and speed.

``python -m replicate.bench kernels --device cuda [--dtype fp32 bf16] [--out results/benchmarks/kernels_cuda.csv]``

For every op (router, permute, grouped SwiGLU, combine, and the chained ``moe_experts``), forward and
forward+backward: the Triton output and gradients are compared with the PyTorch path on the same GPU (the
tolerance table of ``replicate.kernels.testing``; fp32 with IEEE products, bf16 by relative RMS), then both are
timed with ``triton.testing.do_bench`` (median of repeats, warm-up excluded). A few minutes on one GPU.

``--device cpu --tiny`` runs the same script through the Triton interpreter on toy sizes (needs
``TRITON_INTERPRET=1`` exported): a check of the script itself, not a measurement.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import platform
import sys
import time
from pathlib import Path

import torch

import replicate
from replicate.kernels import combine_experts, dispatch_tokens, grouped_swiglu, moe_experts, route
from replicate.kernels.dispatch import KernelConfigError, check_triton_usable
from replicate.kernels.testing import assert_close

REALISTIC = [  # (T, E, K, D, F)
    (4096, 8, 2, 1024, 2816),
    (16384, 64, 2, 1024, 704),
    (16384, 16, 1, 2048, 1408),
]
TINY = [(37, 5, 2, 24, 40)]


def _bench(fn, device: str) -> float:
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=50))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _inputs(T, E, K, D, F, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    logits = torch.randn(T, E, generator=g).to(device)
    x = torch.randn(T, D, generator=g).to(device, dtype)
    wg = (torch.randn(E, D, F, generator=g) / D**0.5).to(device, dtype)
    wu = (torch.randn(E, D, F, generator=g) / D**0.5).to(device, dtype)
    wd = (torch.randn(E, F, D, generator=g) / F**0.5).to(device, dtype)
    return logits, x, wg, wu, wd


def check_and_time(T, E, K, D, F, dtype, device) -> list[dict]:
    logits, x, wg, wu, wd = _inputs(T, E, K, D, F, dtype, device)
    rows = []
    base = {"T": T, "E": E, "K": K, "D": D, "F": F, "dtype": str(dtype).replace("torch.", "")}
    r = route(logits, K, renormalize=True, impl="torch")
    d = dispatch_tokens(x, r.topk_idx_TK, E, impl="torch")
    y_perm = grouped_swiglu(d.x_perm_ND, d.offsets_E1, wg, wu, wd, impl="torch")

    ops = {
        "router": (lambda impl, ins: route(ins[0], K, renormalize=True, impl=impl)[1:3], [logits]),
        "permute": (lambda impl, ins: dispatch_tokens(ins[0], r.topk_idx_TK, E, impl=impl).x_perm_ND, [x]),
        "grouped_swiglu": (lambda impl, ins: grouped_swiglu(ins[0], d.offsets_E1, *ins[1:], impl=impl),
                           [d.x_perm_ND.detach(), wg, wu, wd]),
        "combine": (lambda impl, ins: combine_experts(ins[0], d.inv_TK, ins[1], impl=impl), [y_perm.detach(), r.topk_w_TK]),
        "moe_experts": (lambda impl, ins: moe_experts(ins[0], r.topk_idx_TK, r.topk_w_TK, *ins[1:], impl=impl),
                        [x, wg, wu, wd]),
    }
    for name, (fn, ins) in ops.items():
        results, timing = {}, {}
        for impl in ("torch", "triton"):
            leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in ins]
            outs = fn(impl, leaves)
            outs = outs if isinstance(outs, (tuple, list)) else (outs,)
            g_outs = [torch.randn_like(o) for o in outs] if impl == "torch" else g_outs  # noqa: F821
            loss = sum((o.float() * g.float()).sum() for o, g in zip(outs, g_outs))
            grads = torch.autograd.grad(loss, [l for l in leaves if l.requires_grad])
            results[impl] = (outs, grads)

            def fwd(fn=fn, impl=impl, leaves=leaves):
                with torch.no_grad():
                    fn(impl, leaves)

            def fwd_bwd(fn=fn, impl=impl, leaves=leaves):
                o = fn(impl, leaves)
                o = o if isinstance(o, (tuple, list)) else (o,)
                torch.autograd.grad(sum((a.float() * g.float()).sum() for a, g in zip(o, g_outs)),
                                    [l for l in leaves if l.requires_grad])

            timing[impl] = (_bench(fwd, device), _bench(fwd_bwd, device))
        ok, err = True, ""
        try:
            for a, b in zip(results["torch"][0], results["triton"][0]):
                assert_close(f"{name} out", a, b) if a.dtype.is_floating_point else None
                if not a.dtype.is_floating_point:
                    assert torch.equal(a, b), f"{name}: integer outputs differ"
            for a, b in zip(results["torch"][1], results["triton"][1]):
                assert_close(f"{name} grad", a, b, "bwd")
        except AssertionError as exc:
            ok, err = False, str(exc).splitlines()[0][:200]
        for phase, i in (("fwd", 0), ("fwd_bwd", 1)):
            rows.append({**base, "op": name, "phase": phase, "torch_ms": round(timing["torch"][i], 4),
                         "triton_ms": round(timing["triton"][i], 4),
                         "speedup": round(timing["torch"][i] / max(timing["triton"][i], 1e-9), 3),
                         "correct": ok, "error": err})
        print(f"{name:>15} {base['dtype']:>8} T={T} E={E} K={K} D={D} F={F}: correct={ok} "
              f"fwd {timing['torch'][0]:.3f}/{timing['triton'][0]:.3f} ms, fwd+bwd {timing['torch'][1]:.3f}/"
              f"{timing['triton'][1]:.3f} ms (torch/triton) {err}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m replicate.bench kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--tiny", action="store_true", help="toy sizes (interpreter smoke run of this script)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("replicate.bench kernels: --device cuda needs a CUDA GPU (use --device cpu --tiny with "
              "TRITON_INTERPRET=1 to check the script)", file=sys.stderr)
        return 2
    try:
        check_triton_usable(args.device)
    except KernelConfigError as exc:
        print(f"replicate.bench kernels: {exc}", file=sys.stderr)
        return 2
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if args.device == "cpu":
        args.dtype = ["fp32"]  # no bf16 tl.dot in the interpreter
    torch.backends.cuda.matmul.allow_tf32 = False
    sizes = TINY if args.tiny else REALISTIC
    rows = []
    for dt_name in args.dtype:
        for T, E, K, D, F in sizes:
            rows += check_and_time(T, E, K, D, F, dtypes[dt_name], args.device)
    prov = {"device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "replicate": replicate.__version__,
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    out = args.out or Path(f"results/benchmarks/kernels_{args.device}{'_tiny' if args.tiny else ''}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*rows[0].keys(), *prov.keys()])
        w.writeheader()
        w.writerows({**r, **prov} for r in rows)
    print(f"wrote {out}")
    return 0 if all(r["correct"] for r in rows) else 1
