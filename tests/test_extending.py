"""The manual's examples of a new upload method, a stateful one and a new scheduler (docs/extending.md)
work as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fedsim.core.methods import METHODS
from fedsim.core.schedulers import SCHEDULERS
from tests.helpers.engine import InProcessClients, StubHost, make_cfg
from tests.helpers.methods import check_aggregates_its_own_uploads, check_prices_its_upload_exactly

EXTENDING = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


@pytest.fixture
def registered():
    text = EXTENDING.read_text()
    section = text[text.index("## Adding an upload method or a scheduler") :]
    end = section.find("\n## ", 10)
    section = section if end < 0 else section[:end]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 3
    for block in blocks:
        exec(compile(block, "docs/extending.md", "exec"), {})
    yield
    METHODS.pop("bnorm", None)
    METHODS.pop("soft-ef-half", None)
    SCHEDULERS.pop("proportional", None)


def test_the_documented_method_passes_the_shared_method_tests(registered):
    assert "bnorm" in METHODS
    for rho in (0.0, 0.5, 0.875):
        for quant_bits in (0, 8):
            check_prices_its_upload_exactly("bnorm", rho, 32, quant_bits)
    check_aggregates_its_own_uploads("bnorm")


def test_the_documented_method_and_scheduler_run_rounds_of_the_engine(registered):
    from fedsim.core.engine import RoundEngine

    cfg = make_cfg(**{"run.method": "bnorm", "run.scheduler": "proportional"})
    engine = RoundEngine(cfg, StubHost())
    for round_ in (1, 2):
        record = engine.run_round(round_, InProcessClients())
        assert record.status == "ok" and len(record.clients) == cfg.num_sampled
    bands = [c.bandwidth_hz for c in record.clients]
    assert sum(bands) == pytest.approx(cfg.channel.bandwidth_hz) and len(set(bands)) > 1  # not the equal split


def test_the_documented_stateful_method_keeps_half_the_residual_and_runs_rounds(registered, tmp_path):
    from fedsim.core import client_state
    from fedsim.core.methods import get_method
    from fedsim.core.results import read_rounds
    from fedsim.core.runner import run
    from tests.helpers.methods import gen, make_state

    check_prices_its_upload_exactly("soft-ef-half", 0.5, 32, 0)
    state, global_state = make_state(1), make_state(2)
    kept = {}
    for name in ("soft-ef", "soft-ef-half"):
        arrays, _, kept[name] = get_method(name).encode_stateful(state, global_state, None, 0.5, 32, gen())
    assert set(kept["soft-ef"]) == set(kept["soft-ef-half"]) and kept["soft-ef"]
    for key, residual in kept["soft-ef"].items():
        assert np.allclose(kept["soft-ef-half"][key], 0.5 * residual) and np.any(residual)
    cfg = make_cfg(**{"run.method": "soft-ef-half", "run.clients_per_round": 4, "run.clients": 4, "run.rounds": 2})
    summary = run(cfg, StubHost(), lambda: (InProcessClients(), {}), tmp_path)
    assert summary["status"] == "ok" and [r["status"] for r in read_rounds(tmp_path)] == ["ok", "ok"]
    assert len(list((tmp_path / client_state.FOLDER).glob("client-*/round-*"))) == 8  # 4 clients x 2 rounds
