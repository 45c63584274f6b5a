"""The reliability suite runs with the network off: in this process (autouse fixture) and in every Python process it
starts (``harness.offline_env``: ``offline/sitecustomize.py`` on ``PYTHONPATH``)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import offline_guard  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _network_off():
    offline_guard.install()
    yield
    offline_guard.uninstall()
