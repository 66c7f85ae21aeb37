#!/usr/bin/env bash
# End-to-end check of the real compose stack: build the images, start SuperLink + ServerApp
# SuperExec + 3 SuperNodes (TLS, SuperNode auth) with docker-compose.host.yml (host network: all
# traffic on 127.0.0.1), run 2 rounds of the tiny workload with `fedsim deploy run`, check the
# results folder, check that each container mounts only its own certificate files, tear the stack
# down (images stay).
#
#   sudo docker/e2e.sh            # needs: docker (engine + CLI), docker-compose or `docker compose`,
#                                 # debootstrap (only while the base image is missing), openssl,
#                                 # and fedsim installed in the calling Python (the submit path)
#
# No image registry is needed: the base image fedsim-base:bookworm is a Debian bookworm root file
# system (python3, venv, ca-certificates) made with debootstrap from DEBIAN_MIRROR and imported
# with `docker import`; the fedsim image installs its Python packages with pip (PyPI). Where a
# local folder holds the CPU torch wheel (PIP_WHEELS, default /opt/wheels), it is offered to the
# build through a throw-away HTTP server on 127.0.0.1. If no Docker engine runs and this is root,
# the script starts dockerd and stops it at the end.
#
# Environment: PYTHON (default python3), DEBIAN_MIRROR, BASE_IMAGE (default fedsim-base:bookworm),
# IMAGE (default fedsim:e2e), PIP_WHEELS, PIP_CA_BUNDLE (default: $PIP_CERT or the system bundle),
# BUILD=0 reuses an existing IMAGE, KEEP=1 keeps the stack and work folder for inspection.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
PYTHON="${PYTHON:-python3}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_IMAGE="${BASE_IMAGE:-fedsim-base:bookworm}"
IMAGE="${IMAGE:-fedsim:e2e}"
PIP_WHEELS="${PIP_WHEELS:-/opt/wheels}"
work="$(mktemp -d /tmp/fedsim-e2e.XXXXXX)"
project="fedsim-e2e-$$"
t_start=$(date +%s)
pids=()
started_dockerd=0
compose=()

log() { printf '[e2e %4ds] %s\n' "$(( $(date +%s) - t_start ))" "$*" >&2; }
free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cleanup() {
  local rc=$?
  if [[ ${#compose[@]} -gt 0 && "${KEEP:-0}" != 1 ]]; then
    if [[ $rc != 0 ]]; then "${compose[@]}" logs --no-color --tail 60 >&2 2>/dev/null || true; fi
    "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [[ $started_dockerd == 1 ]]; then kill "$(cat "$work/dockerd.pid")" 2>/dev/null || true; fi
  if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$work"; else log "kept $work"; fi
  log "$([[ $rc == 0 ]] && echo PASS || echo "FAIL (exit $rc)") in $(( $(date +%s) - t_start )) s"
}
trap cleanup EXIT

# ---- a Docker engine --------------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  [[ $(id -u) == 0 ]] && command -v dockerd >/dev/null || { log "no Docker engine running (and cannot start dockerd)"; exit 1; }
  log "starting dockerd"
  dockerd --data-root /var/lib/docker >"$work/dockerd.log" 2>&1 &
  echo $! >"$work/dockerd.pid"
  started_dockerd=1
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -20 "$work/dockerd.log" >&2; exit 1; }
fi
if docker compose version >/dev/null 2>&1; then dc=(docker compose); elif command -v docker-compose >/dev/null; then dc=(docker-compose); else
  log "neither 'docker compose' nor docker-compose is installed"; exit 1; fi

# ---- the base image: Debian bookworm from the Debian mirror -------------------------------------------
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { log "debootstrap is needed to build $BASE_IMAGE"; exit 1; }
  log "debootstrap bookworm -> $BASE_IMAGE"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$work/rootfs" "$DEBIAN_MIRROR" \
    >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar -C "$work/rootfs" -c . | docker import -c 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null
  rm -rf "$work/rootfs"
fi

# ---- the fedsim image -------------------------------------------------------------------------------
# A throw-away HTTP server on 127.0.0.1 offers the build what this machine has for pip: the CPU
# torch wheel (PIP_WHEELS) and the CA bundle pip trusts here (PIP_CA_BUNDLE: a TLS-inspecting
# proxy's CA must be trusted inside the build too).
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
PIP_CA_BUNDLE="${PIP_CA_BUNDLE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}"
mkdir -p "$work/pipfiles"
if compgen -G "$PIP_WHEELS/torch-*+cpu-*.whl" >/dev/null; then
  cp "$PIP_WHEELS"/torch-*+cpu-*.whl "$work/pipfiles/"
  build_args+=(--build-arg "TORCH_CPU_INDEX=")
fi
[[ -n "$PIP_CA_BUNDLE" && -f "$PIP_CA_BUNDLE" ]] && cp "$PIP_CA_BUNDLE" "$work/pipfiles/ca-bundle.pem"
if [[ -n "$(ls -A "$work/pipfiles")" ]]; then
  files_port=$(free_port)
  "$PYTHON" -m http.server "$files_port" --bind 127.0.0.1 --directory "$work/pipfiles" >"$work/pipfiles.log" 2>&1 &
  pids+=($!)
  compgen -G "$work/pipfiles/*.whl" >/dev/null && build_args+=(--build-arg "PIP_FIND_LINKS=http://127.0.0.1:$files_port/")
  [[ -f "$work/pipfiles/ca-bundle.pem" ]] && build_args+=(--build-arg "PIP_CERT_URL=http://127.0.0.1:$files_port/ca-bundle.pem")
fi
if [[ "${BUILD:-1}" == 0 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "BUILD=0: using the existing $IMAGE"
else
  log "docker build $IMAGE"
  DOCKER_BUILDKIT=0 docker build --network host -f docker/Dockerfile "${build_args[@]}" -t "$IMAGE" . \
    >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; exit 1; }
  grep -E "^fedsim .* flwr .* torch" "$work/build.log" | tail -1 >&2 || true
fi

# ---- certificates and keys, the stack ------------------------------------------------------------------
bash docker/certs.sh --out "$work/certs" --nodes 3 --owner 49999:49999 >&2
export FEDSIM_IMAGE="$IMAGE" FEDSIM_CERTS="$work/certs" FEDSIM_NODES=3 SUPERLINK_HOST=127.0.0.1
SUPERLINK_PORT=$(free_port); FEDSIM_NODE_1_PORT=$(free_port); FEDSIM_NODE_2_PORT=$(free_port); FEDSIM_NODE_3_PORT=$(free_port)
export SUPERLINK_PORT FEDSIM_NODE_1_PORT FEDSIM_NODE_2_PORT FEDSIM_NODE_3_PORT
# Compose refuses published ports together with host networking, and an override file cannot
# remove them (lists are concatenated): render the merged file and drop them there.
"${dc[@]}" -p "$project" -f docker-compose.yml -f docker-compose.host.yml config >"$work/compose.rendered.yml"
"$PYTHON" - "$work/compose.rendered.yml" <<'PY'
import sys, yaml
path = sys.argv[1]
doc = yaml.safe_load(open(path))
for service in doc["services"].values():
    if service.get("network_mode") == "host":
        service.pop("ports", None)
yaml.safe_dump(doc, open(path, "w"), sort_keys=False)
PY
compose=("${dc[@]}" -p "$project" -f "$work/compose.rendered.yml")
log "compose up (SuperLink on 127.0.0.1:$SUPERLINK_PORT)"
"${compose[@]}" up -d >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; exit 1; }

# ---- least privilege: what the running containers got from the certificate folder ------------------
# shellcheck disable=SC2046
docker inspect $("${compose[@]}" ps -a -q) >"$work/inspect.json"
"$PYTHON" - "$work/certs" "$work/inspect.json" <<'PY'
import json, os, sys
certs = os.path.realpath(sys.argv[1])
want = {"superlink": {"ca.crt", "server.crt", "server.key"}, "serverapp": {"ca.crt"}, "register": {"public"}}
seen = set()
for c in json.load(open(sys.argv[2])):
    service = c["Config"]["Labels"]["com.docker.compose.service"]
    got = {os.path.relpath(os.path.realpath(m["Source"]), certs) for m in c["Mounts"] if m["Type"] == "bind"}
    expected = want.get(service, {"ca.crt", service})  # supernode-<i>: ca.crt and its own key
    assert got == expected, f"{service} mounts {sorted(got)}, expected {sorted(expected)}"
    assert all(not m["RW"] for m in c["Mounts"] if m["Type"] == "bind"), f"{service}: a writable bind mount"
    seen.add(service)
assert seen == {"superlink", "serverapp", "register", "supernode-1", "supernode-2", "supernode-3"}, seen
print("mounts ok: no container holds ca.key or another SuperNode's key", file=sys.stderr)
PY

# ---- submit, wait, fetch ---------------------------------------------------------------------------------
export FLWR_HOME="$work/flwr"
"$PYTHON" -m fedsim deploy connect e2e --address "127.0.0.1:$SUPERLINK_PORT" --ca "$work/certs/ca.crt" --default >&2
container=$("${compose[@]}" ps -q serverapp)
log "fedsim deploy run (2 rounds, 3 SuperNodes)"
"$PYTHON" -m fedsim deploy run --superlink e2e --clients 3 --rounds 2 --clients-per-round 3 --seed 7 \
  --set workload.samples_per_client=16 --set workload.test_samples=64 \
  --fetch docker --container "$container" --out "$work/results" --timeout 900

# ---- the results folder --------------------------------------------------------------------------------------
"$PYTHON" - "$work/results" <<'PY'
import json, math, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = json.loads((out / "summary.json").read_text())
assert summary["status"] == "ok" and summary["rounds_completed"] == 2, summary
rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
fields = {"client_id", "dropped", "distance_m", "gain_db", "bandwidth_hz", "rate_bps", "payload_bits",
          "num_samples", "compute_time_s", "upload_time_s", "train_loss", "train_wall_s"}
for r in rounds:
    assert [c["client_id"] for c in r["clients"]] == [0, 1, 2], r["clients"]
    for c in r["clients"]:
        assert fields <= set(c), fields - set(c)
        assert math.isclose(c["upload_time_s"], c["payload_bits"] / c["rate_bps"], rel_tol=1e-9)
    # docker-compose.yml's default channel profiles: 60 m, 220 m, 480 m
    assert [round(c["distance_m"]) for c in r["clients"]] == [60, 220, 480], [c["distance_m"] for c in r["clients"]]
for png in ("metric_vs_round.png", "metric_vs_uplink_bits.png"):
    assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
print(f"results ok: {len(rounds)} rounds, {summary['primary_metric']} {summary['final_metrics']['primary_metric']:.4f}, "
      f"latency {summary['mean_round_latency_s']:.3f} s/round, ServerApp wall {summary['wall_s']:.0f} s")
PY
