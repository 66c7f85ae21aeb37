"""Bad input: exit code 2, one line naming the key, the value and what is allowed, nothing written."""

import pytest

from fedsim.app.cli import main
from tests.helpers.runs import run_fedsim


def run_in_process(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    return e.value.code, err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "--clients", "0"], "run.clients=0"),
        (["run", "--rounds", "-1"], "run.rounds=-1"),
        (["run", "--clients", "4", "--clients-per-round", "5"], "run.clients_per_round=5"),
        (["run", "--clients-per-round", "1.5"], "run.clients_per_round=1.5"),
        (["run", "--workload", "nope"], "workload.name='nope': must be one of"),
        (["run", "--method", "nope"], "run.method='nope': must be one of"),
        (["run", "--set", "run.bogus=1"], "unknown config key 'run.bogus'"),
        (["run", "--set", "channel.bandwidth_hz=0"], "channel.bandwidth_hz=0.0"),
        (["run", "--set", "noequals"], "expected key=value"),
        (
            ["run", "--set", "soft.rho=2"],
            "method.rho=2.0: must be a number in [0, 1) (note: soft.rho is now method.rho",
        ),
        (["run", "--set", "tsfa.scheduler=nope"], "run.scheduler='nope': must be one of"),
        (["run", "--bogus-option"], "No such option"),
        (["run", "--clients", "many"], "many"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_in_process(
        [*args, "--out", str(tmp_path / "out")] if args[0] == "run" and "--bogus-option" not in args else args, capsys
    )
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert fragment in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "results").exists()


def test_unparsable_config_file(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nrounds = = 3\n")
    code, err = run_in_process(["run", "--config", str(bad), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "not valid TOML" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_non_empty_out_folder_is_refused(capsys, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    code, err = run_in_process(["run", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "not empty" in err
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["notes.txt"]


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = run_fedsim(["run", "--rounds", "0", "--out", str(tmp_path / "o")], timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "fedsim: run.rounds=0: must be an integer in [1, 1000000000000]"
    assert proc.stdout == "" and not (tmp_path / "o").exists()


def test_methods_lists_each_method_with_the_keys_it_reads_and_every_scheduler(capsys):
    from fedsim.core.methods import METHODS
    from fedsim.core.schedulers import SCHEDULERS

    with pytest.raises(SystemExit) as e:
        main(["methods"])
    assert e.value.code == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert set(METHODS) | set(SCHEDULERS) <= set(lines)
    assert lines["soft"].endswith("[method.rho, method.lambda_orth]") and lines["topk"].endswith("[method.rho]")
    assert lines["fedsa"].endswith("[client state]") and "[" not in lines["ideal"]
