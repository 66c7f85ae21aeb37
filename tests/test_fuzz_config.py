"""Property-based fuzz: malformed configuration keys and CLI values always give exit 2 and one line."""

import string
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.app.cli import main
from fedsim.core.config import describe_keys

KEYS = [k for k, *_ in describe_keys()]
INT_KEYS = [k for k, d, *_ in describe_keys() if isinstance(d, int) and not isinstance(d, bool)]
FLOAT_KEYS = [k for k, d, *_ in describe_keys() if isinstance(d, float)]

junk = st.text(alphabet=string.printable + "é€\u200b", min_size=0, max_size=12)
unknown_key = st.builds(lambda a, b: f"{a}.{b}", st.sampled_from(["run", "channel", "nosuch", ""]), junk).filter(
    lambda k: k not in KEYS
)
# invalid for every float key: not finite, or not a number at all
bad_value_for_number = st.sampled_from(["nan", "inf", "-inf", "true", "[1, 2]", "{a = 1}", '"text"', "1e400"])
VALID_NAMES = {
    "ideal",
    "soft",
    "soft-noreg",
    "topk",
    "randk",
    "svd",
    "text-classify",
    "iid",
    "dirichlet",
    "natural",
    "rayleigh",
    "rician",
    "nakagami",
    "none",
}


def malformed():
    return st.one_of(
        st.tuples(unknown_key, junk).map(lambda kv: ["--set", f"{kv[0]}={kv[1]}"]),
        st.tuples(st.sampled_from(INT_KEYS), st.sampled_from(["-3", "2.5", "nan", "true", '"x"', "[1]", "-0.1"])).map(
            lambda kv: ["--set", f"{kv[0]}={kv[1]}"]
        ),
        st.tuples(st.sampled_from(FLOAT_KEYS), bad_value_for_number).map(lambda kv: ["--set", f"{kv[0]}={kv[1]}"]),
        st.sampled_from(["run.method", "workload.name", "workload.partition", "channel.fading"]).flatmap(
            lambda k: junk.filter(lambda v: v not in VALID_NAMES).map(
                lambda v: ["--set", f"{k}={v!r}".replace("'", '"')]
            )
        ),
        st.sampled_from(["--clients", "--rounds", "--seed"]).flatmap(
            lambda opt: st.sampled_from(["-1", "x", "1.5", "", "1e9999", *(["0"] if opt != "--seed" else [])]).map(
                lambda v: [opt, v]
            )
        ),
        junk.filter(lambda t: "=" not in t).map(lambda t: ["--set", t]),
    )


def check_refused(args, tmp_path_factory, capsys) -> None:
    out = tmp_path_factory.mktemp("fuzz") / "out"
    with mock.patch("fedsim.flower.simulation.run_in_simulation", side_effect=AssertionError(f"valid: {args}")):
        with pytest.raises(SystemExit) as e:
            main(["run", *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2, (args, err)
    assert len([line for line in err.splitlines() if line.strip()]) == 1, (args, err)
    assert "Traceback" not in err
    assert not out.exists()


FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(max_examples=150, **FUZZ)
@given(args=malformed())
def test_malformed_input_exit_2_one_line(args, tmp_path_factory, capsys):
    check_refused(args, tmp_path_factory, capsys)


@pytest.mark.slow
@settings(max_examples=500, **FUZZ)
@given(args=malformed())
def test_malformed_input_exit_2_one_line_many(args, tmp_path_factory, capsys):
    check_refused(args, tmp_path_factory, capsys)
