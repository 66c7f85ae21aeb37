"""The workload cache checks what it loads (issue 27): each entry's files against the SHA-256 in its
meta.json; a damaged entry is built again with one warning line; an unusable FEDSIM_CACHE is refused."""

import json
import os

import pytest
import torch
from torch import nn

from tests.helpers.refusals import problems_of, run_cases
from workloads import cache
from workloads.text_classify import generate_topics

PAYLOAD = {"arch": [3, 4, 3], "seed": 0, "code": "abc"}


class Toy:
    """A model entry whose pretraining is counted: a second pretraining is a rebuilt entry."""

    def __init__(self) -> None:
        self.pretrained = 0

    @staticmethod
    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3))

    def pretrain(self, net: nn.Module) -> dict:
        self.pretrained += 1
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
        return {}

    def load(self) -> tuple[nn.Module, dict]:
        return cache.cached_model("toy", PAYLOAD, self.build, self.pretrain)


def weights(net: nn.Module) -> list[torch.Tensor]:
    return list(net.state_dict().values())


def flip_last_byte(path) -> None:
    """A bit flip in the tensor data: the safetensors header stays intact, the file still loads."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path))
    toy = Toy()
    net, meta = toy.load()
    entry = tmp_path / "toy" / cache.content_hash(PAYLOAD)
    return toy, weights(net), entry


def test_an_entry_records_the_sha256_of_its_files(toy):
    _, _, entry = toy
    hashes = json.loads((entry / "meta.json").read_text())["sha256"]
    assert list(hashes) == ["model.safetensors"] and len(hashes["model.safetensors"]) == 64


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda e: flip_last_byte(e / "model.safetensors"), "is corrupt (model.safetensors differs from its SHA-256"),
        (lambda e: (e / "model.safetensors").write_bytes((e / "model.safetensors").read_bytes()[:100]), "is corrupt"),
        (lambda e: (e / "model.safetensors").unlink(), "is unreadable (FileNotFoundError"),
        (lambda e: (e / "meta.json").write_text("{"), "is unreadable (JSONDecodeError"),
        (
            lambda e: (e / "meta.json").write_text(json.dumps({"key": e.name, "payload": PAYLOAD})),
            "is unverifiable (meta.json lists no SHA-256: made by an older fedsim)",
        ),
    ],
    ids=["bit-flip", "truncated", "missing", "meta-not-json", "older-entry"],
)
def test_a_damaged_model_entry_is_built_again_with_one_warning(toy, capfd, damage, said):
    toy_, fresh, entry = toy
    capfd.readouterr()
    damage(entry)
    net, meta = toy_.load()
    err = capfd.readouterr().err
    assert toy_.pretrained == 2 and not meta["cached"]
    assert all(torch.equal(a, b) for a, b in zip(weights(net), fresh, strict=True))
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"fedsim: warning: cache entry {entry} {said}"), err
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name, f"{entry.name}.lock"]
    toy_.load()  # the rebuilt entry verifies: loaded, no warning
    assert toy_.pretrained == 2 and capfd.readouterr().err == ""


def test_a_damaged_dataset_entry_is_generated_again(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path))
    calls = []

    def generate():
        calls.append(1)
        return generate_topics(300, 7, 0.7)

    payload = {"generator": "generate_topics", "args": [300, 7, 0.7]}
    cache.cached_dataset("toy-data", payload, generate)
    entry = tmp_path / "toy-data" / cache.content_hash(payload)
    hashes = json.loads((entry / "meta.json").read_text())["sha256"]
    arrow = next(name for name in hashes if name.endswith(".arrow"))
    assert all(name.startswith("data/") for name in hashes)
    flip_last_byte(entry / arrow)
    capfd.readouterr()
    data = cache.cached_dataset("toy-data", payload, generate)
    assert calls == [1, 1] and data.to_dict() == generate_topics(300, 7, 0.7).to_dict()
    assert f"cache entry {entry} is corrupt ({arrow} differs" in capfd.readouterr().err


def test_an_unusable_fedsim_cache_is_refused_before_anything_heavy(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    run = ["--clients", "4", "--rounds", "1"]
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('[run]\nclients = 4\nrounds = 1\n[sweep.grid]\n"run.seed" = [1, 2]\n')
    cases = [
        (str(a_file), "run", run, "is a file"),
        (str(a_file / "sub"), "run-below-a-file", run, "which is not a folder"),
        (str(a_file), "sweep", ["sweep", str(sweep)], "is a file"),
        (str(a_file), "plan", ["plan", "--clients", "4"], "is a file"),
    ]
    for root, name, args, fragment in cases:
        (tmp_path / name).mkdir()
        results = run_cases([(name, args)], tmp_path / name, env={"FEDSIM_CACHE": root})
        assert problems_of(results, cpu_limit_s=3.0) == []
        assert f"FEDSIM_CACHE={root!r}: " in results[0].text and fragment in results[0].text
    assert a_file.read_text() == "not a folder"


def test_a_fedsim_cache_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    from fedsim.core.checks import check_cache_root
    from fedsim.errors import ConfigError

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if os.access(locked, os.W_OK):
        pytest.skip("this user may write in any folder (root)")
    monkeypatch.setenv("FEDSIM_CACHE", str(locked / "cache"))
    with pytest.raises(ConfigError, match=f"cannot write in {str(locked)!r}"):
        check_cache_root()


def test_the_code_digest_ignores_documentation_and_sees_code(tmp_path):
    """Editing a docstring, a comment or the layout keeps a cached model's key; changing code does not."""
    import importlib.util

    from workloads.cache import source_digest

    def digest(text: str, name: str) -> str:
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return source_digest(module)

    base = digest('"""Doc."""\nX = 1\n"""X\'s doc."""\n\n\ndef f(a):\n    """f."""\n    return a + X\n', "m0")
    documented = '"""Other doc."""\n# a comment\nX = 1\n\n\ndef f(a):  # why\n    """g."""\n\n    return a + X\n'
    assert digest(documented, "m1") == base
    assert digest('"""Doc."""\nX = 1\n\n\ndef f(a):\n    return a - X\n', "m2") != base
    assert digest('"""Doc."""\nX = 2\n\n\ndef f(a):\n    return a + X\n', "m3") != base
