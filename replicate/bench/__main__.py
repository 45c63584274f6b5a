"""``python -m replicate.bench {moe,kernels,dense} [options]``: one subcommand per module of this package.

To add a benchmark, write ``replicate/bench/<name>.py`` with ``main(argv: list[str]) -> int`` and add one entry to
``SUBCOMMANDS``.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "moe": ("replicate.bench.moe", "MoE layer on the CPU vs a naive expert loop and a dense FFN; profiler split"),
    "kernels": ("replicate.bench.kernels", "Triton routing kernels vs the PyTorch path: correctness and speed (GPU)"),
    "dense": ("replicate.bench.dense", "dense decoder vs transformers' Llama, and MFU"),
    "notebooks": ("replicate.bench.notebooks", "wall time and peak memory of every notebook, cold cache"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.splitlines()[0])
        for name, (_, help_) in SUBCOMMANDS.items():
            print(f"  {name:<8} {help_}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"replicate.bench: unknown benchmark {name!r}; allowed: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    return int(importlib.import_module(SUBCOMMANDS[name][0]).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
