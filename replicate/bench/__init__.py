"""Benchmarks writing ``results/benchmarks/``: ``python -m replicate.bench <name> [options]``.

Each benchmark is a module ``replicate.bench.<name>`` with ``main(argv) -> int``; ``__main__.py`` lists them.
"""
