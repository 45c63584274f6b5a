"""The one trainer factory and the run cache every paper trains through.

``train(paper_id, spec, ...)`` keys a training run by the hash of its :class:`TrainSpec` (model, optimiser,
data, evaluation schedule, seed) and the package version, and keeps it under ``runs/<paper_id>/<hash>/``:
- a finished run (``result.pt`` present and loadable) is reused, not retrained;
- an interrupted run resumes from ``ckpt/last.ckpt`` (Lightning ``ckpt_path``), and because batches are a pure
  function of (seed, step) and the evaluation records live in the checkpoint, it ends with the same numbers as a
  run never interrupted (tests/reliability checks this with SIGKILL);
- a corrupt checkpoint or result is reported in one line and rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
import warnings
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from replicate.config import config_hash
from replicate.data.lm import Batches, LMDataModule
from replicate.io import run_lock, torch_load, torch_save
from replicate.models import convert
from replicate.models.decoder import DecoderConfig
from replicate.models.lm import CausalLM, LRMap, OptimConfig
from replicate.paths import runs_dir
from replicate.registry import Registry

log = logging.getLogger("replicate")


# Part of every run's cache key: bump it when the training step's arithmetic changes, so cached runs of the old
# code are retrained instead of reused. 2: the LM head fused with the cross-entropy (replicate.models.loss);
# 3: its softmax in one in-place exp pass.
TRAINING_REVISION = 3


@dataclass(frozen=True)
class TrainSpec:
    """Everything that determines a training run's numbers (its hash is the run's cache key)."""

    model: DecoderConfig
    optim: OptimConfig
    data: str  # a description of the data that fixes it: corpora, tokenizer, mixture weights, splits
    batch_size: int
    seq_len: int
    seed: int
    eval_steps: tuple = ()  # steps after which the per-position evaluation runs
    ckpt_every: int = 50
    # A run started from another run: its final weights (``init_from`` = the parent's key), converted by the named
    # ``conversion`` (CONVERSIONS; "none" keeps them as they are), and optionally a learning rate that continues a
    # longer schedule (``lr_map``). All three are in the key, so a continued run is never confused with a fresh one.
    init_from: str = ""
    conversion: tuple = ("none", ())  # (name, ((kwarg, value), ...))
    lr_map: LRMap | None = None

    @property
    def key(self) -> str:
        return config_hash(self, TRAINING_REVISION)


# Conversions of a parent run's weights into a continued run's initial weights: name -> f(state_dict, module,
# **kwargs) -> state_dict for ``module`` (the continued run's freshly built LightningModule, so a conversion can
# keep the new parts' initialisation). The shared layer and papers register more (dense FFN -> partitioned
# experts, MHA -> GQA); "none" loads the parent's weights unchanged.
CONVERSIONS = Registry("conversion")
register_conversion = CONVERSIONS.register
register_conversion("none")(lambda sd, module: sd)
# the shared layer's (replicate.models.convert), each given the continued run's decoder as its target:
register_conversion("mha_to_gqa")(lambda sd, module: convert.gqa_state(sd, module.model))  # K/V heads mean-pooled
register_conversion("dense_to_experts")(lambda sd, module: convert.partition_state(sd, module.model))  # FFN cut
register_conversion("attention_surgery")(lambda sd, module: convert.attention_state(sd, module.model))  # reuse/drop


def continued(spec: TrainSpec, parent: dict, conversion: str = "none", lr_map: LRMap | None = None,
              **kwargs) -> TrainSpec:
    """``spec`` as a run that starts from ``parent``'s final weights (a result of :func:`train` with
    ``keep_weights=True``), converted by ``conversion`` with ``kwargs``."""
    CONVERSIONS[conversion]  # an unknown name fails here, in one line
    if "state_dict" not in parent:
        raise ValueError("parent: train the parent run with keep_weights=True (its result holds no weights)")
    return dataclasses.replace(spec, init_from=parent["key"], conversion=(conversion, tuple(sorted(kwargs.items()))),
                               lr_map=lr_map)


@dataclass(frozen=True)
class Stage:
    """One stage of a multi-stage recipe (:func:`train_stages`): its run, data and evaluation sets, and how it starts
    from the stage before (a named conversion of that stage's weights, a learning rate continuing a longer schedule,
    a LightningModule factory for a paper's own module)."""

    spec: TrainSpec
    batches: object
    eval_sets: dict
    conversion: str = "none"
    conversion_kwargs: tuple = ()
    lr_map: LRMap | None = None
    module: Callable | None = None


def train_stages(paper_id: str, stages: list[Stage], *, parent: dict | None = None, keep_last: bool = False,
                 **trainer_kwargs) -> list[dict]:
    """Pre-train, convert, continue: run ``stages`` in order, each started from the final weights of the one before
    (the first from ``parent`` when given: a shared pre-trained run), converted by its ``conversion``. Every stage
    but the last keeps its weights for the next (``keep_last`` keeps the last one's too). Each stage is an ordinary
    cached run whose key names its parent, so a rerun reuses finished stages and resumes an interrupted one."""
    results = []
    for i, st in enumerate(stages):
        spec = st.spec if parent is None else continued(st.spec, parent, st.conversion, st.lr_map,
                                                        **dict(st.conversion_kwargs))
        res = train(paper_id, spec, st.batches, st.eval_sets, module=st.module, parent=parent,
                    keep_weights=keep_last or i < len(stages) - 1, **trainer_kwargs)
        results.append(res)
        parent = res
    return results


def progress_bar_enabled() -> bool:
    """Progress bars in JupyterLab (a kernel whose parent is the Jupyter server), off under Papermill, nbval,
    pytest and scripts. ``REPLICATE_PROGRESS=0|1`` overrides."""
    env = os.environ.get("REPLICATE_PROGRESS")
    if env is not None:
        return env == "1"
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return "jupyter-lab" in parent or "jupyter_server" in parent or "jupyter-notebook" in parent


def make_trainer(run_dir: Path, max_steps: int, *, accelerator="cpu", devices=1, num_nodes=1, strategy="auto",
                 precision="32-true", ckpt_every=50, callbacks=(), log_every=10, grad_clip=1.0) -> L.Trainer:
    """A Lightning Trainer with CSV logs and a resumable ``last.ckpt`` under ``run_dir``. Multi-GPU and multi-node
    runs only change ``accelerator`` / ``devices`` / ``num_nodes`` / ``strategy`` (``ddp``, ``fsdp``)."""
    ckpt = ModelCheckpoint(dirpath=run_dir / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=ckpt_every)
    return L.Trainer(
        max_steps=max_steps,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=precision,
        logger=CSVLogger(run_dir, name="", version=""),
        callbacks=[*callbacks, ckpt],
        deterministic=True if accelerator == "cpu" else "warn",
        enable_progress_bar=progress_bar_enabled(),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=log_every,
        gradient_clip_val=grad_clip or None,
        max_epochs=-1,
    )


class PositionEval(Callback):
    """After each step in ``steps``, the per-token loss on every fixed evaluation set: records[(set, step)] =
    (W, T) fp32. The records are part of the checkpoint (``state_dict``), so a resumed run keeps them."""

    def __init__(self, eval_sets: dict[str, torch.Tensor], steps: tuple[int, ...]):
        self.eval_sets, self.steps = eval_sets, set(steps)
        self.records: dict[str, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step in self.steps:
            for name, windows in self.eval_sets.items():
                self.records[f"{name}@{step}"] = module.evaluate(windows)

    def state_dict(self):
        return {"records": dict(self.records)}

    def load_state_dict(self, state):
        self.records = dict(state["records"])


def _valid_checkpoint(path: Path) -> bool:
    """A checkpoint that loads with ``weights_only=True``; a corrupt one is reported, removed, and not used."""
    return path.exists() and torch_load(path) is not None


def train(paper_id: str, spec: TrainSpec, batches: Batches, eval_sets: dict[str, torch.Tensor], *,
          accelerator="cpu", devices=1, num_nodes=1, strategy="auto", precision="32-true",
          module: CausalLM | Callable[[], CausalLM] | None = None, keep_weights: bool = False,
          threads: int = 0, parent: dict | None = None) -> dict:
    """Train (or reuse, or resume) the run ``spec``. ``eval_sets``: name -> (W, T+1) windows, or a masked set
    ``{"ids", "loss_mask"}``; each is scored by the module's ``evaluate`` (see ``CausalLM``) after every step in
    ``spec.eval_steps`` and at the end. Returns ``{"evals": {set: {step: metrics}}, "final": {set: metrics},
    "wall_s": float, "key": str, "n_params": int}``. ``module`` lets a paper pass a CausalLM subclass: preferably a zero-argument factory
    (``module=lambda: MyLM(...)``), called after the run's seed is set, because a module built by the caller has
    initial weights that depend on the caller's random state (which differs between a fresh run and one whose
    earlier training runs came from the cache); an instance is right when its weights are loaded anyway (e.g. one
    initialised from another run's weights; the spec's ``data`` must then name that run so the key differs).
    ``keep_weights``: also store the final ``state_dict`` (CPU tensors) in the result, for runs that others
    continue from (a cached result without weights is then retrained). ``threads``: torch's intra-op threads while
    this run trains and evaluates (0: leave torch's setting), restored afterwards. Not part of the key: a run is
    deterministic for a given thread count, and other counts may round differently (as other CPUs do). ``parent``: the
    result (with weights) of the run ``spec.init_from`` names (see :func:`continued`); its weights, converted by
    ``spec.conversion``, replace the module's initial ones.
    """
    lock = run_lock(runs_dir() / paper_id / spec.key / ".lock", f"training run {paper_id}/{spec.key}")
    with torch_threads(threads), lock:  # two processes never train one run at once (the second is refused)
        return _train(paper_id, spec, batches, eval_sets, accelerator=accelerator, devices=devices,
                      num_nodes=num_nodes, strategy=strategy, precision=precision, module=module,
                      keep_weights=keep_weights, parent=parent)


def train_curve(paper_id: str, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The training loss a run logged (every ``log_every`` steps, the loss of that step's batch), read from its CSV
    log in the run folder: (steps, losses), or None where there is none. A resumed run's log starts at the resume."""
    path = runs_dir() / paper_id / key / "metrics.csv"
    if not path.exists():
        return None
    import csv

    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train_loss")]
    if not rows:
        return None
    return (np.array([int(r["step"]) for r in rows]), np.array([float(r["train_loss"]) for r in rows]))


def run_keys(records: list[dict], variant: str) -> dict[int, str]:
    """seed -> run key of ``variant``'s runs among ``records`` (a paper's run records: ``variant``, ``seed`` and the
    ``result`` of :func:`train`), the pairing :func:`gap_drift` takes: two variants' runs of one seed saw the same
    batches."""
    return {r["seed"]: r["result"]["key"] for r in records if r["variant"] == variant}


def gap_drift(paper_id: str, keys_a: dict, keys_b: dict, steps: int, frac: float = 0.2) -> float | None:
    """How the paired gap a − b still moves at the end of training: per common seed (``keys_*``: seed -> run key;
    the same seed means the same batches, so the logged batch losses pair exactly), the mean training-loss gap over
    the last ``frac`` of the ``steps`` minus that over the ``frac`` before, averaged over seeds; None where a run's
    log is missing or too short (see :func:`train_curve`)."""
    drifts = []
    for seed in sorted(set(keys_a) & set(keys_b)):
        ca, cb = train_curve(paper_id, keys_a[seed]), train_curve(paper_id, keys_b[seed])
        if ca is None or cb is None:
            return None
        ca, cb = dict(zip(*ca)), dict(zip(*cb))
        common = sorted(set(ca) & set(cb))
        late = [ca[t] - cb[t] for t in common if t >= (1 - frac) * steps]
        early = [ca[t] - cb[t] for t in common if (1 - 2 * frac) * steps <= t < (1 - frac) * steps]
        if not late or not early:
            return None
        drifts.append(float(np.mean(late) - np.mean(early)))
    return float(np.mean(drifts)) if drifts else None


def late_step(steps: int, frac: float) -> int:
    """The step after which a run is scored for :func:`heldout_drift`: ``1 − frac`` of ``steps`` (at least 1)."""
    return max(1, min(steps - 1, round((1 - frac) * steps)))


def position_losses(v) -> torch.Tensor:
    """The (W, T) per-position losses of one evaluation record (a tensor, or a module's dict holding "loss")."""
    return v["loss"] if isinstance(v, dict) else v


def heldout_drift(run_a: dict, run_b: dict, step: int, eval_set: str = "heldout") -> np.ndarray | None:
    """How the held-out gap a − b still moved at the end of training, per fixed evaluation window: the window's mean
    loss gap at the end minus that after ``step`` (both runs scored on the same windows there: ``TrainSpec.
    eval_steps``), float64 (W,); None where either run was not scored at ``step``. Held out, unlike
    :func:`gap_drift`: the training-loss gap is in other units (a training gap is larger than the held-out one) and
    confounded once windows repeat."""
    at_a, at_b = (r.get("evals", {}).get(eval_set, {}).get(step) for r in (run_a, run_b))
    if at_a is None or at_b is None:
        return None
    end = position_losses(run_a["final"][eval_set]) - position_losses(run_b["final"][eval_set])
    mid = position_losses(at_a) - position_losses(at_b)
    return (end - mid).double().mean(-1).numpy()


def heldout_drift_rows(records: list, a: str, b: str, step: int, eval_set: str = "heldout") -> list | None:
    """:func:`heldout_drift` of variant ``a`` against ``b`` for every seed both were trained on: ``records`` are
    dicts with "variant", "seed" and "result" (a paper's runs); per common seed one (W,) array; None where none is
    common or a run was not scored at ``step``."""
    ra = {r["seed"]: r["result"] for r in records if r["variant"] == a}
    rb = {r["seed"]: r["result"] for r in records if r["variant"] == b}
    rows = [heldout_drift(ra[s], rb[s], step, eval_set) for s in sorted(set(ra) & set(rb))]
    return None if not rows or any(r is None for r in rows) else rows


def _worker_init(threads: int) -> None:
    """A prefetch worker: ``threads`` torch threads; on Linux it dies with its parent (a killed notebook leaves no
    orphan holding a run's lock)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    torch.set_num_threads(max(1, threads))


def prefetch(calls: list[Callable[[], object]], workers: int, threads: int = 1) -> None:
    """Train independent runs side by side: each of ``calls`` (picklable zero-argument callables that train through
    :func:`train`, e.g. ``functools.partial(run_variant, cfg, data, "smoe", 0)``) runs in one of ``workers``
    processes with ``threads`` torch threads each, and its result lands in the run cache; the caller then makes the
    same calls, in its own order, and reads them from the cache. Small models train faster as two one-thread
    processes on two cores than as one two-thread process, and a run's numbers do not depend on which process
    trained it (at a fixed thread count). ``workers <= 1`` does nothing (the caller's own calls train). A call that
    fails raises here; the calls not yet started are cancelled. Workers that cannot start or die (a script read from
    standard input, which spawned processes cannot import; a worker killed) are reported in one warning, and the
    caller's own calls then train what is missing, one after another."""
    if workers <= 1 or len(calls) <= 1:
        return
    import concurrent.futures as cf
    import multiprocessing as mp
    from concurrent.futures.process import BrokenProcessPool

    try:
        with cf.ProcessPoolExecutor(min(workers, len(calls)), mp_context=mp.get_context("spawn"),
                                    initializer=_worker_init, initargs=(threads,)) as pool:
            futures = [pool.submit(_call, c) for c in calls]
            try:
                for f in cf.as_completed(futures):
                    f.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    except BrokenProcessPool as e:
        log.warning("prefetch: the worker processes stopped (%s); the runs train one after another instead", e)


def _call(fn: Callable[[], object]) -> None:
    fn()  # the result stays in the worker: the caller reads it from the run cache


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to ``n`` (0: unchanged) for the block, then restored."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(paper_id, spec, batches, eval_sets, *, accelerator, devices, num_nodes, strategy, precision, module,
           keep_weights, parent) -> dict:
    run_dir = runs_dir() / paper_id / spec.key
    result_path = run_dir / "result.pt"
    done = torch_load(result_path)
    if done is not None and (not keep_weights or "state_dict" in done):
        return done
    L.seed_everything(spec.seed, workers=True, verbose=False)
    if module is not None and not isinstance(module, torch.nn.Module):
        module = module()  # a factory: built after seeding, so its initial weights are the run's, whatever ran before
    lm = module if module is not None else CausalLM(spec.model, spec.optim, spec.lr_map)
    if spec.init_from:
        if parent is None or parent.get("key") != spec.init_from or "state_dict" not in parent:
            raise ValueError(f"parent: run {spec.key} starts from run {spec.init_from}: pass that run's result, "
                             "trained with keep_weights=True")
        name, kwargs = spec.conversion
        lm.load_state_dict(CONVERSIONS[name](parent["state_dict"], lm, **dict(kwargs)))
    ev = PositionEval(eval_sets, spec.eval_steps)
    trainer = make_trainer(run_dir, spec.optim.max_steps, accelerator=accelerator, devices=devices,
                           num_nodes=num_nodes, strategy=strategy, precision=precision, ckpt_every=spec.ckpt_every,
                           callbacks=[ev], grad_clip=spec.optim.grad_clip)
    last = run_dir / "ckpt" / "last.ckpt"
    resume = _valid_checkpoint(last)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*Checkpoint directory.*exists and is not empty.*")
        trainer.fit(lm, datamodule=LMDataModule(batches, spec.optim.max_steps), ckpt_path=str(last) if resume else None,
                    weights_only=True)
    wall = time.perf_counter() - t0
    evals: dict[str, dict[int, torch.Tensor]] = {}
    for k, v in ev.records.items():
        name, step = k.rsplit("@", 1)
        evals.setdefault(name, {})[int(step)] = v
    result = {
        "key": spec.key,
        "evals": evals,
        "final": {name: lm.evaluate(w) for name, w in eval_sets.items()},
        "wall_s": wall,
        "resumed": bool(resume),
        "n_params": lm.model.num_params(),
        "tokens_per_step": spec.batch_size * spec.seq_len,
    }
    if keep_weights:
        result["state_dict"] = {k: v.detach().cpu().clone() for k, v in lm.state_dict().items()}
    if trainer.is_global_zero:
        torch_save(result_path, result)
        shutil.rmtree(run_dir / "ckpt", ignore_errors=True)  # a finished run needs only its result
    return result
