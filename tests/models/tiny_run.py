"""A tiny training run used by the resume tests (run as a script so it can be SIGKILLed):
python tests/models/tiny_run.py OUT.pt [steps] [--continued]  — writes the run's result to OUT.pt; with
``--continued`` the run starts from a 10-step parent run (trained first, or reused from the cache) and continues its
data order and learning-rate schedule."""

import sys
import time

import numpy as np
import torch

from replicate.data import lm
from replicate.models.decoder import DecoderConfig
import dataclasses

from replicate.models.lm import LRMap, OptimConfig
from replicate.models.trainer import TrainSpec, continued, train


def spec(steps: int = 60) -> TrainSpec:
    return TrainSpec(DecoderConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=32),
                     OptimConfig(lr=3e-3, warmup_steps=5, max_steps=steps), "tiny", batch_size=4, seq_len=32, seed=0,
                     eval_steps=(5, 15, 30, 45, steps), ckpt_every=10)


class SlowBatches(lm.Batches):
    """The same batches, each served ``delay`` seconds late: a run the kill test can catch between checkpoints on
    any machine (the tiny model trains 60 steps in well under a second on a fast, quiet CPU)."""

    delay = 0.05

    def batch(self, step):
        time.sleep(self.delay)
        return super().batch(step)


def data(slow: bool = False):
    rng = np.random.default_rng(0)
    tokens = (np.cumsum(rng.integers(0, 3, 20_000)) % 64).astype(np.uint16)  # a learnable stream
    batches = (SlowBatches if slow else lm.Batches)((lm.Stream(tokens),), (1.0,), 4, 32, seed=0)
    return batches, {"val": lm.eval_windows([tokens[:4000]], 8, 32)}


def train_seed(steps: int, seed: int):
    """The tiny run with another seed, at one thread (a picklable call for ``prefetch``'s workers)."""
    b, ev = data()
    return train("tiny", dataclasses.replace(spec(steps), seed=seed), b, ev, threads=1)


def fail():
    raise ValueError("this call fails in its worker")


PARENT_STEPS = 10


def continued_run(steps: int, slow: bool = False):
    """(parent result, the continued spec, its batches, eval sets): a 10-step parent, then ``steps`` more steps on
    the rest of a (10 + steps)-step schedule, the data order continued."""
    b, ev = data(slow=slow)
    parent = train("tiny", dataclasses.replace(spec(PARENT_STEPS), eval_steps=()), b, ev, keep_weights=True)
    whole = OptimConfig(lr=3e-3, warmup_steps=5, max_steps=PARENT_STEPS + steps)
    child = continued(dataclasses.replace(spec(steps), eval_steps=(5, steps)), parent,
                      lr_map=LRMap(whole, offset=PARENT_STEPS))
    return parent, child, dataclasses.replace(b, offset=PARENT_STEPS), ev


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    steps = int(args[1]) if len(args) > 1 else 60
    if "--continued" in sys.argv:
        parent, child, b, ev = continued_run(steps, slow=True)
        torch.save(train("tiny", child, b, ev, parent=parent), args[0])
    else:
        b, ev = data(slow=True)
        torch.save(train("tiny", spec(steps), b, ev), args[0])
