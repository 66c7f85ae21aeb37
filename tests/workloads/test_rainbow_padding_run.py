"""rainbow-padding through ``fedsim run`` (Flower, Ray) on a minimal budget, its per-G metrics in
rounds.jsonl, and notebooks/rainbow_padding.ipynb on that run (as its one run and as a sweep of one)."""

import json
from pathlib import Path

import pytest

from fedsim.core.results import read_rounds
from tests.helpers.runs import run_fedsim

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "rainbow_padding.ipynb"
OPTIONS = "pretrain_steps=30,pretrain_samples=960,eval_lengths=32 64,eval_samples=8"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, workload_cache):
    out = tmp_path_factory.mktemp("rainbow") / "run"
    args = ["run", "--workload", "rainbow-padding", "--clients", "3", "--rounds", "2", "--clients-per-round", "3"]
    args += ["--set", f"workload.options={OPTIONS}", "--set", "workload.samples_per_client=16"]
    args += ["--set", "workload.test_samples=16", "--set", "workload.partition=natural", "--out", str(out), "--quiet"]
    proc = run_fedsim(args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_run_records_per_g_metrics(tiny_run):
    rounds = read_rounds(tiny_run)
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        m = r["metrics"]
        for g in (32, 64):
            for key in ("validity", "length_ratio", "early_termination", "pad_first_half"):
                assert 0.0 <= m[f"{key}_g{g}"] <= (g if key == "length_ratio" else 1.0)
        assert m["primary_metric"] == m["validity"] == m["validity_g64"]
        assert all(c["train_loss"] > 0 for c in r["clients"])
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["workload"] == "rainbow-padding"


def test_notebook_executes_on_a_run_and_a_sweep(tiny_run, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    setup = f"RESULTS = {str(tiny_run)!r}\nSWEEP = {str(tiny_run.parent)!r}"
    nb.cells.insert(0, nbformat.v4.new_code_cell(setup))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # the run's rounds, the sweep's effect
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("pad_first_half_g64" in t for t in tables)
