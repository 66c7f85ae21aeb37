"""The campaign notebooks run on small sweep folders made here and show their figures (slow: a kernel each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.synthetic import write_run, write_sweep

pytestmark = pytest.mark.slow
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, tmp_path: Path, sweeps: list[Path]) -> list[dict]:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(f"SWEEPS = {[str(s) for s in sweeps]!r}"))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return outputs


def _images(outputs: list[dict]) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


def _markdown(outputs: list[dict]) -> str:
    return "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)


def test_soft_vs_baselines(tmp_path):
    runs = [
        (f"method-{m}_rho-{rho}_seed-{s}", {"run.method": m, "method.rho": rho, "run.seed": s}, 0.5 + 0.1 * s)
        for m in ("soft", "topk")
        for rho in (0.25, 0.5)
        for s in (0, 1)
    ]
    sweep = write_sweep(tmp_path / "soft", runs, ["run.method", "method.rho", "run.seed"])
    outputs = execute("soft_vs_baselines.ipynb", tmp_path, [sweep])
    assert "| method | rho | n | final primary metric |" in _markdown(outputs)
    assert _images(outputs) == 2  # against bits and against round


def test_tsfa_latency(tmp_path):
    runs = [
        (
            f"b-{b}_seed-{s}",
            {"run.method": "soft", "run.scheduler": "tsfa", "tsfa.latency_budget_s": b, "run.seed": s},
            0.5,
        )
        for b in (0.2, 0.4)
        for s in (0, 1)
    ]
    sweep = write_sweep(tmp_path / "tsfa", runs, ["tsfa.latency_budget_s", "run.seed"])
    outputs = execute("tsfa_latency.ipynb", tmp_path, [sweep])
    assert "| T_avg (s) | n | mean round latency (s) |" in _markdown(outputs)
    assert _images(outputs) == 3  # latency vs budget, rho/queue, bandwidth


def test_workload_zoo(tmp_path):
    sweep = write_sweep(tmp_path / "tc", [(f"seed-{s}", {"run.seed": s}, 0.6) for s in (0, 1)], ["run.seed"])
    extra = {"accuracy_unseen_words": 0.4, "accuracy_unseen_templates": 0.5}
    for s in (0, 1):
        write_run(tmp_path / "more" / f"s{s}", {"run.seed": s, "run.method": "soft"}, 0.7, extra_metrics=extra)
    reversal = {"forward_accuracy": 1.0, "reverse_accuracy": 0.0, "reverse_probability": 0.001, "chance": 0.005}
    for s in (0, 1):
        overrides = {"workload.name": "reversal-curse", "workload.options": "model=arm", "run.seed": s}
        write_run(tmp_path / "rc" / f"s{s}", overrides, 0.0, extra_metrics=reversal)
    outputs = execute("workload_zoo.ipynb", tmp_path, [sweep, tmp_path / "more", tmp_path / "rc"])
    markdown = _markdown(outputs)
    assert "## text-classify (4 runs)" in markdown and "## reversal-curse (2 runs)" in markdown
    assert _images(outputs) == 2
