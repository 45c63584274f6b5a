"""The budget check: time and memory estimated from a config before anything runs (defect 8 of issue 10), the
machine found without torch, and GPU requests refused on a machine without one."""

import csv
import subprocess
import sys
import warnings
from pathlib import Path

import fake_paper
import pytest

from replicate import budget
from replicate.budget import Gpu, Machine, Run
from replicate.config import ConfigError, resolve

ROOT = Path(__file__).resolve().parents[2]
CPU2 = Machine(cpu_cores=2, ram_bytes=16 * 2**30, gpus=())
GPU1 = Machine(cpu_cores=16, ram_bytes=128 * 2**30, gpus=(Gpu("NVIDIA H200", 141 * 2**30),))


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(budget, "machine", lambda: CPU2)
    yield fake_paper.install()
    fake_paper.uninstall()


def test_time_is_calibrated_against_the_measurements():
    """DESIGN.md §5: the calibration run (d 128, 4 layers, FFN 344, V 2048, 400 steps of 32 x 128) takes about
    100 s on this 2-core CPU; results/benchmarks/dense_cpu.csv: the model FLOPs per token of both small decoders."""
    cal = Run("calibration", 128, 4, 344, 2048, 128, 32, 400)
    est = budget.estimate(resolve_cfg(), [cal], CPU2)
    assert 60 < est.seconds < 200
    rows = list(csv.DictReader(open(ROOT / "results" / "benchmarks" / "dense_cpu.csv")))
    for r in (r for r in rows if r["impl"] == "ours"):
        run = Run(r["config"], int(r["d_model"]), int(r["n_layers"]), int(r["d_ff"]), int(r["vocab_size"]),
                  int(r["seq_len"]), int(r["batch"]), 1)
        assert run.flops_per_token() == pytest.approx(float(r["model_flops_per_token"]), rel=1e-6)
        measured = float(r["achieved_gflops"]) * 1e9 / int(r["threads"])
        assert 0.4 < budget.CPU_FLOPS_PER_CORE / measured < 2.5, r["config"]  # CPUs differ; days vs minutes


def test_memory_follows_parameters_and_activations():
    run = Run("x", 128, 4, 344, 2048, 128, 32, 1)
    assert run.stored_params() == 4 * (4 * 128 * 128 + 3 * 128 * 344 + 2 * 128) + 2 * 128 * 2048
    # measured on this CPU: 838 MiB peak for one training step of this run, 1699 MiB at seq_len 512
    assert 0.8 < run.peak_bytes() / (838 * 2**20) < 1.3
    assert run.peak_bytes("bf16-mixed") < run.peak_bytes()
    big = Run("x", 8192, 128, 4 * 8192, 4096, 128, 1, 1)  # ~100 B parameters: 16 bytes each
    assert big.peak_bytes() > 1.6e12


def resolve_cfg(**kw):
    fake_paper.install()
    try:
        return resolve(fake_paper.FakeConfig, "smoke", **kw)
    finally:
        fake_paper.uninstall()


@pytest.mark.parametrize("overrides", [{"steps": 10**11}, {"width": 8192}])
def test_beyond_the_machine_is_refused_in_one_line_unless_forced(fake, overrides):
    with pytest.raises(ConfigError) as e:
        resolve(fake, "smoke", **overrides)
    msg = str(e.value)
    assert msg.startswith("budget: ~") and "peak memory" in msg and "force=true" in msg and "\n" not in msg, msg
    with pytest.warns(budget.BudgetWarning, match="running anyway"):
        assert resolve(fake, "smoke", force=True, **overrides).force is True


def test_over_the_scale_budget_warns_but_runs(fake):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve(fake, "small")  # seconds: no warning
    with pytest.warns(budget.BudgetWarning, match="above the small budget of 15 min"):
        resolve(fake, "small", steps=2_000_000)


def test_gpu_requests_need_a_gpu(fake, monkeypatch):
    """"Also accepted without a word": ``accelerator=gpu`` with no GPU (it failed later, in Lightning)."""
    for acc in ("gpu", "cuda"):
        with pytest.raises(ConfigError, match=rf"^parameter 'accelerator': '{acc}' needs a CUDA GPU and none is visible"):
            resolve(fake, "smoke", accelerator=acc, force=True)
    monkeypatch.setattr(budget, "machine", lambda: GPU1)
    assert resolve(fake, "smoke", accelerator="gpu").accelerator == "gpu"
    with pytest.raises(ConfigError, match=r"^parameter 'devices': at most 1 \(GPUs visible here\), got 2"):
        resolve(fake, "smoke", accelerator="gpu", devices=2)


def test_a_gpu_run_is_estimated_on_the_gpu(fake, monkeypatch):
    monkeypatch.setattr(budget, "machine", lambda: GPU1)
    cfg = resolve(fake, "paper", accelerator="auto", precision="bf16-mixed", steps=10**6)
    est = budget.estimate(cfg, cfg.workload())
    assert "NVIDIA H200" in est.where and est.memory_bytes == 141 * 2**30
    on_cpu = budget.estimate(resolve(fake, "paper", steps=10**6, accelerator="cpu", force=True), cfg.workload(), CPU2)
    assert on_cpu.seconds > 100 * est.seconds


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(budget.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    smi = subprocess.CompletedProcess([], 0, stdout="NVIDIA H200, 143771\nNVIDIA H200, 143771\n", stderr="")
    monkeypatch.setattr(budget.subprocess, "run", lambda *a, **k: smi)
    for env, n in [(None, 2), ("0", 1), ("0,1", 2), ("", 0), ("-1", 0), ("1,-1,0", 1)]:
        if env is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
        gpus = budget._gpus()
        assert len(gpus) == n, env
    assert gpus[0] == Gpu("NVIDIA H200", 143771 * 2**20)


def test_this_machine_is_described_without_torch():
    code = ("import sys; from replicate import budget; m = budget.machine(); "
            "assert m.cpu_cores >= 1 and m.ram_bytes > 2**28, m; assert 'torch' not in sys.modules; print(m)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
