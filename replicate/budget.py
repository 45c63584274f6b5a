"""What a config will cost, estimated before anything runs, and what this machine can do (no torch imported).

A paper config lists the training runs it makes (:meth:`replicate.config.PaperConfig.workload`, a list of
:class:`Run`); :func:`check`, called by ``resolve``, estimates their time and peak memory on this machine and

- refuses, in one line with the estimate, a config that needs more than :data:`MAX_SECONDS` (24 h) of training or
  more than :data:`MAX_MEMORY_FRACTION` (80 %) of the memory training runs on (RAM on a CPU, one GPU's memory on
  a GPU), unless the config says ``force=True``;
- warns (:class:`BudgetWarning`) when the estimate exceeds its scale's budget (DESIGN.md §6: smoke 60 s, small
  15 min), without refusing;
- refuses ``accelerator=gpu`` / ``cuda`` (or more GPU ``devices`` than are visible) on a machine without them,
  whatever ``force`` says.

The model (a LLaMA-style decoder trained with AdamW, fp32 master weights):

- FLOPs per token: 6 x (every weight matrix the token passes through) + 12 x layers x d_model x seq_len
  (attention), as ``replicate.bench.dense`` counts them; evaluation and data preparation are not counted.
- time: FLOPs / the machine's sustained rate: :data:`CPU_FLOPS_PER_CORE` per core (DESIGN.md §5's calibration
  run, 1.6 M tokens of a 1.3 M-parameter model in about 100 s on 2 cores, is estimated at 97 s; both small
  decoders in ``results/benchmarks/dense_cpu.csv`` achieved 40-98 GFLOP/s per core, depending on the CPU), or
  :data:`GPU_FLOPS` per GPU by precision (rough: a third to a half of an A100's peak). An estimate, good to a
  factor of about two: enough to tell minutes from days.
- memory: 16 bytes per stored parameter (weights, gradients, AdamW's two moments) + activations
  ``batch x seq_len x (layers x (16 d_model + 6 d_ff) + 2 vocab)`` values (4 bytes, 2 under mixed precision; the
  CPU attention kernel does not store seq_len^2 scores) + :data:`PROCESS_BYTES` for the interpreter and
  libraries. Measured peaks of one training step on this CPU (d 128-512, 1-8 layers, batch x seq_len up to 16 k
  tokens) were 0.76-0.96x this estimate.

The estimate is for runs that have not started: a cached or half-finished run is counted in full (``force=true``
runs it anyway).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

MAX_SECONDS = 24 * 3600
MAX_MEMORY_FRACTION = 0.8
SCALE_SECONDS = {"smoke": 60, "small": 15 * 60}  # DESIGN.md §6; `paper` has no fixed budget
CPU_FLOPS_PER_CORE = 60e9
GPU_FLOPS = {"32-true": 10e12, "bf16-mixed": 60e12, "16-mixed": 60e12}
PROCESS_BYTES = 600 * 2**20


class BudgetWarning(UserWarning):
    """The estimate exceeds the scale's budget (the run still starts)."""


@dataclass(frozen=True)
class Run:
    """One kind of training run of a LLaMA-style decoder, as far as its time and memory go. ``count`` identical
    runs (seeds, arms) run one after another. An MoE layer stores ``n_experts`` FFNs of width ``d_ff`` and runs
    ``top_k`` of them per token."""

    name: str
    d_model: int
    n_layers: int
    d_ff: int
    vocab_size: int
    seq_len: int
    batch_size: int
    steps: int
    count: int = 1
    n_experts: int = 1
    top_k: int = 1

    @property
    def tokens(self) -> int:
        return self.count * self.steps * self.batch_size * self.seq_len

    def stored_params(self) -> int:
        d = self.d_model
        return self.n_layers * (4 * d * d + self.n_experts * 3 * d * self.d_ff + 2 * d) + 2 * d * self.vocab_size

    def flops_per_token(self) -> float:
        d = self.d_model
        matmul = self.n_layers * (4 * d * d + self.top_k * 3 * d * self.d_ff) + d * self.vocab_size
        return 6.0 * matmul + 12.0 * self.n_layers * d * self.seq_len

    def flops(self) -> float:
        return self.flops_per_token() * self.tokens

    def peak_bytes(self, precision: str = "32-true", shards: int = 1) -> int:
        """Peak memory of one process training this run (``shards``: FSDP's split of parameters and state)."""
        act_values = self.batch_size * self.seq_len * (
            self.n_layers * (16 * self.d_model + 6 * self.top_k * self.d_ff) + 2 * self.vocab_size)
        act_bytes = 4 if precision == "32-true" else 2
        return PROCESS_BYTES + 16 * self.stored_params() // shards + act_bytes * act_values


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int | None  # None: unknown (no nvidia-smi)


@dataclass(frozen=True)
class Machine:
    cpu_cores: int
    ram_bytes: int
    gpus: tuple[Gpu, ...]

    def describe(self) -> str:
        return f"{self.cpu_cores} CPU cores with {_gib(self.ram_bytes)} RAM" + (
            f", {len(self.gpus)} x {self.gpus[0].name}" if self.gpus else "")


@functools.lru_cache(maxsize=1)
def machine() -> Machine:
    """This machine: usable cores (affinity and cgroup quota), RAM (``/proc/meminfo`` and the cgroup limit), and the
    NVIDIA GPUs visible to this process (driver + ``CUDA_VISIBLE_DEVICES``), found without importing torch."""
    return Machine(_cores(), _ram_bytes(), _gpus())


def _cores() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def _ram_bytes() -> int:
    total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    except OSError:
        pass
    if total is None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
            if text.isdigit():
                total = min(total, int(text))
        except OSError:
            pass
    return total


def _gpus() -> tuple[Gpu, ...]:
    found: list[Gpu] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10)
            for line in out.stdout.splitlines() if out.returncode == 0 else ():
                name, _, mib = line.rpartition(",")
                found.append(Gpu(name.strip(), int(float(mib)) * 2**20 if mib.strip().replace(".", "").isdigit()
                                 else None))
        except (OSError, subprocess.TimeoutExpired):
            pass
    if not found:  # a driver without nvidia-smi on PATH
        found = [Gpu("NVIDIA GPU", None) for _ in sorted(Path("/proc/driver/nvidia/gpus").glob("*"))]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip()]
        if any(v.strip().startswith("-") for v in ids):  # "-1": none, and nothing after it
            ids = ids[: next(i for i, v in enumerate(ids) if v.strip().startswith("-"))]
        found = found[: len(ids)]
    return tuple(found)


@dataclass(frozen=True)
class Estimate:
    seconds: float
    peak_bytes: int
    memory_bytes: int | None  # what training runs in (RAM, or one GPU's memory); None when unknown
    where: str  # "2 CPU cores with 23.5 GiB RAM", "1 x NVIDIA H200 with 140.4 GiB"

    def over_limits(self) -> bool:
        too_big = self.memory_bytes is not None and self.peak_bytes > MAX_MEMORY_FRACTION * self.memory_bytes
        return self.seconds > MAX_SECONDS or too_big

    def describe(self) -> str:
        return f"~{_duration(self.seconds)} of training and ~{_gib(self.peak_bytes)} peak memory on {self.where}"


def estimate(cfg, runs: list[Run], m: Machine | None = None) -> Estimate:
    """Time (runs one after another) and peak memory (the largest run) of ``runs`` under ``cfg``'s accelerator,
    devices, nodes, strategy and precision."""
    m = m or machine()
    on_gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and bool(m.gpus))
    flops = sum(r.flops() for r in runs)
    if on_gpu:
        n = cfg.devices * cfg.num_nodes
        shards = n if cfg.strategy == "fsdp" else 1
        rate = GPU_FLOPS.get(cfg.precision, GPU_FLOPS["32-true"]) * n
        memory = m.gpus[0].memory_bytes if m.gpus else None
        where = f"{n} x {m.gpus[0].name if m.gpus else 'GPU'}" + (f" with {_gib(memory)}" if memory else "")
        peak = max(r.peak_bytes(cfg.precision, shards) for r in runs)
    else:
        rate = CPU_FLOPS_PER_CORE * m.cpu_cores * cfg.num_nodes
        memory, where = m.ram_bytes, m.describe()
        peak = max(r.peak_bytes("32-true") for r in runs)  # mixed precision on a CPU stores fp32 activations too
    return Estimate(flops / rate, peak, memory, where)


def check(cfg) -> Estimate | None:
    """Refuse (:class:`replicate.config.ConfigError`, one line) what this machine cannot run; warn when the
    estimate exceeds the scale's budget. Returns the estimate (None when the config declares no workload)."""
    from replicate.config import ConfigError

    m = machine()
    if cfg.accelerator in ("gpu", "cuda"):
        if not m.gpus:
            raise ConfigError(f"parameter 'accelerator': {cfg.accelerator!r} needs a CUDA GPU and none is visible "
                              f"here ({m.describe()}); allowed on this machine: 'cpu' | 'auto'")
        if cfg.devices > len(m.gpus):
            raise ConfigError(f"parameter 'devices': at most {len(m.gpus)} (GPUs visible here), got {cfg.devices}")
    runs = list(cfg.workload())
    if not runs:
        return None
    est = estimate(cfg, runs, m)
    limits = f"limits: {_duration(MAX_SECONDS)}, {MAX_MEMORY_FRACTION:.0%} of memory"
    if est.over_limits():
        if not cfg.force:
            raise ConfigError(f"budget: {est.describe()}, above what this machine can do ({limits}); make the runs "
                              "smaller, or pass force=true to run anyway")
        warnings.warn(f"budget: {est.describe()}, above what this machine can do ({limits}); running anyway "
                      "(force=true)", BudgetWarning, stacklevel=2)
    elif cfg.scale in SCALE_SECONDS and est.seconds > SCALE_SECONDS[cfg.scale]:
        warnings.warn(f"budget: {est.describe()}, above the {cfg.scale} budget of "
                      f"{_duration(SCALE_SECONDS[cfg.scale])}", BudgetWarning, stacklevel=2)
    return est


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n < 2**40 else f"{n / 2**40:.1f} TiB"


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.2g} h"
    if s < 730 * 86400:
        return f"{s / 86400:.0f} days"
    return f"{s / (365 * 86400):.2g} years"
