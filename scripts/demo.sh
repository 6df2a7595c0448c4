#!/usr/bin/env bash
# The main job: a full AES master key rotation on the simulated AP bus, run as seed 004's
# procedure, with a LUKS2 volume's data written before it and verified after it.
# Everything happens in a temporary directory; nothing outside it is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --bins --quiet

work=$(mktemp -d)
cleanup() {
  zkey-cryptsetup close enc-disk1 >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export PATH="$PWD/target/debug:$PATH"
export AP_SIM_DIR="$work/ap-sim" ZKEY_REPOSITORY="$work/repository"
export ZKEY_CRYPTSETUP_RUN_DIR="$work/run"
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

step "The adapters: CCA 08.002f and 09.002f share one set of master keys"
run ap-sim init
run ap-sim lszcrypt
run ap-sim tke status --apqns $APQNS

step "The administrator creates secure volume keys and a LUKS2 volume with one of them"
truncate -s 64M "$IMG"
printf disk1pw > "$work/disk1.pass"
run zkey generate --name disk1 --apqns $APQNS --xts --volumes "$IMG:enc-disk1" --set-dummy-passphrase "$work/disk1.pass" --description "data volume"
run zkey generate --name disk2 --apqns $APQNS --key-type CCA-AESCIPHER --xts --volume-type plain
run zkey list
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
printf '$ zkey validate --all   (exits non-zero: the keys are at risk until they are staged)\n'
if zkey validate --all >/dev/null; then echo "unexpected: keys not reported at risk" >&2; exit 1; fi
run zkey list

step "3. Re-encipher the keys in the repository, staged"
run zkey reencipher --apqns 08.002f,09.002f --to-new --staged
step "7. Re-encipher the volume's secure key, staged"
typed zkey-cryptsetup reencipher "$IMG" --staged
run zkey validate --all >/dev/null && echo "zkey validate --all: every key is staged: safe to SET"

step "4. The security officer makes the new master key CURRENT (TKE SET)"
run ap-sim tke set --apqns $APQNS --mktype aes --yes
run ap-sim tke status --apqns $APQNS

step "6. Complete the re-enciphering of the repository keys"
run zkey reencipher --apqns 08.002f,09.002f --complete
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
run zkey audit verify
run zkey audit show --last 6
