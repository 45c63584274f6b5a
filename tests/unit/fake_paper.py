"""A tiny paper config registered under a test id, to test the validation machinery without a real paper
(``registered()`` fixture in each test module: registered for the test, removed afterwards)."""

from __future__ import annotations

from dataclasses import dataclass

from replicate import budget
from replicate.config import _REGISTRY, PaperConfig, constraint, param, register

FAKE_ID = "fake_paper_for_tests"


@dataclass(frozen=True, kw_only=True)
class FakeConfig(PaperConfig):
    width: int = param(64, help="model width", min=16, max=8192)
    heads: int = param(4, help="heads", min=1, max=64)
    steps: int = param(100, help="steps", min=10, max=10**12)
    lr: float = param(1e-3, help="learning rate", min=1e-6, max=1.0)
    margin: float = param(0.25, help="a float without bounds")
    fractions: tuple[float, ...] = param((0.2, 0.3), help="fractions", min=0.05, max=0.95, min_len=1)
    grid: tuple[int, ...] = param((1, 2, 4), help="a grid", min=1, max=64, increasing=True)
    arms: tuple[str, ...] = param(("a", "b"), help="a set", choices=("a", "b", "c"), distinct=True)
    run_extra: bool = param(False, help="an on/off switch")

    CONSTRAINTS = (constraint("heads", lambda c: c.width % c.heads == 0, "must divide width ({width})", heads=3),)

    def workload(self):
        return [budget.Run("main", self.width, 2, 4 * self.width, 512, 64, 8, self.steps)]

    @classmethod
    def smoke(cls):
        return cls(scale="smoke", steps=20)

    @classmethod
    def small(cls):
        return cls(scale="small")

    @classmethod
    def paper(cls):
        return cls(scale="paper", width=256, steps=1000)


def install():
    register(FAKE_ID)(FakeConfig)
    return FakeConfig


def uninstall():
    _REGISTRY.pop(FAKE_ID, None)
