"""The deployment files without running them: compose files, certificates, the staged app (fast)."""

from __future__ import annotations

import shutil
import subprocess
import tomllib

import pytest

from fedsim.config import build_config
from fedsim.deploy import find_app_dir, run_config, stage_app, write_connection
from tests.deploy.federation import REPO

yaml = pytest.importorskip("yaml")

BASE = REPO / "docker-compose.yml"
INSECURE = REPO / "docker-compose.insecure.yml"
HOST = REPO / "docker-compose.host.yml"
DEFAULT_NODES = ["supernode-1", "supernode-2", "supernode-3"]


def _services(path):
    return yaml.safe_load(path.read_text())["services"]


def test_compose_topology_tls_and_auth_by_default():
    doc = yaml.safe_load(BASE.read_text())
    services = doc["services"]
    default = [name for name, s in services.items() if "profiles" not in s]
    assert default == ["superlink", "serverapp", "register", *DEFAULT_NODES]
    link = services["superlink"]["command"]
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth"):
        assert flag in link
    assert "--disable-runtime-dependency-installation" in link and "--isolation process" in link
    assert "--database /state/superlink.db" in link and "superlink-state:/state" in services["superlink"]["volumes"]
    assert "results:/work/results" in services["serverapp"]["volumes"]
    assert {"superlink-state", "results"} <= set(doc["volumes"])
    nodes = [name for name in services if name.startswith("supernode-")]
    assert len(nodes) == 8
    for i, name in enumerate(nodes, start=1):
        cmd = services[name]["command"]
        assert f"--auth-supernode-private-key /certs/supernode-{i}" in cmd and "--root-certificates" in cmd
        assert f'"partition-id={i - 1} num-partitions=${{FEDSIM_NODES:-3}}' in cmd
        assert f"${{FEDSIM_NODE_{i}_PROFILE-" in cmd
        if i > 3:
            assert services[name]["profiles"] == [f"nodes-{n}" for n in range(i, 9)]
    assert "--insecure" not in BASE.read_text()
    assert "image: ${FEDSIM_IMAGE:-fedsim:latest}" in BASE.read_text()


def test_insecure_only_through_its_override_and_host_override_covers_every_service():
    base, insecure, host = _services(BASE), _services(INSECURE), _services(HOST)
    assert (
        "--insecure" in insecure["superlink"]["command"]
        and "--enable-supernode-auth" not in insecure["superlink"]["command"]
    )
    assert set(insecure) == set(base) == set(host)
    for name in base:
        assert host[name]["network_mode"] == "host"
        if name.startswith("supernode-"):
            assert "--insecure" in insecure[name]["command"] and "--auth-supernode" not in insecure[name]["command"]


def _compose_cli() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.parametrize("overrides", [[], [INSECURE], [HOST]], ids=["tls", "insecure", "host"])
def test_compose_config_validates(overrides, tmp_path):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    files = [arg for f in [BASE, *overrides] for arg in ("-f", str(f))]
    env = {"PATH": __import__("os").environ["PATH"], "FEDSIM_CERTS": str(tmp_path), "HOME": str(tmp_path)}
    for profiles in ("", "nodes-5"):
        proc = subprocess.run(
            [*cli, "--project-directory", str(REPO), *files, "config"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**env, "COMPOSE_PROFILES": profiles, "FEDSIM_NODES": "5" if profiles else "3"},
        )
        assert proc.returncode == 0, proc.stderr
        rendered = yaml.safe_load(proc.stdout)["services"]
        assert "partition-id=0 num-partitions=" in " ".join(map(str, _as_list(rendered["supernode-1"]["command"])))


def _as_list(command):
    return command if isinstance(command, list) else [command]


def test_certs_script_makes_a_ca_server_certificate_and_node_keys(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    out = tmp_path / "certs"
    script = REPO / "docker" / "certs.sh"
    args = ["bash", str(script), "--out", str(out), "--nodes", "2", "--san", "DNS:fl.example.org,IP:10.1.2.3"]
    subprocess.run(args, check=True, capture_output=True, timeout=120)
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(out / "ca.crt"), str(out / "server.crt")], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stderr
    san = subprocess.run(
        ["openssl", "x509", "-in", str(out / "server.crt"), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
    ).stdout
    for name in ("DNS:localhost", "DNS:superlink", "IP Address:127.0.0.1", "DNS:supernode-2", "DNS:fl.example.org"):
        assert name in san
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    for i in (1, 2):
        key = load_ssh_private_key((out / f"supernode-{i}").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        assert isinstance(load_ssh_public_key((out / f"supernode-{i}.pub").read_bytes()), ec.EllipticCurvePublicKey)
        assert (out / f"supernode-{i}").stat().st_mode & 0o077 == 0
    assert (out / "ca.key").stat().st_mode & 0o077 == 0
    before = (out / "ca.crt").read_bytes()
    subprocess.run(
        ["bash", str(script), "--out", str(out), "--nodes", "3"], check=True, capture_output=True, timeout=120
    )
    assert (out / "ca.crt").read_bytes() == before and (out / "supernode-3.pub").is_file()


def test_staged_app_declares_the_whole_configuration(tmp_path):
    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.config_utils import load_and_validate

    cfg = build_config({"run.clients": 3, "run.clients_per_round": 3, "workload.samples_per_client": 16})
    flat = {"results-dir": "/work/results/x", **run_config(cfg)}
    stage = stage_app(find_app_dir(None), flat, tmp_path / "app")
    declared = tomllib.loads((stage / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert declared == flat
    _, warnings = load_and_validate(stage / "pyproject.toml")
    assert not warnings
    assert len(build_fab_from_disk(stage)) < 10 * 1024 * 1024


def test_write_connection(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    path = write_connection(tmp_path, "fed", "host:8000", ca, default=True)
    write_connection(tmp_path, "dbg", "host:8000", None, insecure=True)
    links = tomllib.loads(path.read_text())["superlink"]
    assert links["default"] == "fed"
    assert links["fed"] == {"address": "host:8000", "root-certificates": str(ca.resolve())}
    assert links["dbg"] == {"address": "host:8000", "insecure": True}
