#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (default 20) and fails if any crashes.
#
#   scripts/fuzz.sh [SECONDS]
#
# cargo-fuzz needs unstable rustc flags (-Z sanitizer=address, coverage instrumentation). This
# machine has only a stable toolchain, so the script sets RUSTC_BOOTSTRAP=1, which lets stable
# rustc accept them; with a nightly toolchain it is harmless. Targets are built once, with
# optimisations and debug assertions (an integer overflow in a parser is a crash here, as in the
# debug builds the tests use). Each run starts from the seed corpus fuzz/corpus/<target>/ but
# writes what it finds to a temporary directory, so the checked-in seeds stay small; a crash
# leaves its input in fuzz/artifacts/<target>/ and is reproduced with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -O -a <target> fuzz/artifacts/<target>/<file>   (in fuzz/)
set -euo pipefail
secs="${1:-20}"
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked
fi
cargo fuzz build -O -a
failed=()
for t in $(cargo fuzz list); do
    work="$(mktemp -d)"
    echo "== fuzz $t for ${secs}s"
    # -max_len: the largest input any parser reads is a few KiB (.info files, JSON tokens).
    if ! cargo fuzz run -O -a "$t" "$work" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=8192 -print_final_stats=1 2>&1 | tail -n 25; then
        failed+=("$t")
    fi
    rm -rf "$work"
done
if ((${#failed[@]})); then
    echo "fuzz: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: no crash in $(cargo fuzz list | wc -l) targets, ${secs}s each"
