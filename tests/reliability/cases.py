"""Bad-input cases generated from a paper's config dataclass (``param(...)`` metadata: type, min, max, choices,
min_len, distinct, increasing; the class's ``CONSTRAINTS``), so a paper's parameters are covered the day the
paper lands, with no list to maintain.

For every parameter: an unknown name (a misspelling of it), one or more values of a wrong type, every
out-of-range value its metadata implies (below ``min``, above ``max``, outside ``choices``, shorter than
``min_len``, one element of a tuple out of range), NaN and ±inf for every float (and float element of a tuple), a
repeated or out-of-order value where a tuple is a set or a grid. For every declared cross-field constraint: its
``breaks`` (expected: the error names the constraint's first parameter). For every paper: the names the
validation itself uses (``paper_id``, ``cls``, ``scale`` as an override). A parameter whose metadata admits no
out-of-range value (a bool, a free string) is listed in :func:`unbounded`, so the count of what was not tried is
visible too.

:func:`accepted_for` lists good values that must pass every way in (the CLI, Papermill's ``-p``, YAML): every
tuple parameter at its smoke default, every bool spelled as a word.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass

from replicate.config import fields_of
from replicate.papers import config_class


@dataclass(frozen=True)
class Case:
    paper: str
    param: str  # the parameter the error message must name
    kind: str  # unknown_name | wrong_type | out_of_range | non_finite | repeats | constraint | reserved_name
    overrides: tuple[tuple[str, object], ...]  # (name, value) pairs passed as overrides
    scale: object = "smoke"

    @property
    def name(self) -> str:
        """The name passed (differs from ``param`` for scale, which is not an override, and for constraints)."""
        return self.overrides[0][0] if self.overrides else "scale"

    @property
    def value(self) -> object:
        return self.overrides[0][1] if self.overrides else self.scale

    @property
    def id(self) -> str:
        given = ",".join(f"{k}={v!r}" for k, v in self.overrides) or f"scale={self.scale!r}"
        return f"{self.paper}-{self.kind}-{given}"[:120]

    def cli_args(self) -> list[str]:
        """``--scale S -p name=value ...`` as a user types them (values as Python literals)."""
        return ["--scale", str(self.scale), *[a for k, v in self.overrides for a in ("-p", f"{k}={v!r}")]]

    def papermill_args(self) -> list[tuple[str, str]]:
        """``papermill -p name value`` pairs as a user types them (scale first)."""
        return [("scale", str(self.scale)), *[(k, as_typed(v)) for k, v in self.overrides]]


def as_typed(value) -> str:
    """How a user types ``value`` on a command line: a string as itself, anything else as its literal."""
    return value if isinstance(value, str) else repr(value)


def _base(typ):
    """(kind, element type) of a field type: ('int'|'float'|'bool'|'str'|'tuple'|'union'|'other', elem)."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        return "union", typing.get_args(typ)
    if origin is tuple:
        args = typing.get_args(typ)
        return "tuple", (args[0] if args else typing.Any)
    return {int: "int", float: "float", bool: "bool", str: "str"}.get(typ, "other"), None


def _wrong_types(typ) -> list:
    kind, elem = _base(typ)
    if kind == "int":
        return ["abc", 2.5, True]
    if kind == "float":
        return ["abc", False]
    if kind == "bool":
        return ["yes", 1]
    if kind == "str":
        return [3]
    if kind == "tuple":
        wrong_elem = _wrong_types(elem)[0] if _base(elem)[0] != "other" else {"bad": 1}
        return ["abc", (wrong_elem,)]
    return [{"bad": 1}]  # a dict is no parameter type of ours


def _out_of_range(value_type, meta: dict, default) -> list:
    kind, elem = _base(value_type)
    out = []
    if kind == "tuple":
        good = tuple(default) or ((meta["min"],) if meta.get("min") is not None else ())
        if meta.get("min_len"):
            out.append(tuple(good[: meta["min_len"] - 1]))
        for bad in _out_of_range(elem, {k: v for k, v in meta.items() if k != "min_len"}, None):
            out.append((bad, *good[1:]) if good else (bad,))
        return out
    choices = meta.get("choices")
    if choices is not None:
        if all(isinstance(c, str) for c in choices):
            out.append("not_a_choice")
        elif all(isinstance(c, int) and not isinstance(c, bool) for c in choices):
            out += [min(choices) - 1, max(choices) + 1]
        return out
    if kind in ("int", "float"):
        if meta.get("min") is not None:
            out.append(meta["min"] - 1)
        if meta.get("max") is not None:
            out.append(meta["max"] + 1)
    return out


def _misspelling(name: str, taken: set[str]) -> str:
    for candidate in (name[:-1], name + "s", name + "_x"):
        if candidate and candidate.isidentifier() and not candidate.startswith("_") and candidate not in taken:
            return candidate
    raise AssertionError(name)


def _has_float(typ) -> bool:
    kind, elem = _base(typ)
    return kind == "float" or (kind == "tuple" and elem is float) or (kind == "union" and float in elem)


def _non_finite(typ, default) -> list:
    if not _has_float(typ):
        return []
    if _base(typ)[0] == "tuple":
        rest = tuple(default)[1:] if default else ()
        return [(math.nan, *rest), (math.inf, *rest)]
    return [math.nan, math.inf, -math.inf]


def _repeats(meta: dict, default) -> list:
    if not isinstance(default, tuple) or not default or not (meta.get("distinct") or meta.get("increasing")):
        return []
    good = default
    out = [(good[0], *good)]  # a repeated value
    if meta.get("increasing") and len(good) >= 2:
        out.append(tuple(reversed(good)))
    return out


def cases_for(paper: str, cls: type | None = None) -> list[Case]:
    cls = cls or config_class(paper)
    fields = fields_of(cls)
    smoke = cls.smoke()
    out = []
    for name, f in fields.items():
        default = getattr(smoke, name)
        typo = _misspelling(name, set(fields))
        out.append(Case(paper, typo, "unknown_name", ((typo, default),)))
        if name == "scale":
            out += [Case(paper, name, "wrong_type", (), v) for v in _wrong_types(f.type)]
            out += [Case(paper, name, "out_of_range", (), v) for v in _out_of_range(f.type, dict(f.metadata), default)]
            continue
        out += [Case(paper, name, "wrong_type", ((name, v),)) for v in _wrong_types(f.type)]
        out += [Case(paper, name, "out_of_range", ((name, v),)) for v in _out_of_range(f.type, dict(f.metadata), default)]
        out += [Case(paper, name, "non_finite", ((name, v),)) for v in _non_finite(f.type, default)]
        out += [Case(paper, name, "repeats", ((name, v),)) for v in _repeats(dict(f.metadata), default)]
    for rule in getattr(cls, "CONSTRAINTS", ()):
        out.append(Case(paper, rule.params[0], "constraint", tuple(rule.breaks)))
    out += [Case(paper, n, "unknown_name", ((n, "x"),)) for n in ("paper_id", "cls") if n not in fields]
    out.append(Case(paper, "scale", "reserved_name", (("scale", "paper"),)))
    return out


def accepted_for(paper: str, cls: type | None = None) -> list[tuple[str, object, object]]:
    """(name, value as given, value the config must end with): each tuple parameter at its smoke default, each
    bool at its smoke default spelled as a word (true | True, false | False)."""
    cls = cls or config_class(paper)
    smoke = cls.smoke()
    out = []
    for name, f in fields_of(cls).items():
        default = getattr(smoke, name)
        if _base(f.type)[0] == "tuple":
            out.append((name, default, default))
        elif f.type is bool:
            out += [(name, str(default).lower(), default), (name, str(default), default)]
    return out


def unbounded(paper: str, cls: type | None = None) -> list[str]:
    """Parameters whose metadata admits no out-of-range value (bools, free strings): not tried for range."""
    cls = cls or config_class(paper)
    return [n for n, f in fields_of(cls).items() if not _out_of_range(f.type, dict(f.metadata), getattr(cls.smoke(), n))]


def representative(paper: str) -> list[Case]:
    """One case of each kind for the costly real-process runs: on the last-declared of the paper's own parameters
    that has a string of the wrong type and a scalar out-of-range value (values Papermill's ``-p`` can carry)."""
    from replicate.config import PaperConfig

    cases, fields = cases_for(paper), fields_of(config_class(paper))
    own = [n for n in fields if n not in fields_of(PaperConfig)]
    for name in reversed(own):
        wrong = [c for c in cases if c.name == name and c.kind == "wrong_type" and isinstance(c.value, str)]
        oor = [c for c in cases if c.name == name and c.kind == "out_of_range" and isinstance(c.value, (int, float, str))]
        unknown = [c for c in cases if c.kind == "unknown_name" and c.name == _misspelling(name, set(fields))]
        if wrong and oor and unknown:
            return [unknown[0], wrong[0], oor[0]]
    raise AssertionError(f"{paper}: no parameter with all three kinds of bad input")


def non_finite(paper: str) -> Case:
    """A NaN for the last-declared of the paper's own scalar float parameters (a real Papermill run: ``-p name nan``
    reaches the notebook as ``float('nan')``)."""
    return [c for c in cases_for(paper) if c.kind == "non_finite" and isinstance(c.value, float)
            and math.isnan(c.value)][-1]
