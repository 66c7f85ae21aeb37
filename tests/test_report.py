"""fedsim report: the loader, statistics over seeds, tables and figures, on synthetic results folders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fedsim.app.cli import main
from fedsim.app.report import (
    campaign_figures,
    default_group_keys,
    effect_figure,
    load_runs,
    mean_ci,
    paired_differences,
    parse_pairing,
    round_curves,
    summarize,
    write_report,
)
from fedsim.errors import ConfigError
from tests.helpers.synthetic import write_run, write_sweep

FINALS = {("soft", 0.5): [0.70, 0.74, 0.75], ("topk", 0.5): [0.60, 0.66, 0.61], ("ideal", 0.0): [0.80, 0.82, 0.85]}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """Three methods x three seeds, as a sweep folder."""
    runs = []
    for (method, rho), finals in FINALS.items():
        for seed, final in enumerate(finals):
            overrides = {"run.method": method, "method.rho": rho, "run.seed": seed}
            runs.append((f"method-{method}_seed-{seed}", overrides, final))
    return write_sweep(tmp_path_factory.mktemp("sweeps") / "methods", runs, ["run.method", "run.seed"])


def test_mean_ci_is_the_t_interval():
    x = [0.70, 0.74, 0.75, 0.71]
    mean, low, high, n = mean_ci(x)
    ref_low, ref_high = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert n == 4 and mean == pytest.approx(np.mean(x))
    assert (low, high) == (pytest.approx(ref_low), pytest.approx(ref_high))
    assert math.isnan(mean_ci([0.5])[1]) and mean_ci([0.5])[0] == 0.5
    assert mean_ci([0.5, math.nan, 0.7])[3] == 2  # non-finite values are left out


def test_summarize_groups_by_the_sweep_axes(sweep_dir):
    runs = load_runs([sweep_dir])
    assert len(runs) == 9 and {r.sweep for r in runs} == {"methods"}
    assert default_group_keys(runs) == ["run.method"]
    table = summarize(runs)
    assert list(table["run.method"]) == ["soft", "topk", "ideal"] and list(table["n"]) == [3, 3, 3]
    for (method, _), finals in FINALS.items():
        row = table[table["run.method"] == method].iloc[0]
        low, high = stats.t.interval(0.95, 2, loc=np.mean(finals), scale=stats.sem(finals))
        assert row["primary_metric_mean"] == pytest.approx(np.mean(finals))
        assert (row["primary_metric_ci95_low"], row["primary_metric_ci95_high"]) == (
            pytest.approx(low),
            pytest.approx(high),
        )
    soft = table[table["run.method"] == "soft"].iloc[0]
    assert soft["cumulative_uplink_bits_mean"] == pytest.approx(3 * 0.5 * 4e6)  # 3 rounds at rho = 0.5
    # plain results folders (not a sweep): grouped by the keys that differ, seed excluded
    plain = load_runs([sweep_dir / "runs"])
    assert len(plain) == 9 and default_group_keys(plain) == ["run.method", "method.rho"]


def test_curves_bands_and_figures(sweep_dir):
    runs = load_runs(sweep_dir)
    curves = round_curves(runs, ["run.method"])
    soft = curves["method=soft"]
    assert list(soft["round"]) == [1, 2, 3]
    assert soft["mean"][-1] == pytest.approx(np.mean(FINALS[("soft", 0.5)]))
    assert np.all(soft["low"] < soft["mean"]) and np.all(soft["high"] > soft["mean"])
    assert list(soft["bits"]) == pytest.approx([2e6, 4e6, 6e6])
    figures = campaign_figures(runs, ["run.method"])
    assert {"metric_vs_uplink_bits", "metric_vs_round", "rho_queue", "bandwidth_heatmap"} <= set(figures)
    assert "latency_vs_budget" not in figures  # no TSFA runs
    fig = figures["metric_vs_uplink_bits"][0]
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["method=soft", "method=topk", "method=ideal"]
    assert len(ax.collections) == 3  # a seed band per method
    heat = figures["bandwidth_heatmap"][0].axes[0].images[0].get_array()
    assert heat.shape == (4, 3) and heat[3, 0] == pytest.approx(20 * 4 / 10)  # MHz, client 3 of 4


def test_tsfa_latency_and_effect_figures(tmp_path):
    runs = []
    for budget in (0.2, 0.4):
        for seed in (0, 1):
            overrides = {
                "run.method": "soft",
                "run.scheduler": "tsfa",
                "tsfa.latency_budget_s": budget,
                "run.seed": seed,
            }
            runs.append((f"b{budget}-s{seed}", overrides, 0.5))
    folder = write_sweep(tmp_path / "tsfa", runs, ["tsfa.latency_budget_s", "run.seed"])
    loaded = load_runs(folder)
    figures = campaign_figures(loaded)
    fig = figures["latency_vs_budget"][0]
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("latency budget")
    means = ax.containers[0].lines[0].get_ydata()
    assert list(means) == pytest.approx([0.18, 0.36], abs=0.02)
    # mean_<field>: a round-record field averaged over rounds (queue_s = 0.05 t over 3 rounds)
    table = summarize(loaded, metrics=["mean_queue_s", "mean_rho", "mean_nosuch", "mean_round_latency_s"])
    assert list(table["mean_queue_s_mean"]) == pytest.approx([0.1, 0.1])
    assert list(table["mean_rho_mean"]) == pytest.approx([0.5, 0.5])
    assert table["mean_nosuch_mean"].isna().all()
    assert list(table["mean_round_latency_s_mean"]) == pytest.approx([0.18, 0.36], abs=0.02)
    rho_ax, queue_ax = figures["rho_queue"][0].axes[:2]
    assert queue_ax.get_ylabel().startswith("virtual queue") and len(queue_ax.get_lines()) == 2
    # a workload's own effect: rainbow padding's metrics per allocated length G
    g = {f"length_ratio_g{G}": 1.0 - G / 1000 for G in (32, 48, 64)}
    g |= {f"validity_g{G}": 0.9 for G in (32, 48, 64)}
    for seed in (0, 1):
        write_run(tmp_path / "rb" / f"s{seed}", {"run.seed": seed}, 0.5, extra_metrics=g)
    rb = load_runs(tmp_path / "rb")
    for r in rb:
        r.config["workload.name"] = "rainbow-padding"  # the synthetic records carry its metrics
    fig = effect_figure(rb, "rainbow-padding", [])
    validity_ax, length_ax = fig.axes[:2]  # the runs record neither early termination nor padding shares
    assert validity_ax.get_ylabel() == "validity" and len(fig.axes) == 2
    assert list(length_ax.containers[0].lines[0].get_xdata()) == [32, 48, 64]
    assert list(length_ax.containers[0].lines[0].get_ydata()) == pytest.approx([0.968, 0.952, 0.936])
    assert effect_figure(rb, "no-such-workload") is None


def test_rounds_without_evaluation(tmp_path):
    """run.eval_every > 1: the skipped rounds have metrics null; curves skip them, the report is written."""
    runs = [(f"seed-{s}", {"run.seed": s, "run.eval_every": 2}, 0.5 + 0.1 * s) for s in range(3)]
    folder = write_sweep(tmp_path / "ev", runs, ["run.seed"], rounds=5)
    loaded = load_runs(folder)
    curve = round_curves(loaded, [])["all"]
    assert list(np.isfinite(curve["mean"])) == [False, True, False, True, True]
    assert curve["mean"][-1] == pytest.approx(0.6)
    fig = campaign_figures(loaded, [])["metric_vs_round"][0]
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [2, 4, 5]  # one line through the evaluated rounds
    table = summarize(loaded, [], metrics=["primary_metric", "mean_accuracy"])
    assert table["primary_metric_mean"][0] == pytest.approx(0.6)
    assert table["mean_accuracy_mean"][0] == pytest.approx(np.mean([0.6 * t / 5 for t in (2, 4, 5)]))
    page = write_report([folder], tmp_path / "rep")
    assert "figures/metric_vs_round.png" in page.read_text()


def test_report_command_writes_page_tables_and_figures(sweep_dir, tmp_path, capsys):
    extra = write_run(
        tmp_path / "failed-run", {"run.method": "soft", "method.rho": 0.5, "run.seed": 9}, 0.1, status="failed"
    )
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as e:
        main(
            [
                "report",
                str(sweep_dir),
                str(extra),
                "--out",
                str(out),
                "--metric",
                "primary_metric",
                "--metric",
                "accuracy",
            ]
        )
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    page = (out / "report.md").read_text()
    assert "| method | n | final accuracy | accuracy |" in page
    mean = np.mean(FINALS[("ideal", 0.0)])
    half = stats.t.ppf(0.975, 2) * np.std(FINALS[("ideal", 0.0)], ddof=1) / np.sqrt(3)
    assert f"| ideal | 3 | {mean:.3f} ± {half:.3f} |" in page  # the mean to the half-width's 2 digits
    assert f"{mean:.3f} ± {half:.3f}" == "0.823 ± 0.063"
    assert "`failed-run` (failed)" in page
    for stem in ("metric_vs_uplink_bits", "metric_vs_round", "rho_queue", "bandwidth_heatmap"):
        assert f"](figures/{stem}.png)" in page
        assert (out / "figures" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / "figures" / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("group,run.method,n,primary_metric_mean,primary_metric_ci95_low")
    assert len((out / "runs.csv").read_text().splitlines()) == 11  # header, 9 + 1 runs


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["report", "/no/such/folder"], "no such folder"),
        (["report", "{tmp}"], "holds no fedsim results"),
        (["report", "{sweep}", "--by", "run.methd"], "--by='run.methd': not a config key"),
    ],
)
def test_report_bad_input_exit_2(sweep_dir, tmp_path, capsys, args, expected):
    args = [a.format(tmp=tmp_path, sweep=sweep_dir) for a in args]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err


def test_write_report_lists_unfinished_runs_only(tmp_path):
    run = write_run(tmp_path / "r", {}, 0.5)
    (run / "summary.json").unlink()
    page = write_report([tmp_path], tmp_path / "rep").read_text()
    assert "0 finished runs of 1" in page and "`r` (running)" in page


def _bars(ax) -> dict[str, list[float]]:
    """A bar chart's series: per label, the bar heights."""
    from matplotlib.container import BarContainer

    return {c.get_label(): [p.get_height() for p in c] for c in ax.containers if isinstance(c, BarContainer)}


def test_reversal_curse_and_dapd_effect_figures(tmp_path):
    # reversal curse: forward and reverse accuracy per architecture (the ARM never answers the reverse)
    finals = {"model=mdm": (0.9, 0.8, 0.035, 0.3), "model=arm": (1.0, 0.0, 0.0002, 0.1)}
    runs = []
    for options, (fwd, rev, prob, cosine) in finals.items():
        for seed in (0, 1, 2):
            metrics = {
                "forward_accuracy": fwd,
                "reverse_accuracy": rev + 0.01 * seed,
                "reverse_probability": prob,
                "chance": 0.005,
                "grad_cosine": cosine,
                "score_correlation": 0.5 if options == "model=mdm" else 0.0,
            }
            overrides = {"workload.name": "reversal-curse", "workload.options": options, "run.seed": seed}
            runs.append((f"{options}-{seed}", overrides, rev, metrics))
    for name, overrides, final, metrics in runs:
        write_run(tmp_path / "rc" / "runs" / name, overrides, final, extra_metrics=metrics)
    rc = load_runs(tmp_path / "rc")
    assert default_group_keys(rc) == ["workload.options"]
    figures = campaign_figures(rc)
    accuracy_ax, probability_ax, cosine_ax = figures["effect_reversal-curse"][0].axes
    assert [t.get_text() for t in accuracy_ax.get_xticklabels()] == ["forward", "reverse"]
    bars = _bars(accuracy_ax)
    assert set(bars) == {"options=model=mdm", "options=model=arm"}
    assert bars["options=model=mdm"] == pytest.approx([0.9, 0.81])
    assert bars["options=model=arm"] == pytest.approx([1.0, 0.01])
    assert _bars(probability_ax)["options=model=arm"] == pytest.approx([0.0002, 0.005])
    assert [t.get_text() for t in cosine_ax.get_xticklabels()] == ["grad_cosine", "score_correlation"]
    # dapd: validity and NFE per decoder, top-k at DAPD's NFE among them, and the attention AUCs
    metrics = {"validity_one": 0.2, "nfe_one": 9.0, "validity_dapd": 0.3, "nfe_dapd": 4.7}
    metrics |= {"validity_topk_at_dapd_nfe": 0.1, "nfe_topk_at_dapd_nfe": 5.0}
    metrics |= {"auc_all_masked": 0.9, "auc_half_masked": 0.8}
    for seed in (0, 1):
        write_run(
            tmp_path / "dapd" / f"s{seed}", {"workload.name": "dapd", "run.seed": seed}, 0.3, extra_metrics=metrics
        )
    dapd = load_runs(tmp_path / "dapd")
    validity_ax, nfe_ax, auc_ax = effect_figure(dapd, "dapd").axes
    decoders = [t.get_text() for t in validity_ax.get_xticklabels()]
    assert sorted(decoders) == ["dapd", "one", "topk_at_dapd_nfe"]
    assert [t.get_text() for t in nfe_ax.get_xticklabels()] == decoders
    (validity,) = _bars(validity_ax).values()
    (nfe,) = _bars(nfe_ax).values()
    assert dict(zip(decoders, validity, strict=True)) == pytest.approx(
        {"one": 0.2, "dapd": 0.3, "topk_at_dapd_nfe": 0.1}
    )
    assert dict(zip(decoders, nfe, strict=True)) == pytest.approx({"one": 9.0, "dapd": 4.7, "topk_at_dapd_nfe": 5.0})
    assert list(_bars(auc_ax).values())[0] == pytest.approx([0.9, 0.8])
    assert effect_figure(dapd, "reversal-curse") is None  # not this workload's runs


def test_report_rewrites_its_own_output_and_nothing_else(sweep_dir, tmp_path):
    from fedsim.app.report import REPORT_MARKER
    from fedsim.core.config import ConfigError

    out = tmp_path / "rep"
    write_report([sweep_dir], out)
    assert (out / REPORT_MARKER).is_file()
    write_report([sweep_dir], out)  # its own earlier output
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    with pytest.raises(ConfigError, match="is not empty and is not a fedsim report"):
        write_report([sweep_dir], mine)
    assert [p.name for p in mine.iterdir()] == ["report.md"] and (mine / "report.md").read_text() == "my notes"


def test_rounds_are_read_within_the_limits(tmp_path, monkeypatch):
    import fedsim.app.report as rp
    import fedsim.core.results as results
    from fedsim.core.config import ConfigError

    run = write_run(tmp_path / "r", {}, 0.5)
    line = (run / "rounds.jsonl").read_text().splitlines()[0]
    assert len(rp.read_records(run / "rounds.jsonl")) == 3
    monkeypatch.setattr(results, "MAX_JSON_BYTES", len(line))  # the newline is one byte too many
    with pytest.raises(ConfigError, match="rounds.jsonl' line 1: longer than"):
        rp.read_records(run / "rounds.jsonl")
    monkeypatch.setattr(results, "MAX_ROUNDS_BYTES", 10)
    with pytest.raises(ConfigError, match="larger than 10 bytes"):
        rp.read_records(run / "rounds.jsonl")


def test_the_folder_search_stops_at_its_depth(tmp_path):
    from fedsim.app.report import MAX_SEARCH_DEPTH, find_run_folders
    from fedsim.core.config import ConfigError

    write_run(tmp_path / "a" / Path(*["d"] * (MAX_SEARCH_DEPTH - 1)) / "run", {}, 0.5)
    assert [f.name for f, *_ in find_run_folders([tmp_path / "a"])] == ["run"]
    write_run(tmp_path / "b" / Path(*["d"] * MAX_SEARCH_DEPTH) / "run", {}, 0.5)
    with pytest.raises(ConfigError, match=f"searched {MAX_SEARCH_DEPTH} folder levels down"):
        find_run_folders([tmp_path / "b"])


def test_paired_differences_are_per_seed_differences_with_their_t_interval(sweep_dir):
    runs = load_runs(sweep_dir)
    pairing = parse_pairing("run.method=soft,topk", runs)
    table = paired_differences(runs, pairing, ["run.method"], ["primary_metric"])
    diffs = np.subtract(FINALS[("soft", 0.5)], FINALS[("topk", 0.5)])
    low, high = stats.t.interval(0.95, 2, loc=diffs.mean(), scale=stats.sem(diffs))
    (row,) = table.to_dict("records")
    assert row["n"] == 3 and row["primary_metric_mean"] == pytest.approx(diffs.mean())
    assert (row["primary_metric_ci95_low"], row["primary_metric_ci95_high"]) == (
        pytest.approx(low),
        pytest.approx(high),
    )


def test_a_paired_value_may_hold_commas_and_a_bad_pairing_is_refused(tmp_path):
    runs = []
    for options, finals in (("model=mdm,num_facts=40", [0.9, 0.95]), ("model=arm,num_facts=40", [0.0, 0.1])):
        for seed, final in enumerate(finals):
            runs.append((f"{options[6:9]}-{seed}", {"workload.options": options, "run.seed": seed}, final))
    sweep = write_sweep(tmp_path / "rc", runs, ["workload.options", "run.seed"])
    loaded = load_runs(sweep)
    pairing = parse_pairing("workload.options=model=mdm,num_facts=40,model=arm,num_facts=40", loaded)
    assert (pairing.a, pairing.b) == ("model=mdm,num_facts=40", "model=arm,num_facts=40")
    for bad in ("workload.options=model=mdm", "nosuch.key=a,b", "workload.options", "run.seed=0,0"):
        with pytest.raises(ConfigError, match="--paired="):
            parse_pairing(bad, loaded)
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as e:
        main(["report", str(sweep), "--out", str(out), "--paired", "workload.options=a,b"])
    assert e.value.code == 2 and not out.exists()
    with pytest.raises(SystemExit) as e:
        main(
            [
                "report",
                str(sweep),
                "--out",
                str(out),
                "--paired",
                "workload.options=model=mdm,num_facts=40,model=arm,num_facts=40",
            ]
        )
    assert e.value.code == 0
    page = (out / "report.md").read_text()
    assert "## Paired: options: model=mdm,num_facts=40 minus model=arm,num_facts=40" in page
    assert "| n | final accuracy |" in page and "| 2 | 0.88 ± 0.32 |" in page  # t(0.975, 1) x 0.035 / sqrt(2)
    assert (out / "paired.csv").read_text().startswith("group,n,")


# ----------------------------------------------------------------------------------------------
# --into: the table block of the sweep's file on a docs page

PAGE = """# Results

Measured somewhere.

```bash
fedsim report sweeps/x --into docs/page.md
```

<!-- table: experiments/x.toml -->
| hand | made |
| --- | --- |
| 1 | 2 |
<!-- /table -->

<!-- table: experiments/x.toml (paired, from runs.csv; pasted) -->
| other | table |
<!-- /table -->

The prose after the table.
"""


@pytest.fixture
def docs_repo(sweep_dir, tmp_path):
    """A repository with ``experiments/x.toml`` and ``docs/page.md``, and a copy of the sweep naming that file."""
    import json
    import shutil

    repo = tmp_path / "repo"
    (repo / "experiments").mkdir(parents=True)
    (repo / "experiments" / "x.toml").write_text("[sweep]\nseeds = [0, 1, 2]\n")
    (repo / "docs").mkdir()
    (repo / "docs" / "page.md").write_text(PAGE)
    sweep = shutil.copytree(sweep_dir, tmp_path / "sweep", ignore=shutil.ignore_patterns("report"))
    index = json.loads((sweep / "sweep.json").read_text())
    (sweep / "sweep.json").write_text(json.dumps(index | {"sweep_file": str(repo / "experiments" / "x.toml")}))
    return repo, sweep


def test_report_into_replaces_only_the_block(docs_repo, tmp_path, capsys):
    from fedsim.app.report import table_blocks, table_digest

    repo, sweep = docs_repo
    page = repo / "docs" / "page.md"
    for _ in range(2):  # the second run rewrites its own block the same way
        with pytest.raises(SystemExit) as e:
            main(["report", str(sweep), "--out", str(tmp_path / "rep"), "--into", str(page)])
        assert e.value.code == 0
    text = page.read_text()
    before, after = PAGE.split("<!-- table: experiments/x.toml -->\n")[0], PAGE.split("| 1 | 2 |\n<!-- /table -->")[1]
    assert text.startswith(before) and text.endswith(after)
    produced, paired = table_blocks(text)
    assert (produced.source, produced.rest, produced.digest) == ("experiments/x.toml", "", table_digest(produced.body))
    assert paired.body == "| other | table |\n" and paired.pasted and paired.digest is None
    header = "| method | n | final accuracy | uplink (Mbit) | mean round latency (s) |\n"
    soft = next(line for line in produced.body.splitlines() if line.startswith("| soft |"))
    assert produced.body.startswith(header) and soft.startswith("| soft | 3 | 0.730 ± 0.066 |")
    assert soft.split(" | ")[3] == "6"  # 6e6 bits in Mbit, the same in every run
    assert produced.body in (tmp_path / "rep" / "report.md").read_text()  # the same labels on report.md
    summary = (tmp_path / "rep" / "summary.csv").read_text()
    assert ",6000000.0," in summary  # summary.csv stays in bits
    assert capsys.readouterr().err == ""


def test_report_into_a_relative_sweep_file_and_a_pasted_block(docs_repo, tmp_path, monkeypatch):
    import json

    repo, sweep = docs_repo
    index = json.loads((sweep / "sweep.json").read_text())
    (sweep / "sweep.json").write_text(json.dumps(index | {"sweep_file": "experiments/x.toml"}))
    page = repo / "docs" / "page.md"
    marked = "<!-- table: experiments/x.toml (pasted; regenerate with the command above) -->"
    page.write_text(PAGE.replace("<!-- table: experiments/x.toml -->", marked))
    monkeypatch.chdir(repo)  # the sweep ran here
    write_report([sweep], tmp_path / "rep", into=page)
    text = page.read_text()
    assert marked not in text and "<!-- table: experiments/x.toml -->\n| method |" in text


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "--into='{page}': no such file; --into takes an existing page with one <!-- table: "),
        ("no block", "has 0 <!-- table: experiments/x.toml --> blocks; exactly one is allowed"),
        ("two blocks", "has 2 <!-- table: experiments/x.toml --> blocks; exactly one is allowed"),
        ("unclosed", "block on line 9 has no <!-- /table --> line before the next block or the end"),
        ("not a sweep", "is not a sweep folder (no sweep.json); --into fills a page from the folder of one sweep"),
    ],
)
def test_report_into_refusals_write_nothing(docs_repo, tmp_path, capsys, case, expected):
    repo, sweep = docs_repo
    page = repo / "docs" / "page.md"
    block = PAGE[PAGE.index("<!-- table: experiments/x.toml -->") : PAGE.index("\n<!-- table: experiments/x.toml (")]
    text = {
        "missing": None,
        "no block": PAGE.replace(block, ""),
        "two blocks": PAGE.replace(block, block + "\n" + block),
        "unclosed": PAGE.replace(block, block.replace("<!-- /table -->", "")),
        "not a sweep": PAGE,
    }[case]
    if text is None:
        page.unlink()
    else:
        page.write_text(text)
    source = sweep / "runs" / "method-soft_seed-0" if case == "not a sweep" else sweep
    out = tmp_path / "rep"
    with pytest.raises(SystemExit) as e:
        main(["report", str(source), "--out", str(out), "--into", str(page)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected.format(page=page) in err, err
    assert not out.exists()
    assert page.read_text() == text if text is not None else not page.exists()


def test_the_table_digest_round_trips():
    from fedsim.app.report import fill_table, table_blocks, table_digest

    table = "| a | b |\n| --- | --- |\n| 1 | 2 |\n"
    text = fill_table(PAGE, "experiments/x.toml", table, Path("page.md"))
    (block, _) = table_blocks(text)
    assert block.body == table and block.digest == table_digest(table)
    assert fill_table(text, "experiments/x.toml", table, Path("page.md")) == text
    edited = text.replace("| 1 | 2 |", "| 1 | 3 |")
    (block, _) = table_blocks(edited)
    assert block.digest != table_digest(block.body)  # a hand edit shows


def test_report_into_with_paired_puts_both_tables_in_the_block(docs_repo, tmp_path):
    from fedsim.app.report import table_blocks, table_digest

    repo, sweep = docs_repo
    page = repo / "docs" / "page.md"
    args = [
        "report",
        str(sweep),
        "--out",
        str(tmp_path / "rep"),
        "--into",
        str(page),
        "--paired",
        "run.method=soft,topk",
    ]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0
    produced, _ = table_blocks(page.read_text())
    assert produced.digest == table_digest(produced.body)
    summary, paired = produced.body.split("\nPaired, method: soft minus topk:\n\n")
    assert summary.startswith("| method | n | final accuracy |") and paired.startswith("| n | final accuracy |")
    assert paired.splitlines()[2].startswith("| 3 | 0.107 ± 0.076 |")  # soft - topk per seed: 0.10, 0.08, 0.14


def test_a_difference_of_two_metrics_is_tabulated_per_run_with_its_paired_interval(tmp_path):
    """``--metric A-B``: within each run A minus B, so its interval over seeds is the paired one
    (how the clip-memorisation page compares an intervention with none in the same runs)."""
    lows, highs = [0.50, 0.60, 0.70], [0.10, 0.35, 0.20]
    folder = tmp_path / "clip"
    for s, (lo, hi) in enumerate(zip(lows, highs, strict=True)):
        extra = {"mem_rate_none": hi + lo, "mem_rate_mask_pad": hi}
        write_run(folder / f"seed-{s}", {"run.seed": s}, 0.5, extra_metrics=extra)
    (loaded,) = [r for r in load_runs(folder) if r.config["run.seed"] == 1]
    assert loaded.value("mem_rate_none-mem_rate_mask_pad") == pytest.approx(0.60)
    assert math.isnan(loaded.value("mem_rate_none-nosuch"))
    table = summarize(load_runs(folder), [], ["mem_rate_none-mem_rate_mask_pad"])
    low, high = stats.t.interval(0.95, 2, loc=np.mean(lows), scale=stats.sem(lows))
    row = table.iloc[0]
    assert row["mem_rate_none-mem_rate_mask_pad_mean"] == pytest.approx(np.mean(lows))
    assert (row["mem_rate_none-mem_rate_mask_pad_ci95_low"], row["mem_rate_none-mem_rate_mask_pad_ci95_high"]) == (
        pytest.approx(low),
        pytest.approx(high),
    )
