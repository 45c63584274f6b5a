"""A run's numbers do not depend on what the process did before it (a fresh run trains earlier runs; a rerun after
a kill loads them from the cache, which consumes no random numbers). A module passed to ``train`` as a factory is
built after the run's seed is set. Found by the kill-and-resume test: TSL's re-weighted runs differed after a rerun."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
import tiny_run  # noqa: E402

from replicate.models.lm import CausalLM  # noqa: E402
from replicate.models.trainer import train  # noqa: E402


def test_a_factory_module_is_seeded_by_the_run_not_by_the_caller(tmp_path, monkeypatch):
    spec = tiny_run.spec(10)
    batches, evals = tiny_run.data()
    finals = []
    for i, caller_draws in enumerate((0, 12345)):
        monkeypatch.setenv("REPLICATE_RUNS", str(tmp_path / str(i)))
        torch.manual_seed(7)
        torch.rand(caller_draws)  # whatever the caller did before
        out = train("tiny", spec, batches, evals, module=lambda: CausalLM(spec.model, spec.optim))
        finals.append(out["final"]["val"])
    assert torch.equal(finals[0], finals[1])
