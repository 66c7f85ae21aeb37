"""clip-memorisation through ``fedsim run`` (Flower + Ray) and its notebook on the results (slow)."""

import json
from pathlib import Path

import pytest

from fedsim.core.results import read_rounds
from tests.helpers.runs import run_fedsim
from workloads.clip_memorisation import INTERVENTIONS

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "clip_memorisation.ipynb"
# A very short pretraining: this checks the plumbing, not the effect (experiments/clip_memorisation.toml measures it).
OPTIONS = "clip_steps=20,pretrain_steps=30,eval_captions=4,eval_seeds=2"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "run"
    args = ["run", "--workload", "clip-memorisation", "--clients", "2", "--clients-per-round", "2", "--rounds", "2"]
    args += ["--set", f"workload.options={OPTIONS}", "--set", "workload.samples_per_client=16"]
    args += ["--set", "workload.test_samples=16", "--set", "run.eval_every=1", "--set", "train.local_epochs=1"]
    args += ["--out", str(out), "--quiet"]
    proc = run_fedsim(args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_every_intervention_is_recorded_and_lower_is_better(tiny_run):
    rounds = read_rounds(tiny_run)
    assert len(rounds) == 2
    for r in rounds:
        m = r["metrics"]
        assert m["primary_metric"] == m["memorisation_rate"] == m["mem_rate_none"]
        for k in INTERVENTIONS:
            for key in ("mem_sim", "mem_rate", "orig_sim", "attr_acc", "diversity", "mem_diversity", "cond_norm_mem"):
                assert isinstance(m[f"{key}_{k}"], float), f"{key}_{k}"
        assert m["orig_sim_none"] == pytest.approx(1.0) and 0 <= m["detect_auc"] <= 1
        assert m["cond_norm_mem_mask_pad"] != m["cond_norm_mem_none"]  # the detector sees the intervention
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["higher_is_better"] is False
    best = min(rounds, key=lambda r: (r["metrics"]["memorisation_rate"], r["round"]))
    assert (summary["best_round"], summary["best_metric"]) == (best["round"], best["metrics"]["memorisation_rate"])


def test_notebook_shows_the_table_and_the_grid(tiny_run, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(f"RESULTS = {str(tiny_run)!r}"))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # the curve and the image grid
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert all(k in html for k in INTERVENTIONS)  # the intervention table
