"""Pins agree everywhere: pyproject, the lock, environment.yml and binder/environment.yml."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pins(lines):
    out = {}
    for line in lines:
        m = re.match(r"^\s*-?\s*([A-Za-z0-9_.\-\[\]]+)==([^\s#;]+)", line)
        if m:
            out[re.sub(r"\[.*\]", "", m.group(1)).lower().replace("_", "-")] = m.group(2)
    return out


def test_environment_files_and_pyproject_agree_with_the_lock():
    lock = _pins((ROOT / "requirements-lock.txt").read_text().splitlines())
    assert lock["torch"] == "2.13.0"
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _pins(py["dependencies"] + [d for deps in py["optional-dependencies"].values() for d in deps])
    for f in ("environment.yml", "binder/environment.yml"):
        env = _pins((ROOT / f).read_text().splitlines())
        assert env, f
        for name, version in env.items():
            assert lock.get(name) == version, f"{f}: {name}=={version} but the lock has {lock.get(name)}"
    for name, version in declared.items():
        assert lock.get(name) == version, f"pyproject: {name}=={version} but the lock has {lock.get(name)}"


def test_binder_post_build_fails_on_errors():
    text = (ROOT / "binder" / "postBuild").read_text()
    assert text.startswith("#!/bin/bash") and "\nset -e\n" in text and "pip install --no-cache-dir --no-deps -e ." in text


def test_readme_leads_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first_code = text.split("```")[1]
    assert "make test" in first_code and "make replicate" in first_code
