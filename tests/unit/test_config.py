"""Config validation: every bad parameter is one clear line naming it; scales and hashes are stable."""

import dataclasses
import math

import fake_paper
import pytest

from replicate.config import SCALES, ConfigError, config_hash, help_table, resolve, to_dict
from replicate.papers import config_class, implemented, resolve_config

PAPER = "temporal_scaling_law"


@pytest.fixture
def fake():
    yield fake_paper.install()
    fake_paper.uninstall()


def test_default_scale_is_small_and_factories_validate():
    for pid in implemented():
        cls = config_class(pid)
        assert resolve_config(pid) == cls.small()
        for s in SCALES:
            base = getattr(cls, s)()
            assert base.scale == s
            # force: `paper` may exceed this machine (replicate.budget); forced, it still validates
            again = resolve(cls, s, **{**{k: v for k, v in to_dict(base).items() if k != "scale"}, "force": True})
            assert again == dataclasses.replace(base, force=True)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"steps": -3}, "parameter 'steps': must be an integer in [10, "),
        ({"steps": "abc"}, "parameter 'steps': must be an integer"),
        ({"steps": 3.5}, "parameter 'steps': must be an integer"),
        ({"steps": True}, "parameter 'steps': must be an integer"),
        ({"lr": "fast"}, "parameter 'lr': must be a finite number"),
        ({"c_form": "cubic"}, "parameter 'c_form': must be one of 'lr_power' | 'power'"),
        ({"fit_fractions": (0.3, 2.0)}, "parameter 'fit_fractions'"),
        ({"bogus": 1}, "parameter 'bogus': unknown for temporal_scaling_law; allowed: scale, seed"),
        ({"n_heads": 5}, "parameter 'n_heads': must divide d_model"),
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


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(fake, value):
    """Defect 3 (issue 10): NaN passed every range check (comparisons with NaN are false), and ±inf passed any
    check without a bound."""
    for name, v in [("lr", value), ("margin", value), ("fractions", (0.2, value))]:
        with pytest.raises(ConfigError, match=rf"^parameter '{name}': must be .*finite number.*, got "):
            resolve(fake, "smoke", **{name: v})


def test_bools_accept_the_spellings_the_message_names(fake):
    """Defect 11: ``-p run_extra=true`` said "must be true/false, got 'true'"."""
    for word, value in [("true", True), ("True", True), ("false", False), ("False", False)]:
        assert resolve(fake, "smoke", run_extra=word).run_extra is value
    for bad in ("yes", "1", 1, "TRUE"):
        with pytest.raises(ConfigError) as e:
            resolve(fake, "smoke", run_extra=bad)
        assert "must be true | false | True | False, got" in str(e.value)


def test_a_tuple_arrives_as_a_list_or_as_the_string_papermill_passes(fake):
    """Defect 1: ``papermill -p fractions "(0.2,)"`` hands the notebook a string; the CLI sends lists."""
    for value in ["(0.2,)", " [0.2] ", [0.2], (0.2,)]:
        assert resolve(fake, "smoke", fractions=value).fractions == (0.2,)
    for bad in ["0.2", "abc", "(0.2", "{'a': 1}"]:
        with pytest.raises(ConfigError, match="parameter 'fractions': must be a tuple of"):
            resolve(fake, "smoke", fractions=bad)


def test_overrides_cannot_collide_with_resolves_own_arguments(fake):
    """Defect 5: ``-p scale=paper`` and ``-p paper_id=x`` crashed with a TypeError traceback."""
    with pytest.raises(ConfigError, match="^parameter 'scale': pass it as the scale"):
        resolve(fake, "smoke", scale="paper")
    for name in ("cls", "paper_id", "overrides"):
        with pytest.raises(ConfigError, match=rf"^parameter '{name}': unknown for {fake_paper.FAKE_ID}"):
            resolve(fake, "smoke", **{name: 1})


def test_sets_and_grids_refuse_repeats_and_disorder(fake):
    """"Also accepted without a word": duplicate or unsorted values in tuples that mean sets or grids."""
    with pytest.raises(ConfigError, match=r"^parameter 'grid': must be strictly increasing \(no repeats\), got \(1, 4, 2\)"):
        resolve(fake, "smoke", grid=(1, 4, 2))
    with pytest.raises(ConfigError, match="^parameter 'grid': must be strictly increasing"):
        resolve(fake, "smoke", grid=(1, 2, 2))
    with pytest.raises(ConfigError, match=r"^parameter 'arms': must not repeat a value, got \('a', 'a'\)"):
        resolve(fake, "smoke", arms=("a", "a"))
    assert resolve(fake, "smoke", arms=("b", "a")).arms == ("b", "a")  # a set: any order


def test_declared_constraints_name_their_first_parameter(fake):
    with pytest.raises(ConfigError, match=r"^parameter 'heads': must divide width \(64\), got 3$"):
        resolve(fake, "smoke", heads=3)
