"""Checkpoints and caches are loaded with ``weights_only=True``; a corrupt one is detected, reported in one line,
removed and rebuilt, never silently used. (The notebook-level version, corrupt caches under a real run, is part of
``test_interrupt_resume.py``; the trainer's checkpoint and result files are in ``tests/models/test_trainer.py``.)"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import REPO
from replicate import io
from replicate.data import tokenizer
from replicate.data.corpora import Document


class NotAWeight:  # an arbitrary object: a weights-only load must refuse to unpickle it
    def __reduce__(self):
        return (print, ("a pickle that runs code",))


CORRUPTIONS = {
    "empty": lambda good: b"",
    "garbage": lambda good: b"\x00\xffnot a file of this kind" * 10,
    "truncated": lambda good: good[: len(good) // 2],
    "header_flip": lambda good: good[:64] + bytes([good[64] ^ 0xFF]) + good[65:],  # inside the first zip header
}


def _one_report(caplog, path: Path) -> None:
    lines = [r.getMessage() for r in caplog.records if "corrupt file" in r.getMessage()]
    assert len(lines) == 1 and str(path) in lines[0] and "\n" not in lines[0], lines


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_torch_file_is_reported_and_removed(tmp_path, caplog, how):
    path = tmp_path / "result.pt"
    io.torch_save(path, {"w": torch.arange(100.0), "steps": [1, 2]})
    path.write_bytes(CORRUPTIONS[how](path.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="replicate"):
        assert io.torch_load(path) is None
    _one_report(caplog, path)
    assert not path.exists()


def test_a_pickle_with_code_is_refused_not_run(tmp_path, caplog, capsys):
    path = tmp_path / "cache.pt"
    torch.save({"x": NotAWeight()}, path)
    with caplog.at_level(logging.WARNING, logger="replicate"):
        assert io.torch_load(path) is None
    assert "a pickle that runs code" not in capsys.readouterr().out
    _one_report(caplog, path)


def test_corrupt_json_is_reported_and_removed(tmp_path, caplog):
    path = tmp_path / "x.json"
    path.write_text('{"a": 1')
    with caplog.at_level(logging.WARNING, logger="replicate"):
        assert io.read_json(path) is None
    _one_report(caplog, path)


DOCS = tuple(Document(f"d{i}", f"the quick brown fox {i} jumps over the lazy dog\n" * 20) for i in range(6))


def test_corrupt_tokenizer_and_token_caches_are_rebuilt(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("REPLICATE_RUNS", str(tmp_path))
    tok = tokenizer.train_bpe(DOCS, 300, name="t")
    ids = tokenizer.encode_documents(tok, DOCS)
    tok_file = next((tmp_path / "cache" / "tokenizers").glob("*.json"))
    ids_file = next((tmp_path / "cache" / "tokens").glob("*.npz"))
    for path in (tok_file, ids_file):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="replicate"):
        tok2 = tokenizer.train_bpe(DOCS, 300, name="t")
        ids2 = tokenizer.encode_documents(tok2, DOCS)
    reports = [r.getMessage() for r in caplog.records if "corrupt file" in r.getMessage()]
    assert len(reports) == 2 and all("\n" not in m for m in reports), reports
    assert tok2.to_str() == tok.to_str()
    assert all(np.array_equal(a, b) for a, b in zip(ids, ids2))
    assert tok_file.exists() and ids_file.exists()  # rebuilt


def _calls(tree, attr: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
            yield node


def test_every_load_in_the_package_is_weights_only():
    """Static guard over ``replicate/`` (new papers included): every ``torch.load`` passes ``weights_only=True``,
    every Lightning ``fit`` resuming from a checkpoint passes ``weights_only=True``, no ``pickle.load`` and no
    ``np.load(allow_pickle=True)``."""
    problems = []
    for path in sorted((REPO / "replicate").rglob("*.py")):
        tree = ast.parse(path.read_text())
        where = lambda n: f"{path.relative_to(REPO)}:{n.lineno}"
        for call in _calls(tree, "load"):
            kw = {k.arg: k.value for k in call.keywords}
            owner = ast.unparse(call.func.value)
            if owner == "torch" and not (isinstance(kw.get("weights_only"), ast.Constant)
                                         and kw["weights_only"].value is True):
                problems.append(f"{where(call)} torch.load without weights_only=True")
            if owner in ("pickle", "cloudpickle", "dill"):
                problems.append(f"{where(call)} {owner}.load")
            if owner in ("np", "numpy") and isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value:
                problems.append(f"{where(call)} np.load(allow_pickle=True)")
        for call in _calls(tree, "fit"):
            kw = {k.arg: k.value for k in call.keywords}
            if "ckpt_path" in kw and not (isinstance(kw.get("weights_only"), ast.Constant)
                                          and kw["weights_only"].value is True):
                problems.append(f"{where(call)} fit(ckpt_path=...) without weights_only=True")
    assert not problems, problems
