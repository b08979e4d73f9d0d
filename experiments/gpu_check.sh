#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md (paper_scale at 224 px, GD and SGD, and a default run)
# as one prepared script, for a machine with CUDA that has torch, torchvision and timm but no
# Hydra and no internet.
#
#   bash experiments/gpu_check.sh prepare   # here, with PyPI: the missing wheels into .wheels/
#   bash experiments/gpu_check.sh           # there, with .wheels/ carried; writes into $OUT
#
# Each part has its own time limit, so a slow one leaves the others' figures in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}  # the device image's python3 holds its torch
WHEELS=(hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 submitit==1.5.4
        hydra-submitit-launcher==1.2.0 hydra-joblib-launcher==1.2.0)

if [ "${1:-}" = prepare ]; then
    "$PY" -m pip download -q --no-deps -d .wheels "${WHEELS[@]}"
    ls .wheels
    exit
fi

OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
"$PY" -m pip install -q --no-index --no-deps --find-links .wheels "${WHEELS[@]}"
"$PY" -m pip install -q --no-deps --no-build-isolation -e .
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
# paper_scale's defaults on CUDA are the paper's setting: ResNet-18, 224 px, 5 x 150, T = 150
timeout "${PAPER_SCALE_S:-420}" "$PY" -m ttbench.bench.paper_scale --csv "$OUT" \
    > "$OUT/paper_scale.txt" 2>&1
echo "paper_scale: exit $?"
tail -30 "$OUT/paper_scale.txt"
timeout "${RUN_S:-120}" "$PY" -m ttbench.run out_root=/tmp/ttbench_gpu_check \
    > "$OUT/default_run.txt" 2>&1
echo "default run: exit $?"
sed -n '/^digits/,$p' "$OUT/default_run.txt"
