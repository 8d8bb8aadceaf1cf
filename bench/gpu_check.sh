#!/usr/bin/env bash
# The GPU checks of issues #2 to #6 in one run, for a lent GPU machine that has torch, torchvision, timm,
# accelerate, numpy and pytest but no DALI, PyAV or wandb, and no registry access.
#
# Here (with registry access), fetch the wheels into the git-ignored .wheels/ folder:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .wheels nvidia-dali-cuda130 nvimgcodec-cu13 libnvcomp-cu13 nvidia-nvjpeg nvjpeg2k-cu13 \
#     nvtiff-cu13 astunparse gast optree nvtx makefun libcst av scikit-image safetensors pycocotools
#   split -b 60M .wheels/nvidia_dali_cuda130-*.whl .wheels/dali.part.   # one part per device call
# There: cat the parts back into the wheel, then run this script with OUT set to the output folder.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
if compgen -G ".wheels/dali.part.*" > /dev/null; then
  cat .wheels/dali.part.* > .wheels/nvidia_dali_cuda130-gpu_check-py3-none-manylinux_2_28_x86_64.whl
  rm .wheels/dali.part.*
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.txt"
python3 -m dali_pipes.fidelity --device gpu --out "$OUT/fidelity_gpu.md"
python3 bench/gpu_epoch.py --out "$OUT/resnet50_epoch.json"
python3 -m launch.cli bench --mode sweep --out "$OUT"
python3 -m launch.cli bench --mode data --batch_size 256 --out "$OUT"
python3 -m launch.cli bench --mode train --model resnet50 --batch_size 256 --out "$OUT"
python3 -m launch.cli bench --mode model --model resnet50 --batch_size 256 --out "$OUT"
for crop in 112 224; do  # NVDEC clips/s, a CRF rung drawn per clip, against the clean rung and PyAV workers
  python3 -m launch.cli bench --codec h264 --mode data --crop "$crop" --batch_size 32 --out "$OUT"
done
python3 -m launch.cli bench --codec h264 --mode train --model r3d_18 --batch_size 32 --out "$OUT"
