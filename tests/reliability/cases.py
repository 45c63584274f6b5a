"""Bad-input cases generated from a paper's config dataclass (``param(...)`` metadata: type, min, max, choices,
min_len), so a paper's parameters are covered the day the paper lands, with no list to maintain.

For every parameter: an unknown name (a misspelling of it), one or more values of a wrong type, and every
out-of-range value its metadata implies (below ``min``, above ``max``, outside ``choices``, shorter than
``min_len``, one element of a tuple out of range). A parameter whose metadata admits no out-of-range value (a bool,
a free string) is listed in :func:`unbounded`, so the count of what was not tried is visible too.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass

from replicate.config import fields_of
from replicate.papers import config_class


@dataclass(frozen=True)
class Case:
    paper: str
    param: str  # the parameter the error message must name
    kind: str  # unknown_name | wrong_type | out_of_range
    value: object
    name: str  # the name passed (differs from ``param`` only for scale, which is not an override)

    @property
    def id(self) -> str:
        return f"{self.paper}-{self.kind}-{self.name}={self.value!r}"[:120]


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


def cases_for(paper: str) -> list[Case]:
    cls = config_class(paper)
    fields = fields_of(cls)
    smoke = cls.smoke()
    out = []
    for name, f in fields.items():
        out.append(Case(paper, _misspelling(name, set(fields)), "unknown_name", getattr(smoke, name),
                        _misspelling(name, set(fields))))
        for v in _wrong_types(f.type):
            out.append(Case(paper, name, "wrong_type", v, name))
        for v in _out_of_range(f.type, dict(f.metadata), getattr(smoke, name)):
            out.append(Case(paper, name, "out_of_range", v, name))
    return out


def unbounded(paper: str) -> list[str]:
    """Parameters whose metadata admits no out-of-range value (bools, free strings): not tried for range."""
    cls = config_class(paper)
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
