"""Config validation: every bad parameter is one clear line naming it; scales and hashes are stable."""

import dataclasses

import pytest

from replicate.config import SCALES, ConfigError, config_hash, help_table, to_dict
from replicate.papers import config_class, resolve_config
from replicate.papers import implemented

PAPER = "temporal_scaling_law"


def test_default_scale_is_small_and_factories_validate():
    for pid in implemented():
        cls = config_class(pid)
        assert resolve_config(pid) == cls.small()
        for s in SCALES:
            base = getattr(cls, s)()
            assert base.scale == s
            again = resolve_config(pid, s, **{k: v for k, v in to_dict(base).items() if k != "scale"})
            assert again == base


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"steps": -3}, "parameter 'steps': must be an integer in [10, "),
        ({"steps": "abc"}, "parameter 'steps': must be an integer"),
        ({"steps": 3.5}, "parameter 'steps': must be an integer"),
        ({"steps": True}, "parameter 'steps': must be an integer"),
        ({"lr": "fast"}, "parameter 'lr': must be a number"),
        ({"a0_form": "cubic"}, "parameter 'a0_form': must be one of 'log' | 'hyperbolic'"),
        ({"fit_fractions": (0.3, 2.0)}, "parameter 'fit_fractions'"),
        ({"bogus": 1}, "parameter 'bogus': unknown for temporal_scaling_law; allowed: scale, seed"),
        ({"n_heads": 5}, "parameter 'n_heads': must divide d_model=192"),
    ],
)
def test_bad_values_are_one_line_errors(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        resolve_config(PAPER, "small", **overrides)
    msg = str(e.value)
    assert fragment in msg
    assert "\n" not in msg


def test_bad_scale_and_unknown_paper():
    with pytest.raises(ConfigError, match=r"parameter 'scale': must be one of smoke \| small \| paper, got 'nonsense'"):
        resolve_config(PAPER, "nonsense")
    with pytest.raises(ConfigError, match="unknown paper id 'nope'"):
        resolve_config("nope")


def test_ints_are_accepted_for_floats_and_lists_for_tuples():
    cfg = resolve_config(PAPER, "smoke", lr=1, fit_fractions=[0.2, 0.3])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.fit_fractions == (0.2, 0.3)


def test_config_hash_is_stable_and_sensitive():
    a, b = resolve_config(PAPER, "smoke"), resolve_config(PAPER, "smoke")
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 12
    assert config_hash(a) != config_hash(dataclasses.replace(a, seed=1))


def test_help_table_documents_every_field():
    rows = help_table(config_class(PAPER))
    assert {r["name"] for r in rows} == set(to_dict(config_class(PAPER).small()))
    assert all(r["help"] for r in rows)
