"""Registries of swappable parts by name (FFN kinds, attention, position encodings, run conversions, ...).

A paper registers its own part under a name in the shared registry (``@FFN.register("finedeep")``), and a hashed
config refers to it by that name. Looking up a name nobody registered fails in one line that lists what is
registered and says where parts come from: a paper's parts exist once its package (``replicate.papers.<id>``) has
been imported, so a config naming a part of a paper that was never imported fails clearly instead of deep inside a
model.
"""

from __future__ import annotations

from typing import Callable


class Registry(dict):
    """``name -> factory`` for one kind of part; ``registry[name]`` raises a one-line ``ValueError`` for an unknown
    name."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable:
        """Decorator: register ``factory`` under ``name`` (registering a different factory twice is an error)."""

        def deco(factory):
            if name in self and dict.__getitem__(self, name) is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self[name] = factory
            return factory

        return deco

    def __getitem__(self, name: str):
        try:
            return dict.__getitem__(self, name)
        except KeyError:
            raise ValueError(f"{self.kind}: unknown {name!r}; registered: {', '.join(sorted(self)) or 'none'} (a "
                             f"paper's parts are registered when its package replicate.papers.<id> is imported)"
                             ) from None
