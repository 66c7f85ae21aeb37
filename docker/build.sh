#!/usr/bin/env bash
# Build the deployment's images with no image registry: the base image from Debian's packages
# (debootstrap), the fedsim image with its Python packages from a local wheel folder.
#
#   docker/build.sh                      # -> fedsim-base:bookworm (once) and fedsim:latest
#   IMAGE=fedsim:dev docker/build.sh     # another tag
#
# Stages, each announced with the seconds since the start:
#   1/4 base image   BASE_IMAGE (default fedsim-base:bookworm). Kept if it exists; else the default
#                    is made with debootstrap (a Debian bookworm root file system with python3,
#                    python3-venv and ca-certificates from DEBIAN_MIRROR) and `docker import`; another
#                    name is pulled (e.g. BASE_IMAGE=python:3.11-slim where Docker Hub is reachable).
#   2/4 wheels       every Python package the image installs, as wheels in FEDSIM_WHEELS (default
#                    ~/.cache/fedsim/wheels), fetched by this machine's pip (its index, proxy and
#                    certificates; PIP_FIND_LINKS adds local wheel folders, TORCH_CPU_INDEX the
#                    PyTorch CPU index: set it empty where a local folder has the +cpu torch wheel).
#                    Skipped while pyproject.toml's dependencies and constraints-cpu.txt are unchanged.
#   3/4 image        docker build, offline: pip in the build sees only that folder, served on
#                    127.0.0.1:FEDSIM_WHEEL_PORT (default 38641) for the build. The port and folder
#                    stay the same from build to build, so Docker reuses the dependency layer and a
#                    source change rebuilds only the last layers. One line per Dockerfile step.
#   4/4 clean up     removes the untagged images this build left (the previous IMAGE a rebuild
#                    replaced, the layers of a failed build: images labelled org.fedsim.image);
#                    nothing else is touched. The wheel folder stays, for the next build.
#
# Needs: a running Docker engine (dockerd), docker, debootstrap (only while the base image is
# missing; run as root), and a CPython 3.11 for x86-64 Linux as PYTHON (the image's Python: the
# wheels are built for it). Exit 1 with one line on failure; the full logs stay in the printed folder.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
PYTHON="${PYTHON:-python3}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEFAULT_BASE="fedsim-base:bookworm"
BASE_IMAGE="${BASE_IMAGE:-$DEFAULT_BASE}"
IMAGE="${IMAGE:-fedsim:latest}"
FEDSIM_WHEELS="${FEDSIM_WHEELS:-$HOME/.cache/fedsim/wheels}"
FEDSIM_WHEEL_PORT="${FEDSIM_WHEEL_PORT:-38641}"
LABEL="org.fedsim.image"
logs="$(mktemp -d /tmp/fedsim-build.XXXXXX)"
t_start=$(date +%s)
server_pid=""

say() { printf '[build %4ds] %s\n' "$(( $(date +%s) - t_start ))" "$*" >&2; }
die() { say "FAILED: $*"; say "logs: $logs"; exit 1; }
cleanup() {
  local rc=$?
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null || true
  [[ $rc == 0 ]] && rm -rf "$logs"
  return $rc
}
trap cleanup EXIT

docker info >/dev/null 2>&1 || die "no Docker engine answers (start dockerd: sudo systemctl start docker, or sudo dockerd &)"
"$PYTHON" -c 'import sys, platform; sys.exit(sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64")' \
  || die "PYTHON=$PYTHON is not CPython 3.11 on x86-64: the image's wheels are built with it (set PYTHON=python3.11)"

# ---- 1/4 the base image ------------------------------------------------------------------------------------
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  say "1/4 base image: $BASE_IMAGE exists, kept"
elif [[ "$BASE_IMAGE" == "$DEFAULT_BASE" ]]; then
  command -v debootstrap >/dev/null || die "debootstrap is needed to make $BASE_IMAGE (apt-get install debootstrap)"
  [[ $(id -u) == 0 ]] || die "debootstrap must run as root (sudo docker/build.sh)"
  say "1/4 base image: debootstrap bookworm from $DEBIAN_MIRROR (about 1-2 minutes)"
  rootfs="$logs/rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$DEBIAN_MIRROR" \
    >"$logs/debootstrap.log" 2>&1 || { tail -5 "$logs/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"*
  say "1/4 base image: docker import -> $BASE_IMAGE"
  tar -C "$rootfs" -c . | docker import -c 'ENV LANG=C.UTF-8' -c "LABEL $LABEL=fedsim-base" - "$BASE_IMAGE" >/dev/null \
    || die "docker import failed"
  rm -rf "$rootfs"
else
  say "1/4 base image: docker pull $BASE_IMAGE"
  docker pull "$BASE_IMAGE" >"$logs/pull.log" 2>&1 || die "docker pull $BASE_IMAGE: $(tail -1 "$logs/pull.log")"
fi

# ---- 2/4 the wheels ------------------------------------------------------------------------------------------
# What the Dockerfile installs: pyproject.toml's dependencies with flwr instead of flwr[simulation]
# (no Ray), setuptools to build fedsim itself, under constraints-cpu.txt.
mkdir -p "$FEDSIM_WHEELS"
"$PYTHON" -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(d.replace('flwr[simulation]', 'flwr') for d in deps)); print('setuptools>=68')" >"$logs/requirements.txt"
stamp="$(cat "$logs/requirements.txt" constraints-cpu.txt | sha256sum | cut -c1-16)"
if [[ -f "$FEDSIM_WHEELS/.fedsim-stamp" && "$(cat "$FEDSIM_WHEELS/.fedsim-stamp")" == "$stamp" ]]; then
  say "2/4 wheels: $FEDSIM_WHEELS is up to date ($(ls "$FEDSIM_WHEELS" | wc -l) wheels)"
else
  say "2/4 wheels: pip wheel -> $FEDSIM_WHEELS (a cold fetch is about 1 GB; a few minutes)"
  index=()
  if [[ -n "${TORCH_CPU_INDEX-https://download.pytorch.org/whl/cpu}" ]]; then
    index=(--extra-index-url "${TORCH_CPU_INDEX-https://download.pytorch.org/whl/cpu}")
  fi
  # pip's own configuration and PIP_FIND_LINKS apply (a --find-links here would replace them)
  "$PYTHON" -m pip wheel --progress-bar off --wheel-dir "$FEDSIM_WHEELS" "${index[@]}" \
    -c constraints-cpu.txt -r "$logs/requirements.txt" >"$logs/wheels.log" 2>&1 &
  pip_pid=$!
  while kill -0 "$pip_pid" 2>/dev/null; do
    sleep 15
    kill -0 "$pip_pid" 2>/dev/null && say "2/4 wheels: $(ls "$FEDSIM_WHEELS" | grep -c '\.whl$') wheels, $(du -sh "$FEDSIM_WHEELS" | cut -f1)"
  done
  wait "$pip_pid" || { tail -5 "$logs/wheels.log" >&2; die "pip wheel failed"; }
  compgen -G "$FEDSIM_WHEELS/torch-*.whl" >/dev/null || die "no torch wheel in $FEDSIM_WHEELS"
  echo "$stamp" >"$FEDSIM_WHEELS/.fedsim-stamp"
  say "2/4 wheels: $(ls "$FEDSIM_WHEELS" | grep -c '\.whl$') wheels, $(du -sh "$FEDSIM_WHEELS" | cut -f1)"
fi

# ---- 3/4 the image ---------------------------------------------------------------------------------------------
"$PYTHON" -m http.server "$FEDSIM_WHEEL_PORT" --bind 127.0.0.1 --directory "$FEDSIM_WHEELS" >"$logs/wheel-server.log" 2>&1 &
server_pid=$!
for _ in $(seq 50); do
  "$PYTHON" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$FEDSIM_WHEEL_PORT/', timeout=2)" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || die "cannot serve the wheels on 127.0.0.1:$FEDSIM_WHEEL_PORT (taken? set FEDSIM_WHEEL_PORT)"
  sleep 0.2
done
previous="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
say "3/4 image: docker build $IMAGE from $BASE_IMAGE (offline; one line per step)"
set +e
DOCKER_BUILDKIT=0 docker build --network host -f docker/Dockerfile -t "$IMAGE" \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "TORCH_CPU_INDEX=" \
  --build-arg "PIP_NO_INDEX=1" --build-arg "PIP_FIND_LINKS=http://127.0.0.1:$FEDSIM_WHEEL_PORT/" . 2>&1 \
  | tee "$logs/build.log" | while IFS= read -r line; do
      case "$line" in
        Step\ *) say "3/4 image: ${line:0:110}" ;;
        " ---> Using cache") say "3/4 image:   (cached)" ;;
        fedsim\ *flwr*torch*) say "3/4 image:   $line" ;;
      esac
    done
rc=${PIPESTATUS[0]}
set -e
kill "$server_pid" 2>/dev/null || true
server_pid=""

# ---- 4/4 clean up ------------------------------------------------------------------------------------------------
now="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
if [[ -n "$previous" && "$previous" != "$now" ]] && [[ -z "$(docker image inspect -f '{{join .RepoTags ""}}' "$previous" 2>/dev/null)" ]]; then
  docker rmi "$previous" >/dev/null 2>&1 || true
fi
docker image prune -f --filter "label=$LABEL" >/dev/null
left="$(docker images -q -f dangling=true -f "label=$LABEL" | wc -l)"
[[ $rc == 0 ]] || { grep -v '^ ---> ' "$logs/build.log" | tail -8 >&2; die "docker build exited $rc"; }
say "4/4 clean up: $left untagged fedsim images left"
docker images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^($IMAGE|$BASE_IMAGE) " >&2 || true
say "done: $IMAGE"
