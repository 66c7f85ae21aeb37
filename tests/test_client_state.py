"""Client state files (fedsim.core.client_state): versions by round, pruning, resume, where they live."""

import numpy as np
import pytest

from fedsim.core import client_state


def st(x: float) -> dict[str, np.ndarray]:
    return {"b": np.full((2, 3), x, np.float32)}


def versions(root, cid):
    return sorted(p.name for p in client_state.client_folder(root, cid).iterdir())


def test_a_client_reads_the_newest_version_before_the_round(tmp_path):
    assert client_state.load(tmp_path, 3, 1) == (0, None)
    client_state.save(tmp_path, 3, 2, st(2.0), read_round=0)
    client_state.save(tmp_path, 3, 5, st(5.0), read_round=2)
    t, s = client_state.load(tmp_path, 3, 5)  # round 5 (e.g. redone after a resume) starts from round 2
    assert t == 2 and np.all(s["b"] == 2.0)
    t, s = client_state.load(tmp_path, 3, 9)
    assert t == 5 and np.all(s["b"] == 5.0)
    assert client_state.load(tmp_path, 4, 9) == (0, None)  # another client's state is its own


def test_pruning_keeps_the_version_a_redone_round_needs(tmp_path):
    for t, read in ((1, 0), (2, 1), (4, 2), (7, 4)):
        client_state.save(tmp_path, 0, t, st(t), read_round=read)
    assert versions(tmp_path, 0) == ["round-000004.safetensors", "round-000007.safetensors"]
    # killed in round 7 before its checkpoint: the resume drops version 7 and round 7 starts from 4
    assert client_state.discard_after(tmp_path, 6) == 1
    assert client_state.load(tmp_path, 0, 7)[0] == 4


def test_discard_after_removes_later_versions_and_half_written_files(tmp_path):
    client_state.save(tmp_path, 1, 2, st(2), read_round=0)
    client_state.save(tmp_path, 2, 3, st(3), read_round=0)
    (client_state.client_folder(tmp_path, 1) / "round-000003.safetensors.tmp").write_bytes(b"half")
    assert client_state.discard_after(tmp_path, 2) == 2
    assert versions(tmp_path, 1) == ["round-000002.safetensors"] and versions(tmp_path, 2) == []
    assert client_state.discard_after(tmp_path / "none", 2) == 0


def test_a_supernode_keeps_its_state_under_its_own_state_dir(tmp_path, monkeypatch):
    server = "/srv/results/run-7/client_state"
    monkeypatch.delenv(client_state.SIMULATION_ENV, raising=False)
    with pytest.raises(RuntimeError, match="no node-config state-dir"):  # a server never picks a node's path
        client_state.resolve_root(server, {})
    monkeypatch.setenv(client_state.SIMULATION_ENV, "1")
    assert client_state.resolve_root(server, {}) == client_state.Path(server)  # simulation: the server's folder
    node = client_state.resolve_root(server, {"state-dir": str(tmp_path)})
    assert node == tmp_path / "run-7"
    evil = client_state.resolve_root("/x/../../etc/client_state", {"state-dir": str(tmp_path)})
    assert evil.parent == tmp_path  # only a name from the server, never a path
    assert client_state.resolve_root("/a/../client_state", {"state-dir": str(tmp_path)}) == tmp_path / "run"
