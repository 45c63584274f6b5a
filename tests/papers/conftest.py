"""Fixtures every paper's tests share: a private run cache per test module, and the paper's ``smoke`` config.

A test module names its paper once, ``PAPER = "<id>"``; ``cfg`` is then ``resolve_config(PAPER, "smoke")``."""

import pytest

from replicate.papers import resolve_config


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """``REPLICATE_RUNS`` pointed at a fresh folder for the whole module (training runs never touch ``runs/``)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("REPLICATE_RUNS", str(tmp_path_factory.mktemp("runs")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def cfg(request):
    return resolve_config(request.module.PAPER, "smoke")
