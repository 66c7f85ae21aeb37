"""instruct through ``fedsim run`` (Flower, Ray) on a minimal budget: the memory estimate printed at the
start, loss, perplexity, exact match and ROUGE-L in rounds.jsonl beside the uplink bits, and SOFT's
payload on the decoder's adapted matrices."""

import json

import pytest

from fedsim.core.results import read_rounds
from tests.helpers.runs import run_fedsim
from tests.helpers.workloads import QUICK_BASES

pytestmark = pytest.mark.slow


def test_a_minimal_instruct_run_records_its_metrics(tmp_path, workload_cache):
    out = tmp_path / "run"
    args = ["run", "--workload", "instruct", "--clients", "3", "--rounds", "2", "--clients-per-round", "3"]
    args += ["--set", f"workload.options={QUICK_BASES['instruct']}", "--set", "workload.samples_per_client=16"]
    args += ["--set", "workload.test_samples=16", "--method", "soft", "--set", "method.rho=0.5", "--out", str(out)]
    proc = run_fedsim(args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "instruct: per-client memory estimate" in proc.stderr
    rounds = read_rounds(out)
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        m = r["metrics"]
        assert m["primary_metric"] == m["rouge_l"] and 0 <= m["exact_match"] <= 1
        assert m["perplexity"] > 1 and m["loss"] > 0
        assert r["uplink_bits_total"] > 0
        # SOFT at rho = 0.5 keeps 4 of 8 ranks of each of the 4 adapted 96 x 96 matrices (q_proj, v_proj x 2 layers)
        assert all(c["kept_ranks"] == 4 for c in r["clients"])
    assert json.loads((out / "summary.json").read_text())["workload"] == "instruct"
