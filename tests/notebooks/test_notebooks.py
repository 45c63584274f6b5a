"""Every notebook: committed stripped with one literal-only `parameters` cell, and run whole at `smoke` under nbval.

nbval injects no parameters, so each notebook is first prepared with ``papermill --prepare-only -p scale smoke``
into a build folder; nbval then executes the prepared copy (``--nbval-lax``: every cell must run without error).
Results go to a temporary folder, and the test checks that every artifact the run lists was written.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from replicate.papers import implemented

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = [ROOT / "notebooks" / f"{pid}.ipynb" for pid in implemented()]


def test_every_implemented_paper_has_a_notebook():
    assert NOTEBOOKS and all(nb.exists() for nb in NOTEBOOKS)


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_stripped_with_one_literal_parameters_cell(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    tree = ast.parse(params[0].source)
    for node in tree.body:
        assert isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Constant), ast.dump(node)
    names = [n.target.id for n in tree.body]
    assert names[:2] == ["scale", "seed"]
    for line in params[0].source.splitlines():
        assert "#" in line, f"parameter without a help comment: {line}"
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None, "commit notebooks without outputs"
    # the cell after the parameters validates them
    idx = nb.cells.index(params[0])
    assert f'resolve("{nb_path.stem}", globals())' in nb.cells[idx + 1].source


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_smoke_under_nbval_writes_every_artifact(nb_path, tmp_path):
    prepared = tmp_path / nb_path.name
    env = {**os.environ, "REPLICATE_RESULTS": str(tmp_path / "results"), "REPLICATE_RUNS": str(tmp_path / "runs"),
           "REPLICATE_PROGRESS": "0"}
    env.pop("REPLICATE_DEFER_PUBLISH", None)
    subprocess.run([sys.executable, "-m", "papermill", "--prepare-only", "-p", "scale", "smoke", "--log-level", "ERROR",
                    str(nb_path), str(prepared)], check=True, env=env, capture_output=True)
    # after the whole run, the parameters and validation cells run again in the same kernel (as a reader re-running
    # them in JupyterLab would): the notebook's own variables must not read as unknown parameters
    nb = nbformat.read(prepared, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    validation = next(c for c in nb.cells if f'resolve("{nb_path.stem}", globals())' in c.source)
    nb.cells += [nbformat.v4.new_code_cell(params.source.replace('"small"', '"smoke"')),
                 nbformat.v4.new_code_cell(validation.source)]
    nbformat.write(nb, prepared)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-cell-timeout=300", "-o", "addopts=", str(prepared)], env=env, cwd=nb_path.parent,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = tmp_path / "results" / nb_path.stem / "smoke"
    run = json.loads((out / "run.json").read_text())
    assert run["scale"] == "smoke"
    for t in run["tables"]:
        assert (out / "tables" / f"{t}.csv").exists() and (out / "tables" / f"{t}.md").exists()
    for f in run["figures"]:
        assert (out / "figures" / f"{f}.png").stat().st_size > 1000 and (out / "figures" / f"{f}.svg").exists()
    claims = (out / "claims.csv").read_text().splitlines()
    assert claims[0] == "claim_id,claim,metric,paper_value,ours_value,ours_ci,verdict,evidence"
    assert len(claims) > 1
