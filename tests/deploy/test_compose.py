"""The deployment files without running them: compose files, certificates, the staged app (fast)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from fedsim.app.deploy import find_app_dir, run_config, stage_app, write_connection
from fedsim.core.checks import checked_config
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

    cfg = checked_config({"run.clients": 3, "run.clients_per_round": 3, "workload.samples_per_client": 16})
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


# ---- least privilege: certificate mounts and the published address ------------------------------------

CERTS_SRC = "/srv/fedsim-certs"  # FEDSIM_CERTS in the structural tests (a path that need not exist)
NODE_COUNT = 8


def _expected_cert_mounts() -> dict[str, dict[str, str]]:
    """Service -> {container path: path inside FEDSIM_CERTS}: what each container may see."""
    expected = {
        "superlink": {"/certs/ca.crt": "ca.crt", "/certs/server.crt": "server.crt", "/certs/server.key": "server.key"},
        "serverapp": {"/certs/ca.crt": "ca.crt"},
        "register": {"/certs": "public"},  # ca.crt and the SuperNodes' public keys only (docker/certs.sh)
    }
    for i in range(1, NODE_COUNT + 1):
        expected[f"supernode-{i}"] = {"/certs/ca.crt": "ca.crt", f"/certs/supernode-{i}": f"supernode-{i}"}
    return expected


_VAR = re.compile(r"\$\{(\w+)(?:(:?-)([^}]*))?\}")


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` (unset or empty) and ``${VAR-default}`` (unset)."""

    def value(m: re.Match) -> str:
        name, op, default = m.groups()
        if op == ":-" and not env.get(name):
            return default
        if op == "-" and name not in env:
            return default
        return env.get(name, "")

    return _VAR.sub(value, text)


def _binds(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of the bind mounts, from short syntax or rendered long syntax."""
    binds = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):  # `docker compose config` (v2) renders the long syntax
            if volume["type"] == "bind":
                binds.append((volume["source"], volume["target"], bool(volume.get("read_only"))))
            continue
        source, target, *mode = volume.split(":")
        if source.startswith((".", "/", "~")):  # otherwise a named volume
            binds.append((source, target, "ro" in mode[0].split(",") if mode else False))
    return binds


def _published(service: dict) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each published port; "" = every interface."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):  # v2: {host_ip, published, target, protocol, mode}
            out.append((port.get("host_ip", ""), str(port.get("published", "")), str(port["target"])))
            continue
        parts = str(port).split("/")[0].rsplit(":", 2)
        parts = [""] * (3 - len(parts)) + parts
        out.append((parts[0], parts[1], parts[2]))
    return out


def _check_least_privilege(services: dict, certs: str, bind_address: str) -> None:
    """The rules of the security model (docs/deployment.md), on compose services with variables resolved."""
    certs = certs.rstrip("/")
    expected = _expected_cert_mounts()
    assert set(services) == set(expected)
    for name, service in services.items():
        binds = _binds(service)
        assert all(ro for _, _, ro in binds), f"{name}: a writable bind mount {binds}"
        got = {}
        for source, target, _ in binds:
            assert source.startswith(certs + "/"), f"{name} bind-mounts {source}, not a file of FEDSIM_CERTS"
            got[target] = source[len(certs) + 1 :]
        assert got == expected[name], f"{name} mounts {got}"
        assert "ca.key" not in got.values()
        # every certificate or key the command (or health check) names is one the container has
        text = json.dumps([service.get("command"), service.get("entrypoint"), service.get("healthcheck")])
        for path in re.findall(r"/certs/[\w.*-]+", text):
            assert path in got or "/certs" in got, f"{name} uses {path} but does not mount it"
        if name != "superlink":
            assert not service.get("ports"), f"{name} publishes {service['ports']}"
    assert _published(services["superlink"]) == [(bind_address, "8000", "8000")]


def _base_services(env: dict[str, str]) -> dict:
    return yaml.safe_load(_interpolate(BASE.read_text(), env))["services"]


@pytest.mark.parametrize(
    ("env", "bind_address"),
    [
        ({}, "127.0.0.1"),
        ({"FEDSIM_SUPERLINK_BIND": "0.0.0.0"}, "0.0.0.0"),
        ({"FEDSIM_SUPERLINK_BIND": "10.8.0.1"}, "10.8.0.1"),
    ],
    ids=["default-loopback", "opened", "private-address"],
)
def test_each_container_mounts_only_its_own_certificates(env, bind_address):
    """Structural: docker-compose.yml itself, variables resolved here (runs without docker-compose)."""
    _check_least_privilege(_base_services({"FEDSIM_CERTS": CERTS_SRC, **env}), CERTS_SRC, bind_address)


def test_the_least_privilege_check_catches_violations():
    services = _base_services({"FEDSIM_CERTS": CERTS_SRC})
    cases = {
        "whole folder": ("supernode-2", f"{CERTS_SRC}:/certs:ro"),
        "ca.key": ("superlink", f"{CERTS_SRC}/ca.key:/certs/ca.key:ro"),
        "another node's key": ("supernode-1", f"{CERTS_SRC}/supernode-2:/certs/supernode-2:ro"),
        "writable": ("serverapp", f"{CERTS_SRC}/ca.crt:/certs/ca.crt"),
    }
    for what, (name, volume) in cases.items():
        broken = json.loads(json.dumps(services))
        broken[name]["volumes"] = [v for v in broken[name]["volumes"] if v.split(":")[1] != volume.split(":")[1]]
        broken[name]["volumes"].append(volume)
        with pytest.raises(AssertionError):
            _check_least_privilege(broken, CERTS_SRC, "127.0.0.1")
            pytest.fail(f"not caught: {what}")
    open_port = json.loads(json.dumps(services))
    open_port["superlink"]["ports"] = ["8000:8000"]
    with pytest.raises(AssertionError):
        _check_least_privilege(open_port, CERTS_SRC, "127.0.0.1")


def test_overrides_add_no_mounts_or_ports():
    """The insecure and host-network overrides keep the base file's mounts and publish nothing more."""
    for path in (INSECURE, HOST):
        for name, service in _services(path).items():
            assert "volumes" not in service and "ports" not in service, (path.name, name)


def test_certs_script_writes_what_compose_mounts_and_public_holds_no_secret(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    out = tmp_path / "certs"
    (out / "supernode-3").mkdir(parents=True)  # what `docker compose up` leaves for a missing bind source
    subprocess.run(
        ["bash", str(REPO / "docker" / "certs.sh"), "--out", str(out), "--nodes", str(NODE_COUNT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    for mounts in _expected_cert_mounts().values():
        for source in mounts.values():
            assert (out / source).exists(), source
    assert (out / "supernode-3").is_file()
    public = out / "public"
    assert sorted(p.name for p in public.iterdir()) == sorted(
        ["ca.crt", *(f"supernode-{i}.pub" for i in range(1, NODE_COUNT + 1))]
    )
    for path in public.iterdir():
        assert b"PRIVATE" not in path.read_bytes(), path
        assert path.read_bytes() == (out / path.name).read_bytes()
    for secret in ("ca.key", "server.key", *(f"supernode-{i}" for i in range(1, NODE_COUNT + 1))):
        assert b"PRIVATE KEY" in (out / secret).read_bytes()
        assert (out / secret).stat().st_mode & 0o077 == 0, secret


@pytest.mark.parametrize(
    ("env", "bind_address"),
    [({}, "127.0.0.1"), ({"FEDSIM_SUPERLINK_BIND": "0.0.0.0"}, "0.0.0.0")],
    ids=["default", "opened"],
)
def test_compose_config_mounts_and_published_address(env, bind_address, tmp_path):
    """What `docker compose config` / `docker-compose config` renders obeys the same rules."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    certs = tmp_path / "certs"
    certs.mkdir()
    proc = subprocess.run(
        [*cli, "--project-directory", str(REPO), "-f", str(BASE), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "FEDSIM_CERTS": str(certs),
            "COMPOSE_PROFILES": f"nodes-{NODE_COUNT}",
            **env,
        },
    )
    assert proc.returncode == 0, proc.stderr
    _check_least_privilege(yaml.safe_load(proc.stdout)["services"], str(certs), bind_address)


# ---- nothing anonymous: every volume a service mounts is a named one (or a bind mount) --------------------


def _anonymous_volumes(doc: dict) -> list[str]:
    """``service: target`` of every mount that is neither a bind mount nor a volume declared by name.

    A volume entry with only a container path (``- /state``), a ``type: volume`` without a source,
    or a source that the file's top-level ``volumes:`` does not declare would each get a fresh
    anonymous volume at every ``up``, which ``down`` (without ``-v``) leaves behind.
    """
    declared = set(doc.get("volumes") or {})
    found = []
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):  # the long syntax (what `docker compose config` v2 renders)
                kind, source, target = volume.get("type", "volume"), volume.get("source"), volume.get("target")
            else:
                parts = volume.split(":")
                source, target = (parts[0], parts[1]) if len(parts) > 1 else (None, parts[0])
                kind = "bind" if source and source.startswith((".", "/", "~", "$")) else "volume"
            if kind == "volume" and (not source or source not in declared):
                found.append(f"{name}: {target}")
    return found


def test_no_service_gets_an_anonymous_volume(tmp_path):
    """The compose file names every volume, and the image declares none (no VOLUME line)."""
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert not [ln for ln in dockerfile.splitlines() if ln.strip().upper().startswith("VOLUME")]
    doc = yaml.safe_load(BASE.read_text())
    assert _anonymous_volumes(doc) == []
    assert set(doc["volumes"]) == {"superlink-state", "results"}
    # the check catches each form of an anonymous volume
    for bad in ("/state", "scratch:/tmp/x", {"type": "volume", "target": "/data"}):
        broken = json.loads(json.dumps(doc))
        broken["services"]["supernode-1"]["volumes"].append(bad)
        assert len(_anonymous_volumes(broken)) == 1, bad
    cli = _compose_cli()
    if cli is None:
        return
    proc = subprocess.run(
        [*cli, "--project-directory", str(REPO), "-f", str(BASE), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "COMPOSE_PROFILES": f"nodes-{NODE_COUNT}"},
    )
    assert proc.returncode == 0, proc.stderr
    assert _anonymous_volumes(yaml.safe_load(proc.stdout)) == []


def test_restart_policies():
    """Long-running services come back after a crash and a reboot (unless-stopped); `register` runs once."""
    services = yaml.safe_load(BASE.read_text())["services"]
    for name, service in services.items():
        assert service["restart"] == ("no" if name == "register" else "unless-stopped"), name


def test_the_deployment_runs_without_ray():
    """The image has no Ray (docker/Dockerfile installs flwr without its simulation extra): every
    module a container loads (the CLI, the ServerApp, the ClientApp) must import without it."""
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import fedsim.app.cli, fedsim.app.deploy, fedsim.flower.server_app, fedsim.flower.client_app\n"
        "from typer.testing import CliRunner\n"
        "result = CliRunner().invoke(fedsim.app.cli.app, ['deploy', 'run', '--help'])\n"
        "assert result.exit_code == 0, result.output\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "flwr[simulation]" in (REPO / "docker" / "Dockerfile").read_text()  # the replacement is still there
