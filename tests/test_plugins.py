"""Third-party plug-ins: a workload, an upload method, a scheduler and a path-loss model in one package,
pip-installed from a temporary folder and found through their entry points (fedsim.workloads,
fedsim.methods, fedsim.schedulers, fedsim.channels), in the driver and in the Ray actors."""

import os
import subprocess
import sys
import textwrap

import pytest

PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "fedsim-toy-workload"
version = "0.0.1"

[project.entry-points."fedsim.workloads"]
toy-parity = "toy_workload:ToyParity"

[project.entry-points."fedsim.methods"]
toy-firstk = "toy_extras:FIRSTK"
toy-broken = "toy_extras:NOT_A_METHOD"

[project.entry-points."fedsim.schedulers"]
toy-even = "toy_extras:EVEN"

[project.entry-points."fedsim.channels"]
"pathloss.toy-flat" = "toy_extras:FlatPathLoss"

[tool.setuptools]
py-modules = ["toy_workload", "toy_extras"]
"""

MODULE = '''
"""toy-parity: is the number of ones in 8 bits above 4? A 2-layer MLP with LoRA on its hidden layer."""
from typing import ClassVar

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from workloads.base import Workload
from workloads.options import Declaration, Option, Range


class ToyParity(Workload):
    name: ClassVar[str] = "toy-parity"
    description: ClassVar[str] = "Third-party test workload: majority of 8 bits with a small MLP"
    declaration: ClassVar[Declaration] = Declaration({"hidden": Option(32, Range(2, 1024), "hidden width")})
    primary_metric: ClassVar[str] = "accuracy"
    lora_target_modules: ClassVar[list[str]] = ["hidden"]
    extra_trainable: ClassVar[list[str]] = ["classifier"]

    def build_base_model(self) -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(self.spec.seed)
            return _Net(self.params["hidden"])

    def build_data(self):
        def make(n, seed):
            x = np.random.default_rng(seed).integers(0, 2, size=(n, 8))
            return Dataset.from_dict({"x": x.tolist(), "label": (x.sum(1) > 4).astype(int).tolist()})

        return make(self.spec.num_clients * self.spec.samples_per_client, self.spec.seed), make(
            self.spec.test_samples, self.spec.seed + 1
        )

    def collate(self, rows):
        return {"x": torch.tensor(rows["x"], dtype=torch.float32), "y": torch.tensor(rows["label"])}

    def loss(self, model, batch):
        return nn.functional.cross_entropy(model(batch["x"]), batch["y"])

    @torch.no_grad()
    def evaluate(self, model, data):
        batch = self.collate(data[:])
        return {"accuracy": float((model(batch["x"]).argmax(-1) == batch["y"]).float().mean())}

    def flops_per_sample(self) -> float:
        h = self.params["hidden"]
        return 6.0 * (8 * h + h * h + 2 * h)


class _Net(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.inp, self.hidden, self.classifier = nn.Linear(8, h), nn.Linear(h, h), nn.Linear(h, 2)

    def forward(self, x):
        return self.classifier(torch.relu(self.hidden(torch.relu(self.inp(x)))))
'''


EXTRAS = '''
"""An upload method (the first k ranks), a scheduler (fixed rho, equal band split) and a path-loss
model (the same loss at every distance), built from fedsim's public pieces."""
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from fedsim.core.methods import UploadMethod, fixed_rho, rank_values, soft_bits
from fedsim.core.schedulers import SchedulerEntry


def sparsify_firstk(A, B, rho, value_bits, generator=None):
    import torch

    from fedsim.soft import rank_update
    from fedsim.soft.budget import keep_count, payload_bits

    r = A.shape[0]
    k = keep_count(r, rho)
    s = B.norm(dim=0) * A.norm(dim=1)
    error = float(s[k:].double().square().sum())
    return rank_update(A, B, torch.arange(k), value_bits, payload_bits(A.shape[1], B.shape[0], r, k, value_bits), error, r)


FIRSTK = UploadMethod(
    name="toy-firstk",
    description="the first k ranks (third-party test method)",
    sparsify=sparsify_firstk,
    matrix_bits=soft_bits,
    matrix_values=rank_values,
)
NOT_A_METHOD = "toy-broken"


def build_even(cfg):
    from fedsim.tsfa import FixedRhoScheduler, make_allocator

    allocator = make_allocator("equal", cfg.num_sampled, cfg.channel.bandwidth_hz)
    return FixedRhoScheduler(fixed_rho(cfg.run.method, cfg.method.rho), allocator, cfg.tsfa.latency_budget_s)


EVEN = SchedulerEntry(name="toy-even", description="fixed rho, equal split (third-party test scheduler)", build=build_even)


@dataclass(frozen=True)
class FlatPathLoss:
    """The same path loss at every distance (third-party test model)."""

    pathloss_intercept_db: float = field(default=128.1, metadata={"unit": "dB"})

    has_los_state: ClassVar[bool] = False

    def loss_db(self, distance_m, los=None):
        return np.full(np.shape(distance_m), self.pathloss_intercept_db)

    def los_probability(self, distance_m):
        return np.ones(np.shape(distance_m))
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The toy package installed with pip into its own folder (not the venv)."""
    root = tmp_path_factory.mktemp("plugin")
    pkg = root / "pkg"
    pkg.mkdir()
    (pkg / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (pkg / "toy_workload.py").write_text(MODULE)
    (pkg / "toy_extras.py").write_text(EXTRAS)
    target = root / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation"]
        + ["--target", str(target), str(pkg)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any(p.name.endswith(".dist-info") for p in target.iterdir())
    return target


def fedsim(site, *args, timeout=600):
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fedsim", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.mark.slow  # the fixture pip-installs a package (about 15 s)
def test_installed_plugins_are_listed_and_a_broken_one_is_refused_in_one_line(site):
    proc = fedsim(site, "workloads")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.count("│") >= 4}
    assert {"toy-parity", "text-classify", "equation-reasoner"} <= set(lines)
    assert "majority of 8 bits" in lines["toy-parity"] and "accuracy" in lines["toy-parity"]
    proc = fedsim(site, "methods")
    assert proc.returncode == 0, proc.stderr
    assert "toy-firstk" in proc.stdout and "the first k ranks" in proc.stdout and "toy-even" in proc.stdout
    proc = fedsim(site, "channels")
    assert proc.returncode == 0, proc.stderr
    assert "toy-flat" in proc.stdout and "same path loss at every distance" in proc.stdout
    proc = fedsim(site, "run", "--method", "toy-broken", "--clients", "2")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "run.method='toy-broken'" in proc.stderr and "is a str, not an UploadMethod" in proc.stderr


@pytest.mark.slow
def test_installed_workload_method_scheduler_and_channel_run_through_ray(site, tmp_path):
    """One 2-round run on all four plug-ins: the Ray actors find them by name as the driver does."""
    import json
    import math
    import tomllib

    from fedsim.core.methods import soft_bits

    out = tmp_path / "o"
    proc = fedsim(
        site,
        *("run", "--workload", "toy-parity", "--clients", "3", "--rounds", "2", "--clients-per-round", "3"),
        *("--method", "toy-firstk", "--scheduler", "toy-even", "--set", "channel.pathloss=toy-flat"),
        *("--set", "channel.fading=none", "--set", "channel.shadowing=none"),
        *("--out", str(out), "--quiet", "--set", "workload.samples_per_client=16", "--set", "workload.test_samples=32"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(out)
    cfg = tomllib.loads((out / "config.toml").read_text())
    rank, rho = cfg["lora"]["rank"], cfg["method"]["rho"]
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        clients = r["clients"]
        assert len(clients) == 3 and not r["failures"]
        # toy-flat, no fading or shadowing: one gain, hence one rate, for clients at different distances
        assert len({c["distance_m"] for c in clients}) == 3
        assert all(math.isclose(c["rate_bps"], clients[0]["rate_bps"], rel_tol=1e-9) for c in clients)
        # toy-even: B_total / K each (the default min-max split would differ with the device speeds)
        assert all(math.isclose(c["bandwidth_hz"], cfg["channel"]["bandwidth_hz"] / 3) for c in clients)
        # toy-firstk: k of the rank-r hidden layer's ranks with their mask, plus the dense 32 x 2 (+ 2) head
        head = (32 * 2 + 2) * 32
        assert {c["payload_bits"] for c in clients} == {soft_bits(32, 32, rank, rho, 32) + head}


# ---- the look-up itself, in process (fast): fake entry points over a module in a temporary folder

PLUGIN_MODULE = """
from dataclasses import dataclass

from fedsim.core.methods import UploadMethod, rank_values, soft_bits
from fedsim.core.schedulers import SchedulerEntry

RENAMED = UploadMethod(name="other", description="d", sparsify="randk", matrix_bits=soft_bits, matrix_values=rank_values)
EVEN = SchedulerEntry(name="fake-even", description="a plug-in scheduler", build=lambda cfg: None)


@dataclass(frozen=True)
class Flat:
    pathloss_intercept_db: float = 100.0
    has_los_state = False

    def loss_db(self, distance_m, los=None):
        return distance_m * 0 + self.pathloss_intercept_db

    def los_probability(self, distance_m):
        return distance_m * 0 + 1.0


@dataclass(frozen=True)
class NewKnob:
    knob_db: float = 1.0
"""

FAKE_ENTRY_POINTS = {
    "fedsim.methods": {"renamed": "fake_plugin:RENAMED", "missing": "no_such_module:X"},
    "fedsim.schedulers": {"fake-even": "fake_plugin:EVEN"},
    "fedsim.channels": {"pathloss.fake-flat": "fake_plugin:Flat", "pathloss.new-knob": "fake_plugin:NewKnob"},
}


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    from importlib.metadata import EntryPoint

    import fedsim.core.methods
    import fedsim.core.plugins
    import fedsim.core.schedulers
    from channels.pathloss import PATHLOSS

    (tmp_path / "fake_plugin.py").write_text(PLUGIN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))

    def entry_points(group):
        return [EntryPoint(n, v, group) for n, v in FAKE_ENTRY_POINTS.get(group, {}).items()]

    monkeypatch.setattr(fedsim.core.plugins, "entry_points", entry_points)
    monkeypatch.setattr(
        fedsim.core.methods, "METHODS", dict(fedsim.core.methods.METHODS)
    )  # what the test registers goes
    monkeypatch.setattr(fedsim.core.schedulers, "SCHEDULERS", dict(fedsim.core.schedulers.SCHEDULERS))
    before = dict(PATHLOSS)
    yield
    PATHLOSS.clear()
    PATHLOSS.update(before)


def test_an_installed_scheduler_and_channel_component_are_found_by_name(fake_plugins):
    from fedsim.core.checks import checked_config
    from fedsim.core.schedulers import get_scheduler, scheduler_names
    from fedsim.core.wireless import build_link

    assert "fake-even" in scheduler_names() and get_scheduler("fake-even").description == "a plug-in scheduler"
    cfg = checked_config({"channel.pathloss": "fake-flat", "channel.pathloss_intercept_db": 90.0})
    assert build_link(cfg.channel).pathloss.loss_db(123.0) == 90.0  # built from the section's key


def test_broken_plugins_are_one_line_config_errors_naming_the_key(fake_plugins):
    from fedsim.core.config import build_config
    from fedsim.core.methods import get_method
    from fedsim.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"^run.method='renamed': .* is named 'other'; an entry point is named after its entry"
    ):
        get_method("renamed")
    with pytest.raises(ConfigError, match=r"^run.method='missing': .* failed to load: ModuleNotFoundError"):
        get_method("missing")
    with pytest.raises(ConfigError, match=r"^run.method='nope': must be one of ideal, .*renamed, missing$"):
        get_method("nope")  # the installed names are listed, unloaded
    with pytest.raises(ConfigError, match=r"^channel.pathloss='new-knob': .* no configuration keys .*: knob_db$"):
        build_config({"channel.pathloss": "new-knob"})
    with pytest.raises(ConfigError, match=r"^channel.pathloss='nope': must be one of log-distance, .* installed"):
        build_config({"channel.pathloss": "nope"})
