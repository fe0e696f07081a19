#!/usr/bin/env bash
# On a CUDA machine: the speed benchmark and the 1e9-parameter SAL model's training steps in bf16: at most about 12 min (step limits 180 + 150 + 130 + 240 s).
# Writes $OUT/PERFORMANCE_GPU.md when $OUT is set, else docs/PERFORMANCE_GPU.md. No network.
# Needs: python >= 3.10 with torch (a CUDA build), transformers>=5,<6, accelerate>=1.10, safetensors, numpy
# (install from wheels if missing: pip install --no-index --find-links <wheels> transformers accelerate ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
echo "gpu_check: needs torch (CUDA), transformers>=5,<6, accelerate>=1.10, safetensors, numpy"
"$PY" - <<'PYEOF'
import importlib.util, sys
missing = [name for name in ("torch", "transformers", "accelerate", "safetensors", "numpy") if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"gpu_check: missing packages: {' '.join(missing)}. Install them (from wheels, no network needed) and rerun.")
import torch, transformers
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA device. Install a CUDA build of torch or run on a GPU machine.")
if int(transformers.__version__.split(".")[0]) < 5:
    sys.exit(f"gpu_check: transformers {transformers.__version__} found; sal-hf needs transformers>=5,<6.")
print(f"gpu_check: {torch.cuda.get_device_name()}, torch {torch.__version__}, transformers {transformers.__version__}")
PYEOF
DEST=${OUT:-docs}
mkdir -p "$DEST"
timeout 470 "$PY" scripts/gpu_check.py --device cuda --out "$DEST/PERFORMANCE_GPU.md"
# The >= 1e9-parameter SAL transformer (scripts/scale_text.py): 20 block-local training steps under bf16 autocast,
# save, reload with identical routing and logits; step time, tokens/s and peak memory in the JSON (adds <= 4 min).
timeout 240 "$PY" scripts/scale_text.py --device cuda --bf16 --json "$DEST/SCALE_TEXT_GPU.json"
