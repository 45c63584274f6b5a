"""Configs: one frozen dataclass per paper, three named scales, one validating entry point.

Every paper module defines a frozen dataclass whose fields are declared with :func:`param` (default, help text,
source of the default, allowed range) and three factories ``smoke()``, ``small()``, ``paper()``; it registers the
class with :func:`register`. Notebooks, the CLI and the tests reach a config only through ``resolve_config``,
which rejects unknown names, wrong types, out-of-range or non-finite values, broken cross-field rules
(:func:`constraint`) and workloads this machine cannot run (:mod:`replicate.budget`; ``force=true`` overrides)
with one line naming the parameter and what is allowed (Papermill itself only warns about unknown parameters).
:func:`config_hash` keys the run cache.

The import graph points one way: this module imports no paper. ``replicate.papers.resolve_config(paper_id, ...)``
imports the paper's package (whose ``__init__`` defines and registers its config, without importing torch) and
calls :func:`resolve` with its class.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import hashlib
import json
import math
import types
import typing
from typing import Any, Callable

from replicate import __version__, budget


class Scale(str, enum.Enum):
    SMOKE = "smoke"  # CI and nbval: every code path, <= 60 s per notebook
    SMALL = "small"  # this CPU: real, if miniature, evidence, <= 15 min per notebook
    PAPER = "paper"  # one or more GPUs: the paper's sizes where feasible


SCALES = tuple(s.value for s in Scale)


class ConfigError(ValueError):
    """A bad parameter. ``str(err)`` is one line naming the parameter and what is allowed."""


def param(default, *, help: str, source: str = "ours", min=None, max=None, choices=None, min_len=None,
          distinct: bool = False, increasing: bool = False):
    """A config field with its documentation and its allowed values.

    ``source`` says where the default comes from ("Table 2", "Sec. 4.1", "ours: scaled down").
    ``min``/``max`` bound numbers (and every element of a tuple of numbers); ``choices`` lists allowed values.
    A tuple that means a set or a grid says so: ``distinct`` refuses repeated values, ``increasing`` also refuses
    values out of order (a grid, a list of bin edges). Floats are always finite (NaN and ±inf are refused).
    """
    meta = {"help": help, "source": source, "min": min, "max": max, "choices": choices, "min_len": min_len,
            "distinct": distinct, "increasing": increasing}
    if isinstance(default, (list, dict, set)):
        raise TypeError("config defaults must be immutable: use a tuple")
    return dataclasses.field(default=default, metadata=meta)


_REGISTRY: dict[str, type] = {}


def register(paper_id: str):
    """Class decorator: make ``cls`` the config of ``paper_id``."""

    def deco(cls):
        for name in ("smoke", "small", "paper"):
            if not callable(getattr(cls, name, None)):
                raise TypeError(f"{cls.__name__} needs a classmethod {name}()")
        cls.paper_id = paper_id
        _REGISTRY[paper_id] = cls
        return cls

    return deco


@dataclasses.dataclass(frozen=True)
class Constraint:
    """A cross-field rule of a config, declared so that validation and the generated bad-input suite share it.

    ``check(cfg)`` is True when the rule holds. When it fails, :func:`resolve` raises one line naming
    ``params[0]``: ``parameter 'n_heads': must divide d_model (192), got 5``: ``message`` is formatted with the
    config's fields (``"must divide d_model ({d_model})"``). ``breaks`` are overrides at ``smoke`` scale that violate
    the rule: the bad-input suite applies them and expects exactly this error.
    """

    params: tuple[str, ...]
    check: Callable[[Any], bool]
    message: str
    breaks: tuple[tuple[str, Any], ...]

    def error(self, cfg) -> ConfigError:
        name = self.params[0]
        fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        return ConfigError(f"parameter {name!r}: {self.message.format(**fields)}, got {getattr(cfg, name)!r}")


def constraint(params: str | tuple[str, ...], check: Callable[[Any], bool], message: str, **breaks) -> Constraint:
    """``constraint("n_heads", lambda c: c.d_model % c.n_heads == 0, "must divide d_model ({d_model})", n_heads=5)``"""
    return Constraint((params,) if isinstance(params, str) else tuple(params), check, message, tuple(breaks.items()))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PaperConfig:
    """Fields every paper has. Paper configs subclass this (``@dataclass(frozen=True, kw_only=True)``) and declare
    their cross-field rules as a class attribute ``CONSTRAINTS: tuple[Constraint, ...] = (constraint(...), ...)``."""

    scale: str = param("small", help="smoke | small | paper", choices=SCALES)
    seed: int = param(0, help="base seed; a run with n seeds uses seed, seed+1, ...", min=0, max=2**31 - 1)
    # Where training runs. CPU by default; at `paper` scale a GPU, and Lightning's strategies for more.
    accelerator: str = param("cpu", help="Lightning accelerator", choices=("cpu", "gpu", "cuda", "auto"))
    devices: int = param(1, help="devices per node (GPUs, or CPU processes)", min=1, max=1024)
    num_nodes: int = param(1, help="nodes for multi-node training", min=1, max=1024)
    strategy: str = param("auto", help="Lightning strategy", choices=("auto", "ddp", "ddp_notebook", "fsdp", "ddp_spawn"))
    precision: str = param("32-true", help="Lightning precision", choices=("32-true", "bf16-mixed", "16-mixed"))
    force: bool = param(False, help="run even when the estimated training time or memory exceeds what this machine "
                        "can do (replicate.budget); never changes a number")

    def workload(self) -> list:
        """The training runs this config makes, as :class:`replicate.budget.Run` s, so that :func:`resolve` can
        estimate time and memory before anything runs and refuse what this machine cannot do. Default: none (no
        check). Config arithmetic only: no data, no torch."""
        return []


def registered(paper_id: str) -> type | None:
    """The config class registered for ``paper_id``, or None when its package was never imported. This module
    never imports a paper: ``replicate.papers.config_class`` does that, from above."""
    return _REGISTRY.get(paper_id)


# ---------------------------------------------------------------------------------------------- validation


def _describe(meta: dict, typ) -> str:
    """What a field allows, in words (used in error messages)."""
    if meta.get("choices") is not None:
        return "one of " + " | ".join(repr(c) for c in meta["choices"])
    name = _type_name(typ)
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return f"{name} in [{lo}, {hi}]"
    if lo is not None:
        return f"{name} >= {lo}"
    if hi is not None:
        return f"{name} <= {hi}"
    return name


def _type_name(typ) -> str:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(typ))
    if origin is tuple:
        args = typing.get_args(typ)
        plural = {int: "integers", float: "finite numbers", str: "strings", bool: "booleans"}
        return f"a tuple of {plural.get(args[0]) or _type_name(args[0])}" if args else "a tuple"
    names = {int: "an integer", float: "a finite number", bool: "true | false | True | False", str: "a string",
             type(None): "None"}
    return names.get(typ, getattr(typ, "__name__", str(typ)))


BOOL_WORDS = {"true": True, "false": False, "True": True, "False": False}


def _coerce(value, typ):
    """Return ``value`` as ``typ`` when it is that type. Ints are accepted for floats; lists for tuples (YAML, JSON,
    and what the CLI sends through Papermill, which cannot render a tuple), and a string holding a Python literal of
    a list or tuple (``papermill -p name "(0.2,)"``: Papermill's command line passes such a value as a string); the
    words true / false / True / False for bools."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(typ):
            try:
                return _coerce(value, arg)
            except TypeError:
                pass
        raise TypeError
    if typ is type(None):
        if value is None:
            return None
        raise TypeError
    if origin is tuple:
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                raise TypeError from None
        if not isinstance(value, (tuple, list)):
            raise TypeError
        (elem, *rest) = typing.get_args(typ) or (Any,)
        return tuple(_coerce(v, elem) for v in value)
    if typ is Any:
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value in BOOL_WORDS:
            return BOOL_WORDS[value]
        raise TypeError
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if isinstance(value, typ):
        return value
    raise TypeError


def _check_range(name: str, value, meta: dict, typ) -> None:
    values = value if isinstance(value, tuple) else (value,)
    bad = lambda: ConfigError(f"parameter {name!r}: must be {_describe(meta, typ)}, got {value!r}")
    if meta.get("min_len") is not None and isinstance(value, tuple) and len(value) < meta["min_len"]:
        raise ConfigError(f"parameter {name!r}: needs at least {meta['min_len']} values, got {value!r}")
    for v in values:
        if meta.get("choices") is not None and v not in meta["choices"]:
            raise bad()
        if isinstance(v, float) and not math.isfinite(v):
            raise bad()
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if (meta.get("min") is not None and v < meta["min"]) or (meta.get("max") is not None and v > meta["max"]):
                raise bad()
    if isinstance(value, tuple) and meta.get("increasing") and any(a >= b for a, b in zip(value, value[1:])):
        raise ConfigError(f"parameter {name!r}: must be strictly increasing (no repeats), got {value!r}")
    if isinstance(value, tuple) and meta.get("distinct") and len(set(value)) < len(value):
        raise ConfigError(f"parameter {name!r}: must not repeat a value, got {value!r}")


def fields_of(cls) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        out[f.name] = f
    return out


def resolve(cls: type, scale: str = "small", /, **overrides):
    """The validated config of class ``cls`` at ``scale`` with ``overrides`` applied. Raises :class:`ConfigError`.
    (By paper id: :func:`replicate.papers.resolve_config`.) ``cls`` and ``scale`` are positional-only, so no
    override name can collide with them. After the fields and the cross-field rules, the config's
    :meth:`PaperConfig.workload` is checked against this machine (:func:`replicate.budget.check`)."""
    paper_id = cls.paper_id
    if not isinstance(scale, str) or scale not in SCALES:
        raise ConfigError(f"parameter 'scale': must be one of {' | '.join(SCALES)}, got {scale!r}")
    base = getattr(cls, scale)()
    fields = fields_of(cls)
    clean = {"scale": scale}
    for name, value in overrides.items():
        if name == "scale":
            raise ConfigError("parameter 'scale': pass it as the scale (--scale), not as an override")
        if name not in fields:
            raise ConfigError(f"parameter {name!r}: unknown for {paper_id}; allowed: {', '.join(fields)}")
        f = fields[name]
        try:
            value = _coerce(value, f.type)
        except TypeError:
            raise ConfigError(
                f"parameter {name!r}: must be {_describe(f.metadata, f.type)}, got {value!r} ({type(value).__name__})"
            ) from None
        _check_range(name, value, f.metadata, f.type)
        clean[name] = value
    cfg = dataclasses.replace(base, **clean)
    for rule in getattr(cls, "CONSTRAINTS", ()):  # cross-field rules, in declaration order
        if not rule.check(cfg):
            raise rule.error(cfg)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()  # checks that cannot be declared as a Constraint; raises ConfigError
    budget.check(cfg)
    return cfg


def to_dict(cfg) -> dict:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def config_hash(cfg, *extra) -> str:
    """Stable 12-hex-digit key of a config (any dataclass) plus the package version and ``extra`` parts."""
    payload = json.dumps(
        {"type": type(cfg).__name__, "fields": _jsonable(to_dict(cfg)), "version": __version__, "extra": extra},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _jsonable(x):
    if dataclasses.is_dataclass(x):
        return {"type": type(x).__name__, **_jsonable(to_dict(x))}
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, enum.Enum):
        return x.value
    return x


def help_table(cls) -> list[dict]:
    """One row per parameter: name, type, default at each scale, allowed values, help, source."""
    rows = []
    scales = {s: getattr(cls, s)() for s in SCALES}
    for name, f in fields_of(cls).items():
        rows.append(
            {
                "name": name,
                "type": _type_name(f.type),
                **{s: getattr(scales[s], name) for s in SCALES},
                "allowed": _describe(f.metadata, f.type),
                "help": f.metadata.get("help", ""),
                "source": f.metadata.get("source", ""),
            }
        )
    return rows
