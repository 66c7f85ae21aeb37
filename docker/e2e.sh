#!/usr/bin/env bash
# End-to-end check of the real compose stack: build the images (docker/build.sh), start SuperLink +
# ServerApp SuperExec + 3 SuperNodes (TLS, SuperNode auth) with docker-compose.host.yml (host
# network: all traffic on 127.0.0.1), check that each container mounts only its own certificate
# files, run 3 rounds of the tiny workload with `fedsim deploy run` (a round line per round) during
# which the SuperLink's process is killed once round 1 is recorded (Docker restarts it with its
# database; the run must complete with every client answering every round), check the results
# folder, tear the stack down and check that nothing anonymous is left: `down` leaves exactly the
# two named volumes and no image or volume appeared that `down -v` does not remove. Images stay.
# Prints the seconds of each stage at the end.
#
#   sudo docker/e2e.sh            # needs: docker (engine + CLI), docker-compose or `docker compose`,
#                                 # debootstrap (only while the base image is missing), openssl,
#                                 # and fedsim installed in the calling Python (the submit path)
#
# No image registry is needed: docker/build.sh makes the base image from Debian's packages and
# installs the Python packages from a local wheel folder (see there). If no Docker engine runs and
# this is root, the script starts dockerd and stops it at the end.
#
# Environment: PYTHON (default python3; CPython 3.11, as docker/build.sh needs), IMAGE (default
# fedsim:e2e), BUILD=0 reuses an existing IMAGE, KEEP=1 keeps the stack and work folder for
# inspection; docker/build.sh's variables (BASE_IMAGE, DEBIAN_MIRROR, FEDSIM_WHEELS, ...) pass through.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
PYTHON="${PYTHON:-python3}"
IMAGE="${IMAGE:-fedsim:e2e}"
work="$(mktemp -d /tmp/fedsim-e2e.XXXXXX)"
project="fedsim-e2e-$$"
t_start=$(date +%s)
pids=()
started_dockerd=0
compose=()

timings=()
t_stage=$t_start
log() { printf '[e2e %4ds] %s\n' "$(( $(date +%s) - t_start ))" "$*" >&2; }
stage_done() { timings+=("$1 $(( $(date +%s) - t_stage )) s"); t_stage=$(date +%s); }
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
  [[ ${#timings[@]} -gt 0 ]] && log "stages: $(printf '%s; ' "${timings[@]}")"
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

# ---- the images: docker/build.sh (base from Debian's packages, wheels from a local folder) ---------------
volumes_before="$(docker volume ls -q | sort)"
dangling_before="$(docker images -q -f dangling=true | sort)"
if [[ "${BUILD:-1}" == 0 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "BUILD=0: using the existing $IMAGE"
else
  IMAGE="$IMAGE" PYTHON="$PYTHON" bash docker/build.sh || exit 1
fi
stage_done build

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
stage_done "stack up"
log "fedsim deploy run (3 rounds, 3 SuperNodes; the SuperLink is killed once round 1 is recorded)"
"$PYTHON" -m fedsim deploy run --superlink e2e --clients 3 --rounds 3 --clients-per-round 3 --seed 7 \
  --set workload.samples_per_client=16 --set workload.test_samples=64 \
  --fetch docker --container "$container" --out "$work/results" --timeout 900 >"$work/deploy.out" &
deploy_pid=$!
pids+=("$deploy_pid")
for _ in $(seq 900); do
  grep -q "^round 1/3 " "$work/deploy.out" 2>/dev/null && break
  kill -0 "$deploy_pid" 2>/dev/null || break
  sleep 1
done
grep -q "^round 1/3 " "$work/deploy.out" || { cat "$work/deploy.out" >&2; log "no round line for round 1"; exit 1; }
superlink=$("${compose[@]}" ps -q superlink)
# a crash, not a stop by hand: `docker kill` would leave it down under every restart policy
kill -9 "$(docker inspect -f '{{.State.Pid}}' "$superlink")"
t_kill=$(date +%s)
log "killed the SuperLink's process (kill -9); Docker restarts it with its database"
for _ in $(seq 120); do
  [[ "$(docker inspect -f '{{.RestartCount}} {{.State.Running}}' "$superlink")" == "1 true" ]] && break
  sleep 1
done
[[ "$(docker inspect -f '{{.RestartCount}} {{.State.Running}}' "$superlink")" == "1 true" ]] \
  || { log "the SuperLink was not restarted"; exit 1; }
log "the SuperLink runs again ($(( $(date +%s) - t_kill )) s after the kill)"
wait "$deploy_pid" || { cat "$work/deploy.out" >&2; log "fedsim deploy run failed"; exit 1; }
cat "$work/deploy.out" >&2
[[ "$(grep -c '^round [123]/3 ' "$work/deploy.out")" == 3 ]] || { log "expected 3 round lines"; exit 1; }
stage_done "deploy run"

# ---- the results folder --------------------------------------------------------------------------------------
"$PYTHON" - "$work/results" <<'PY'
import json, math, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = json.loads((out / "summary.json").read_text())
assert summary["status"] == "ok" and summary["rounds_completed"] == 3, summary
rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
fields = {"client_id", "dropped", "distance_m", "gain_db", "bandwidth_hz", "rate_bps", "payload_bits",
          "num_samples", "compute_time_s", "upload_time_s", "train_loss", "train_wall_s"}
assert [r["round"] for r in rounds] == [1, 2, 3], [r["round"] for r in rounds]
for r in rounds:  # the SuperLink restart lost no client: what it dropped was sent again
    assert [c["client_id"] for c in r["clients"]] == [0, 1, 2], r["clients"]
    assert r["status"] == "ok" and not r["failures"], (r["round"], r["failures"])
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
stage_done "results"

# ---- tear down: nothing anonymous left ----------------------------------------------------------------------
if [[ "${KEEP:-0}" == 1 ]]; then exit 0; fi
new_volumes() { comm -13 <(echo "$volumes_before") <(docker volume ls -q | sort); }
"${compose[@]}" down >/dev/null 2>&1
named="$(printf '%s\n' "${project}_results" "${project}_superlink-state" | sort)"
[[ "$(new_volumes)" == "$named" ]] || { log "after down: new volumes [$(new_volumes | xargs)], expected only [$(echo $named)]"; exit 1; }
"${compose[@]}" down -v >/dev/null 2>&1
compose=()
[[ -z "$(new_volumes)" ]] || { log "after down -v: volumes left [$(new_volumes | xargs)]"; exit 1; }
new_dangling="$(comm -13 <(echo "$dangling_before") <(docker images -q -f dangling=true | sort))"
[[ -z "$new_dangling" ]] || { log "untagged images appeared: $(echo $new_dangling)"; exit 1; }
log "nothing left: down kept only the volumes $(echo $named), down -v removed them, no untagged image appeared"
stage_done "tear down"
