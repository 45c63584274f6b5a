"""The GPU check script (``python -m replicate.bench kernels``) runs end to end on this CPU: ``--device cpu --tiny``
drives the same code (every kernel against its reference, forward and gradients, timing, the CSV) through the
Triton interpreter on toy sizes, so the script a GPU machine runs is not first executed there."""

import csv

import pytest
import torch

from replicate.bench import kernels


def test_kernel_check_script_runs_on_cpu(tmp_path, capsys):
    out = tmp_path / "kernels_cpu_tiny.csv"
    assert kernels.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    ops = {r["op"] for r in rows}
    assert {"router", "permute", "grouped_swiglu", "combine", "moe_experts"} <= ops
    assert all(r["correct"] == "True" for r in rows), [r for r in rows if r["correct"] != "True"]
    assert all(float(r["torch_ms"]) > 0 and float(r["triton_ms"]) > 0 for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where no GPU exists")
def test_cuda_request_without_gpu_is_one_line(capsys):
    assert kernels.main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA GPU" in err[0]
