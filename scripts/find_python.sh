#!/usr/bin/env bash
# Prints the path of a Python >= 3.12 interpreter, or fails with a message saying how to get one.
# jax 0.12 and flax >= 0.12.9 require Python >= 3.12; on an older interpreter pip silently resolves
# jax 0.10 / flax 0.12.8 instead, so we refuse rather than build a subtly different environment.
set -euo pipefail
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
candidates=()
[ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
candidates+=(python3.13 python3.12 python3)
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for v in "$root"/versions/3.1[2-9]* "$root"/versions/3.[2-9][0-9]*; do
    [ -x "$v/bin/python3" ] && candidates+=("$v/bin/python3")
  done
fi
for c in "${candidates[@]}"; do
  p=$(command -v "$c" 2>/dev/null || true)
  [ -z "$p" ] && continue
  if ok "$p"; then echo "$p"; exit 0; fi
done
echo "error: spade_jax needs Python >= 3.12 (jax 0.12 / flax >= 0.12.9 require it), and none was found." >&2
echo "       Install one (e.g. 'pyenv install 3.12') or point PYTHON=/path/to/python3.12 at it." >&2
exit 1
