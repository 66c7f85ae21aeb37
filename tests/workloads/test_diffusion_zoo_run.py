"""reversal-curse and dapd through ``fedsim run`` (Flower, Ray) on a minimal budget, their metrics in
rounds.jsonl, and notebooks/diffusion_zoo.ipynb on those runs, a sweep folder of them and a report-shaped runs.csv."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from fedsim.core.results import read_rounds
from tests.helpers.runs import run_fedsim

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "diffusion_zoo.ipynb"
OPTIONS = {
    "reversal-curse": "num_facts=30,num_pretrain_facts=30,pretrain_steps=20",
    "dapd": "pretrain_steps=20,eval_samples=8,min_base_validity=0",
}


def run(name: str, out: Path) -> Path:
    args = ["run", "--workload", name, "--clients", "3", "--rounds", "2", "--clients-per-round", "3"]
    args += ["--set", f"workload.options={OPTIONS[name]}", "--set", "workload.samples_per_client=16"]
    args += ["--set", "workload.test_samples=16", "--set", "workload.partition=natural", "--out", str(out), "--quiet"]
    args += ["--set", "train.local_epochs=1"] if name == "reversal-curse" else []  # not the preset's 40
    proc = run_fedsim(args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, workload_cache):
    root = tmp_path_factory.mktemp("zoo")
    return {name: run(name, root / name) for name in OPTIONS}


def test_runs_record_the_workload_metrics(runs):
    rev = read_rounds(runs["reversal-curse"])
    assert [r["round"] for r in rev] == [1, 2]
    for r in rev:
        m = r["metrics"]
        assert m["primary_metric"] == m["reverse_accuracy"] and m["chance"] == pytest.approx(1 / 30)
        assert 0 <= m["forward_accuracy"] <= 1 and -1 <= m["grad_cosine"] <= 1
    dapd = read_rounds(runs["dapd"])
    for r in dapd:
        m = r["metrics"]
        assert (
            m["primary_metric"] == m["dapd_gain_at_matched_nfe"] == m["validity_dapd"] - m["validity_topk_at_dapd_nfe"]
        )
        for decoder in ("one", "topk", "threshold", "dapd", "dapd_notail"):
            assert 0 <= m[f"validity_{decoder}"] <= 1 and 1 <= m[f"nfe_{decoder}"] <= 9
        assert 0 <= m["auc_all_masked"] <= 1 and 0 <= m["auc_half_masked"] <= 1
    assert json.loads((runs["dapd"] / "summary.json").read_text())["workload"] == "dapd"


def write(path: Path, keys: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(keys)
        writer.writerows(rows)
    return path


def test_notebook_executes_on_runs_and_csvs(runs, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    rev_sweep = tmp_path / "rev_sweep"  # a sweep-shaped folder: the real run as two seeds of one setting
    for name in ("seed-0", "seed-1"):
        shutil.copytree(runs["reversal-curse"], rev_sweep / "runs" / name)
    decoders = {"one": 9, "topk": 5, "topk3": 3, "topk_sched_lo": 5, "topk_sched_hi": 6, "dapd": 5.4, "threshold": 8.6}
    dapd_keys = ["run", "status", "run.seed", *(f"{m}_{d}" for d in decoders for m in ("validity", "nfe"))]
    dapd_rows = [
        [f"seed-{seed}", "ok", seed, *(v for nfe in decoders.values() for v in (min(1, nfe / 9 + 0.1 * seed), nfe))]
        for seed in (0, 1)
    ]
    dapd_runs = write(tmp_path / "runs.csv", dapd_keys, dapd_rows)
    setup = (
        f"REV_RESULTS = {str(runs['reversal-curse'])!r}\nDAPD_RESULTS = {str(runs['dapd'])!r}\n"
        f"REV_SWEEP = {str(rev_sweep)!r}\nDAPD_RUNS = {str(dapd_runs)!r}"
    )
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(setup))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    # reversal run; reversal sweep: effect plot and per-round means; dapd run; dapd sweep curve
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 5
