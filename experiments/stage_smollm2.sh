#!/usr/bin/env bash
# Rebuild the embedded SmolLM2 on a GPU machine from the two halves of its GGUF (one device call carries at
# most 64 MiB, the GGUF is 98 MB): joins DIR/gguf.part00 + DIR/gguf.part01 and converts them to a plain HF
# folder at MODEL_DIR (default /tmp/models/SmolLM2-135M-Instruct). Needs the gguf package importable.
#   bash experiments/stage_smollm2.sh DIR [MODEL_DIR]
set -euo pipefail
D=$1
MODEL_DIR=${2:-/tmp/models/SmolLM2-135M-Instruct}
for part in "$D/gguf.part00" "$D/gguf.part01"; do
  [ -f "$part" ] || { echo "missing $part: carry gguf.part00 in one call and gguf.part01 in the next (within 30 s)"; exit 3; }
done
GGUF_DIR=$(mktemp -d)
cat "$D/gguf.part00" "$D/gguf.part01" > "$GGUF_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
python3 -c "
import sys
from pathlib import Path
from datafactory.embedded import convert_gguf_to_hf
out = Path(sys.argv[2]); out.parent.mkdir(parents=True, exist_ok=True)
convert_gguf_to_hf(Path(sys.argv[1]), out)" "$GGUF_DIR/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODEL_DIR"
rm -rf "$GGUF_DIR"
