#!/usr/bin/env bash
# The main job: a full AES master key rotation on the simulated AP bus, run as seed 004's
# procedure, with the keys verified after it. Everything happens in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --bins --quiet

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PATH="$PWD/target/debug:$PATH"
export AP_SIM_DIR="$work/ap-sim" ZKEY_REPOSITORY="$work/repository"
APQNS=08.002f,09.002f

step() { printf '\n=== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
vps() { zkey validate --json | grep -o '"verification_pattern": "[0-9a-f]*"' | sort; }

step "The adapters: CCA 08.002f and 09.002f share one set of master keys"
run ap-sim init
run ap-sim lszcrypt
run ap-sim tke status --apqns $APQNS

step "The administrator creates secure volume keys bound to the two APQNs"
truncate -s 64M "$work/disk1.img"
run zkey generate --name disk1 --apqns $APQNS --xts --volumes "$work/disk1.img:enc-disk1" --description "data volume"
run zkey generate --name disk2 --apqns $APQNS --key-type CCA-AESCIPHER --xts --volume-type plain
run zkey list
before=$(vps)

step "1. The security officer loads the new AES master key into the NEW register (TKE)"
run ap-sim tke load-new --apqns $APQNS --mktype aes --random
run ap-sim tke status --apqns $APQNS
printf '$ zkey validate --all   (exits non-zero: the keys are at risk until staged)\n'
if zkey validate --all >/dev/null; then echo "unexpected: keys not reported at risk" >&2; exit 1; fi
run zkey list

step "3. Re-encipher the repository keys, staged"
run zkey reencipher --apqns 08.002f,09.002f --to-new --staged
run zkey validate --all >/dev/null && echo "zkey validate --all: every key is staged: safe to SET"

step "4. The security officer makes the new master key CURRENT (TKE SET)"
run ap-sim tke set --apqns $APQNS --mktype aes --yes
run ap-sim tke status --apqns $APQNS

step "6. Complete the re-enciphering"
run zkey reencipher --apqns 08.002f,09.002f --complete
run zkey list

step "Verify: every key valid under the new CURRENT master key, same effective keys"
run zkey validate --all
after=$(vps)
if [ "$before" != "$after" ]; then
  echo "FAILED: the verification patterns changed" >&2
  exit 1
fi
echo "OK: the verification patterns (the effective keys) are unchanged:"
echo "$after"
