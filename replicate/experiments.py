"""One shape for every paper's experiments: named steps, run once each, frozen into one bundle.

A paper's ``experiments.py`` declares its steps in order on a :class:`Plan`; a step is a function whose parameters
name the config (``cfg``) and earlier steps, whose results it receives:

    plan = Plan("temporal_scaling_law")

    @plan.step
    def data(cfg): ...                      # prepare the data
    @plan.step
    def e1(cfg, data): ...                  # train E1 (runs are cached by the trainer)
    @plan.step
    def fits(cfg, e1): ...                  # fits, predictions, bootstraps: every number the report needs

    run_experiments = plan.run_all          # run_experiments(cfg) -> Bundle

The notebook runs one step per cell (``exp = plan.start(cfg)``; ``exp.run("e1")``) and ends with
``bundle = exp.bundle()``; a script calls ``run_experiments(cfg)``. Both end with the same frozen :class:`Bundle`
(attribute access, one field per step plus ``cfg``), which the paper's ``report.py`` turns into tables, figures and
claims without training, fitting or resampling anything. A step's dependencies run first if they have not; no step
runs twice.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import time
from types import MappingProxyType
from typing import Any, Callable


class Bundle:
    """Every result of a paper's experiments, read-only: ``bundle.cfg``, ``bundle.<step>``; ``seconds`` holds each
    step's wall time."""

    __slots__ = ("_values", "seconds")

    def __init__(self, values: dict[str, Any], seconds: dict[str, float]):
        object.__setattr__(self, "_values", MappingProxyType(dict(values)))
        object.__setattr__(self, "seconds", MappingProxyType(dict(seconds)))

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"bundle has no {name!r}; it holds: {', '.join(self._values)}") from None

    def __setattr__(self, name, value):
        raise AttributeError("a bundle is frozen")

    def __contains__(self, name):
        return name in self._values

    def __dir__(self):
        return [*self._values, "seconds"]

    def __repr__(self):
        return f"Bundle({', '.join(self._values)})"


class Plan:
    """The ordered steps of one paper's experiments."""

    def __init__(self, paper_id: str):
        self.paper_id = paper_id
        self.steps: dict[str, Callable] = {}

    def step(self, fn: Callable) -> Callable:
        """Register ``fn`` as the next step; its parameters must be ``cfg`` or names of earlier steps."""
        for p in inspect.signature(fn).parameters:
            if p != "cfg" and p not in self.steps:
                raise TypeError(f"step {fn.__name__!r}: parameter {p!r} is neither 'cfg' nor an earlier step")
        self.steps[fn.__name__] = fn
        return fn

    def start(self, cfg) -> "Experiments":
        # the paper's report module now, with the code the plan was imported with: a notebook that imports it only
        # when its tables are drawn (a long run later) could otherwise pair this plan with report code edited since
        if importlib.util.find_spec(f"replicate.papers.{self.paper_id}") is not None:
            importlib.import_module(f"replicate.papers.{self.paper_id}.report")
        return Experiments(self, cfg)

    def run_all(self, cfg) -> Bundle:
        """Every step in order: the bundle of all results."""
        return self.start(cfg).bundle()


class Experiments:
    """A plan being run for one config: ``run(name)`` one step (and what it needs), ``bundle()`` all of them."""

    def __init__(self, plan: Plan, cfg):
        self.plan, self.cfg = plan, cfg
        self.values: dict[str, Any] = {"cfg": cfg}
        self.seconds: dict[str, float] = {}

    def run(self, name: str) -> None:
        """Run step ``name`` unless it ran; its dependencies first. Returns nothing: results reach the reader
        through the report's tables and figures."""
        if name in self.values:
            return
        if name not in self.plan.steps:
            raise KeyError(f"step: unknown {name!r}; the steps of {self.plan.paper_id}: {', '.join(self.plan.steps)}")
        fn = self.plan.steps[name]
        args = {}
        for p in inspect.signature(fn).parameters:
            self.run(p)
            args[p] = self.values[p]
        t0 = time.perf_counter()
        self.values[name] = fn(**args)
        self.seconds[name] = time.perf_counter() - t0

    def bundle(self) -> Bundle:
        for name in self.plan.steps:
            self.run(name)
        return Bundle(self.values, self.seconds)
