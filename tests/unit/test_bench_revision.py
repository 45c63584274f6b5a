"""The decoder benchmark against a git revision (``python -m replicate.bench dense --against REV``): the revision's
package is imported beside ours, and the comparison checks the two decoders are the same arithmetic."""

import shutil
import subprocess
from pathlib import Path

import pytest

from replicate.bench import dense
from replicate.models.decoder import DecoderConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_against_head_is_the_same_decoder():
    subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True, capture_output=True)
    rev_module, sha = dense.load_revision("HEAD")
    assert rev_module.__name__ == f"_replicate_{sha}.models.decoder"
    cfg = DecoderConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=48, max_seq_len=16)
    row = dense.run_against(rev_module, sha, cfg, batch=2, seq_len=16, rounds=2, steps=1, warmup=1, log=lambda m: None)
    assert row["same_init"] and row["identical_loss_and_grads"], row
    assert row["tokens_per_s_ours"] > 0 and row["tokens_per_s_rev"] > 0 and row["revision"] == sha
