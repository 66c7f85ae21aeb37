#!/usr/bin/env bash
# Generate the TLS material and SuperNode key pairs of a fedsim deployment.
#
#   docker/certs.sh [--out DIR] [--nodes N] [--san DNS:host,IP:10.0.0.5,...] [--owner UID:GID] [--force]
#
# Writes into DIR (default docker/certs, ignored by git):
#   ca.crt, ca.key               a private certificate authority (ca.key never leaves this machine)
#   server.crt, server.key       the SuperLink's certificate, signed by the CA, with SANs for
#                                localhost, 127.0.0.1, ::1, the compose service names (superlink,
#                                supernode-1..N) and every --san entry (the SuperLink's real host
#                                names and addresses when the federation spans machines)
#   supernode-<i>, .pub          one ECDSA P-384 key pair per SuperNode (OpenSSH format, what
#                                flower-supernode --auth-supernode-private-key and
#                                flwr supernode register expect); i = 1..N
#   public/                      copies of ca.crt and every supernode-<i>.pub, nothing secret:
#                                what docker-compose.yml's one-shot `register` mounts (rewritten
#                                on every run of this script)
#
# docker-compose.yml mounts single files, read-only: the SuperLink gets ca.crt, server.crt and
# server.key; the ServerApp ca.crt; SuperNode i ca.crt and supernode-<i>; nothing gets ca.key. Across
# machines, copy ca.crt and supernode-<i> to SuperNode i's machine and nothing else.
#
# Flower's TLS is server-side only: SuperNodes verify the SuperLink with ca.crt, and the
# SuperLink authenticates SuperNodes by their registered public keys (--enable-supernode-auth),
# so the per-node key pairs play the role of client certificates.
#
# --owner chowns the private keys that containers read (server.key, supernode-<i>) to the user
# the containers run as (49999:49999 in docker/Dockerfile, as in Flower's own images); it needs
# root. ca.key keeps the owner of whoever ran this script. The private keys are mode 600, the
# certificates and public keys 644.
# Existing files are kept unless --force, so adding nodes later (--nodes 5) keeps the CA.
set -euo pipefail

out="$(cd "$(dirname "$0")" && pwd)/certs"
nodes=3
extra_sans=""
owner=""
force=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --san) extra_sans="$2"; shift 2 ;;
    --owner) owner="$2"; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "certs.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$nodes" =~ ^[1-9][0-9]*$ ]] || { echo "certs.sh: --nodes=$nodes: expected a positive integer" >&2; exit 2; }
command -v openssl >/dev/null || { echo "certs.sh: openssl not found" >&2; exit 1; }

mkdir -p "$out"
cd "$out"
umask 077
# `docker compose up` before this script ran leaves an empty folder where each missing file it
# bind-mounts should be (Docker creates missing bind sources as folders): remove those.
for f in ca.crt server.crt server.key supernode-*; do
  if [[ -d "$f" ]]; then rmdir "$f" 2>/dev/null || { echo "certs.sh: $out/$f is a folder, expected a file" >&2; exit 1; }; fi
done
if [[ $force == 1 ]]; then
  rm -f ca.crt ca.key ca.srl server.crt server.key server.csr supernode-*
fi

if [[ ! -s ca.key || ! -s ca.crt ]]; then
  openssl req -x509 -newkey rsa:4096 -sha256 -days 3650 -nodes \
    -keyout ca.key -out ca.crt -subj "/CN=fedsim deployment CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

sans="DNS:localhost,DNS:superlink,IP:127.0.0.1,IP:::1"
for i in $(seq 1 "$nodes"); do sans+=",DNS:supernode-$i"; done
[[ -n "$extra_sans" ]] && sans+=",$extra_sans"
# The server certificate is re-issued when the SAN list changes.
if [[ ! -s server.crt ]] || ! openssl x509 -in server.crt -noout -ext subjectAltName 2>/dev/null | grep -q .; then
  reissue=1
else
  want=$(tr ',' '\n' <<<"$sans" | sed 's/^IP:/IP Address:/' | sort | tr '\n' ',')
  have=$(openssl x509 -in server.crt -noout -ext subjectAltName | tail -n +2 | tr -d ' ' | tr ',' '\n' \
    | sed 's/^IPAddress:/IP Address:/; s/^IP Address:0:0:0:0:0:0:0:1$/IP Address:::1/' | sort | tr '\n' ',')
  want=${want// /}; have=${have// /}
  [[ "$want" == "$have" ]] && reissue=0 || reissue=1
fi
if [[ $reissue == 1 ]]; then
  openssl req -newkey rsa:2048 -sha256 -nodes -keyout server.key -out server.csr -subj "/CN=superlink" 2>/dev/null
  ext=$(mktemp)
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
    "$sans" >"$ext"
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -sha256 \
    -extfile "$ext" -out server.crt 2>/dev/null
  rm -f "$ext" server.csr
fi

for i in $(seq 1 "$nodes"); do
  key="supernode-$i"
  [[ -s "$key" && -s "$key.pub" ]] && continue
  rm -f "$key" "$key.pub"
  if command -v ssh-keygen >/dev/null; then
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "$key" -f "$key"
  else  # no ssh-keygen: Python's cryptography (a flwr dependency; PYTHON picks the interpreter) writes the same format
    "${PYTHON:-python3}" - "$key" <<'PY'
import sys
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ec
k = ec.generate_private_key(ec.SECP384R1())
open(sys.argv[1], "wb").write(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.OpenSSH, s.NoEncryption()))
open(sys.argv[1] + ".pub", "wb").write(k.public_key().public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH) + b"\n")
PY
  fi
done

chmod 600 ca.key server.key
chmod 644 ca.crt server.crt
for i in $(seq 1 "$nodes"); do chmod 600 "supernode-$i"; chmod 644 "supernode-$i.pub"; done
# public/: the CA certificate and every SuperNode public key in the folder (also those of earlier,
# larger --nodes runs), as copies, so that stale keys never linger there
rm -rf public
mkdir -m 755 public
cp ca.crt supernode-*.pub public/
chmod 644 public/*
if [[ -n "$owner" ]]; then
  chown "$owner" server.key
  for key in supernode-*; do [[ "$key" == *.pub ]] || chown "$owner" "$key"; done
fi
echo "certs.sh: CA, SuperLink certificate (SAN $sans) and $nodes SuperNode key pairs in $out"
