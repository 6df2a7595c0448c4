#!/usr/bin/env bash
# Generates the man pages and the shell completions of every binary of the suite from their
# clap definitions (they cannot drift from the code):
#
#   scripts/docs.sh [DIR]      # default: target/docs
#
# DIR/man/man1/*.1 (one page per command and subcommand: zkey.1, zkey-reencipher.1, ...; read one
# with `man -l DIR/man/man1/zkey-reencipher.1`, or add DIR/man to MANPATH) and
# DIR/completions/{bash,zsh,fish}/ (bash: source the file or copy it to
# /usr/share/bash-completion/completions/; zsh: a directory on $fpath; fish:
# ~/.config/fish/completions/).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/docs}"
cargo build --workspace --bins --quiet
bins=(ap-sim zkey zkey-cryptsetup)
mkdir -p "$out/man/man1" "$out/completions/bash" "$out/completions/zsh" "$out/completions/fish"
for b in "${bins[@]}"; do
  "target/debug/$b" --generate man --generate-dir "$out/man/man1" >/dev/null
  "target/debug/$b" --generate complete-bash > "$out/completions/bash/$b"
  "target/debug/$b" --generate complete-zsh > "$out/completions/zsh/_$b"
  "target/debug/$b" --generate complete-fish > "$out/completions/fish/$b.fish"
done
echo "man pages: $(ls "$out/man/man1" | wc -l) in $out/man/man1; completions in $out/completions"
