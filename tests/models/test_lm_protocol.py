"""The LightningModule protocol the trainer serves: answer-only loss masks, token accuracy, trainable subsets, and
multi-stage recipes (each stage started from the one before)."""

import dataclasses
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from replicate.data import lm
from replicate.models.decoder import DecoderConfig
from replicate.models.lm import CausalLM, OptimConfig
from replicate.models.trainer import Stage, TrainSpec, train, train_stages

sys.path.insert(0, str(Path(__file__).parent))
import tiny_run  # noqa: E402

CFG = DecoderConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_seq_len=12)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLICATE_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def _masked_pool(n=16, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (n, T + 1), generator=g)
    mask = torch.zeros(n, T + 1, dtype=torch.bool)
    mask[:, T // 2 :] = True  # the "answer": the second half of each row
    return ids, mask


def _quiet(m):
    m.log = lambda *a, **k: None
    m._trainer = None
    return m


def test_masked_loss_counts_only_the_answer_tokens():
    torch.manual_seed(0)
    m = _quiet(CausalLM(CFG, OptimConfig()))
    ids, mask = _masked_pool(4)
    loss = m.training_step({"ids": ids, "loss_mask": mask}, 0)
    logits = m(ids[:, :-1]).logits
    tm = mask[:, 1:]
    want = F.cross_entropy(logits[tm], ids[:, 1:][tm])
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    # an answer target counts; the plain (unmasked) loss counts every target and differs
    flip = ids.clone()
    flip[:, -1] = (flip[:, -1] % 39) + 1
    assert m.training_step({"ids": flip, "loss_mask": mask}, 0).item() != pytest.approx(loss.item())
    assert m.training_step(ids, 0).item() != pytest.approx(loss.item())


def test_masked_evaluation_gives_loss_correctness_and_the_mask():
    torch.manual_seed(0)
    m = CausalLM(CFG, OptimConfig())
    ids, mask = _masked_pool(5)
    out = m.evaluate({"ids": ids, "loss_mask": mask})
    assert out["loss"].shape == out["correct"].shape == out["mask"].shape == (5, 12)
    logits = m(ids[:, :-1]).logits
    assert torch.equal(out["correct"], logits.argmax(-1) == ids[:, 1:])
    assert torch.equal(out["mask"], mask[:, 1:])
    assert torch.allclose(out["loss"], m.per_token_loss(ids))


def test_only_the_trainable_subset_moves(runs):
    b, ev = tiny_run.data()
    spec = dataclasses.replace(tiny_run.spec(6), optim=dataclasses.replace(tiny_run.spec(6).optim,
                                                                       trainable=("layers.1.*",)), eval_steps=())
    res = train("tiny", spec, b, ev, keep_weights=True)
    L.seed_everything(spec.seed, workers=True, verbose=False)  # the run's initial weights: seeded, then built
    init = CausalLM(spec.model, spec.optim).state_dict()
    moved = {k for k, v in res["state_dict"].items() if not torch.equal(v, init[k])}
    assert moved and all(k.startswith("model.layers.1.") for k in moved)
    with pytest.raises(ValueError, match="matches no parameter"):
        CausalLM(spec.model, dataclasses.replace(spec.optim, trainable=("nope.*",))).configure_optimizers()


def test_a_masked_fine_tuning_run_trains_on_answers(runs):
    ids, mask = _masked_pool(32)
    spec = TrainSpec(CFG, OptimConfig(lr=1e-2, warmup_steps=2, max_steps=30), "masked", 8, 12, 0, ckpt_every=10)
    res = train("tiny", spec, lm.MaskedBatches(ids, mask, 8, seed=0), {"sft": {"ids": ids, "loss_mask": mask}})
    final = res["final"]["sft"]
    assert set(final) == {"loss", "correct", "mask"}
    before = CausalLM(CFG, OptimConfig()).evaluate({"ids": ids, "loss_mask": mask})
    assert final["loss"][final["mask"]].mean() < before["loss"][before["mask"]].mean() - 0.2  # it learned the answers


def test_two_stage_recipe_extends_the_context_from_the_first_stage(runs):
    b, ev = tiny_run.data()
    s1 = tiny_run.spec(8)
    long_model = dataclasses.replace(s1.model, max_seq_len=64, rope_theta=40000.0)  # stage 2: longer, new RoPE base
    b2 = lm.Batches(b.streams, b.weights, 2, 64, seed=0)
    s2 = TrainSpec(long_model, dataclasses.replace(s1.optim, max_steps=4), "tiny-long", 2, 64, 0, ckpt_every=10)
    first, second = train_stages("tiny", [Stage(s1, b, ev), Stage(s2, b2, {"val64": lm.eval_windows(
        [b.streams[0].tokens[:4000]], 4, 64)})])
    assert "state_dict" in first and "state_dict" not in second
    again = train_stages("tiny", [Stage(s1, b, ev), Stage(s2, b2, {"val64": lm.eval_windows(
        [b.streams[0].tokens[:4000]], 4, 64)})])
    assert torch.equal(again[1]["final"]["val64"], second["final"]["val64"])  # cached, keyed by its parent
    alone = train("tiny", s2, b2, {"val64": lm.eval_windows([b.streams[0].tokens[:4000]], 4, 64)})
    assert alone["key"] != second["key"]  # the continued stage is not the fresh run of the same spec


def test_per_expert_load_is_logged_during_training(runs):
    b, ev = tiny_run.data()
    s = tiny_run.spec(10)
    spec = dataclasses.replace(s, model=dataclasses.replace(s.model, ffn="moe", ffn_kwargs=(("n_experts", 4), ("k", 1))),
                               eval_steps=())
    train("tiny", spec, b, ev)
    import pandas as pd

    metrics = pd.read_csv(runs / "tiny" / spec.key / "metrics.csv")
    cols = [c for c in metrics.columns if c.startswith("stats/layer0/load_e")]
    assert len(cols) == 4 and metrics[cols].dropna().sum(axis=1).round(6).eq(1.0).all()  # shares of the 4 experts
