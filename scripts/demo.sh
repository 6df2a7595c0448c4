#!/usr/bin/env bash
# The main job: seed 004's procedure ("Changing the master key") run as written on the
# simulated AP bus, with a repository bound to a real KMIP server (PyKMIP on loopback), a LUKS2
# volume whose data is written before the rotation and verified after it, first for the AES
# master key (steps 1-7, and the alternative `zkey kms refresh`), then for the APKA master key
# that protects the plug-in's identity key (steps 1, 2, 4, 5).
# Everything happens in a temporary directory; nothing outside it is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scripts/install-deps.sh
cargo build --workspace --bins --quiet

work=$(mktemp -d)
cleanup() {
  zkey-cryptsetup close enc-disk1 >/dev/null 2>&1 || true
  "$root/scripts/pykmip-server.sh" stop "$work/kmip" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export PATH="$PWD/target/debug:$PATH"
export AP_SIM_DIR="$work/ap-sim" ZKEY_REPOSITORY="$work/repository"
export ZKEY_CRYPTSETUP_RUN_DIR="$work/run" ZKEY_KMS_PLUGINS="$work/kms-plugins.conf"
# A cheap PBKDF keeps the demo fast; without these, keyslots get libcryptsetup's argon2id.
export ZKEY_CRYPTSETUP_PBKDF=pbkdf2 ZKEY_CRYPTSETUP_PBKDF_FORCE_ITERATIONS=1000
APQNS=08.002f,09.002f
IMG="$work/disk1.img"
DATA_PATH=yes
if [ ! -e /dev/fuse ] || [ "$(id -u)" -ne 0 ]; then
  DATA_PATH=no
  echo "note: no /dev/fuse or not root: the volume's data path (open/close) is skipped"
fi

step() { printf '\n=== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
# The passphrase an operator would type at the prompt.
typed() { printf '$ %s   (passphrase typed: disk1pw)\n' "$*"; echo disk1pw | "$@"; }
vps() { zkey validate --json | grep -o '"verification_pattern": "[0-9a-f]*"' | sort; }
must_fail() {
  local want=$1; shift
  printf '$ %s   (exits %s)\n' "$*" "$want"
  local rc=0
  "$@" >/dev/null || rc=$?
  if [ "$rc" -ne "$want" ]; then
    echo "FAILED: '$*' exited $rc, expected $want" >&2
    exit 1
  fi
}

step "The adapters: CCA 08.002f and 09.002f share one set of master keys"
run ap-sim init
run ap-sim lszcrypt
run ap-sim tke status --apqns $APQNS

step "The key management server: PyKMIP on loopback, and the repository bound to it"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/kmip"
run scripts/pykmip-server.sh start "$work/kmip" "$port"
echo "KMIP=zkey-kms-kmip" > "$ZKEY_KMS_PLUGINS"
run zkey kms bind KMIP
run zkey kms configure --apqns $APQNS --servers "127.0.0.1:$port" --server-ca "$work/kmip/ca.crt" \
  --gen-csr "$work/client.csr" --cert-subject zkey-demo
echo "(the KMS administrator signs the identity key's CSR)"
scripts/pykmip-server.sh sign "$work/kmip" "$work/client.csr" "$work/client.crt"
run zkey kms configure --client-cert "$work/client.crt"
run zkey kms info

step "The administrator creates secure volume keys in the KMS and a LUKS2 volume with one of them"
truncate -s 64M "$IMG"
printf disk1pw > "$work/disk1.pass"
run zkey generate --name disk1 --xts --volumes "$IMG:enc-disk1" --set-dummy-passphrase "$work/disk1.pass" --description "data volume"
run zkey generate --name disk2 --xts --volume-type plain
run zkey generate --name local1 --local --apqns $APQNS --key-type CCA-AESCIPHER
run zkey list
run zkey kms list
run zkey cryptsetup --name disk1 --format --run
if [ $DATA_PATH = yes ]; then
  typed zkey-cryptsetup open "$IMG" enc-disk1
  head -c 8M /dev/urandom > "$work/data"
  run dd if="$work/data" of="$work/run/enc-disk1" bs=1M conv=fsync status=none
  run zkey-cryptsetup close enc-disk1
fi
before=$(vps)

step "1. The security officer loads the new AES master key into the NEW register (TKE)"
run ap-sim tke load-new --apqns $APQNS --mktype aes --random
run ap-sim tke status --apqns $APQNS
must_fail 3 zkey validate --all
run zkey list

step "2. Re-encipher the KMS plug-in's keys, staged (only the AES wrapping key is affected)"
run zkey kms reencipher --to-new --staged
step "3. Re-encipher the keys in the repository, staged"
run zkey reencipher --apqns 08.002f,09.002f --to-new --staged
step "7. Re-encipher the volume's secure key, staged"
typed zkey-cryptsetup reencipher "$IMG" --staged
run zkey validate --all

step "4. The security officer makes the new master key CURRENT (TKE SET)"
run ap-sim tke set --apqns $APQNS --mktype aes --yes
run ap-sim tke status --apqns $APQNS

step "5. Complete the re-enciphering of the plug-in's keys"
run zkey kms reencipher --complete
step "6. Complete the re-enciphering of the keys in the repository and the KMS keys"
run zkey reencipher --apqns 08.002f,09.002f --complete
echo "Alternatively, zkey kms refresh re-imports the KMS keys under the CURRENT master key:"
run zkey kms refresh
step "7. Complete the re-enciphering of the volume"
typed zkey-cryptsetup reencipher "$IMG" --complete
run zkey list

step "Verify: every key valid under the new CURRENT master key, same effective keys, same data"
run zkey validate --all
after=$(vps)
if [ "$before" != "$after" ]; then
  echo "FAILED: the verification patterns changed" >&2
  exit 1
fi
echo "OK: the verification patterns (the effective keys) are unchanged."
typed zkey-cryptsetup validate "$IMG"
if [ $DATA_PATH = yes ]; then
  typed zkey-cryptsetup open "$IMG" enc-disk1
  if cmp <(head -c 8M "$work/run/enc-disk1") "$work/data"; then
    echo "OK: all 8 MiB written before the rotation read back unchanged through the re-enciphered key."
  else
    echo "FAILED: the volume's data changed" >&2
    exit 1
  fi
  run zkey-cryptsetup close enc-disk1
fi

step "The same procedure for the APKA master key: it protects the plug-in's identity key"
run ap-sim tke load-new --apqns $APQNS --mktype apka --random
must_fail 3 zkey validate --all
step "2. Re-encipher the plug-in's keys, staged (only the APKA identity key is affected)"
run zkey kms reencipher --to-new --staged
step "3. The repository's keys: no NEW AES master key is loaded, nothing to do"
run zkey reencipher --apqns 08.002f,09.002f --to-new --staged
run zkey validate --all
step "4. SET the new APKA master key"
run ap-sim tke set --apqns $APQNS --mktype apka --yes
step "5. Complete the re-enciphering of the identity key"
run zkey kms reencipher --complete
echo "The identity key signs the TLS handshake with the KMS under the new APKA master key:"
run zkey kms refresh
run zkey validate --all
after=$(vps)
if [ "$before" != "$after" ]; then
  echo "FAILED: the verification patterns changed" >&2
  exit 1
fi

run zkey audit verify
run zkey audit show --last 8
echo
echo "OK: seed 004 ran as written for the AES and the APKA master keys; no key and no byte was lost."
