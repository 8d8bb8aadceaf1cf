#!/usr/bin/env bash
# The dense-task study at CPU size: for each task and model, a clean baseline trained on a
# generated dataset (64 train / 16 val images of 96x128), then the experiment protocol from that
# baseline with JPEG (qualities 5..95) and with H.264 (CRFs 18..51), and one table of everything.
# Each task pairs an encoder-decoder with a model on the same encoder that has no decoder
# (tasks/dense_models.py); segmentation adds torchvision's FCN. Depth, the least telling at this size, and
# the FCN run last.
# Usage: bench/dense_study.sh [OUT]   (default runs/dense-study; reruns skip finished runs)
set -euo pipefail
OUT=${1:-runs/dense-study}
COMMON=(--wandb disabled --progress false --batch_size 8 --eval_every 0)

# task model input_size baseline_epochs retrain_epochs extra options
# (detection starts from the ImageNet EfficientNet-Lite0 weights shipped in a pip package: from
# random weights no detector learns enough in CPU minutes to sweep)
LITE0=$(python -c "from codecloop.demo.teacher import packaged_efficientnet_lite0_path as p; print(p())")
SGD="--optimizer sgd --weight_decay 1e-4 --warmup_steps 20"
RUNS=(
  "segmentation unet_resnet18 96x128 25 10"
  "segmentation plain_resnet18 96x128 25 10"
  "pose simplebaseline_resnet18 128x96 25 10"
  "pose plain_resnet18 128x96 25 10"
  "detection fasterrcnn_c4_tf_efficientnet_lite0 128 20 5 --pretrained $LITE0 $SGD --lr 0.01"
  "detection fasterrcnn_tf_efficientnet_lite0 128 20 5 --pretrained $LITE0 $SGD --lr 0.01"
  "depth unet_resnet18 96x128 25 10"
  "depth plain_resnet18 96x128 25 10"
  "segmentation fcn_resnet50 96x128 25 10"
)

for run in "${RUNS[@]}"; do
  read -r task model size epochs retrain_epochs extra <<<"$run"
  dir="$OUT/$task-$model"
  [ -f "$dir/jpeg/recovery.csv" ] && [ -f "$dir/h264/recovery.csv" ] && continue
  data="$OUT/data/$task"
  [ -d "$data" ] || python -m codecloop make-synthetic --task "$task" --out "$data" --train 64 --val 16
  base=(--task "$task" --model "$model" --data "$data" --input_size "$size" "${COMMON[@]}")
  # shellcheck disable=SC2206
  options=($extra)
  if [ ! -f "$dir/baseline/model.safetensors" ]; then
    rm -rf "$dir/baseline"
    python -m codecloop train "${base[@]}" "${options[@]}" --epochs "$epochs" --out "$dir/baseline"
  fi
  for codec in jpeg h264; do
    [ -f "$dir/$codec/recovery.csv" ] && continue
    rm -rf "$dir/$codec"
    python -m codecloop experiment "${base[@]}" "${options[@]}" --checkpoint "$dir/baseline" --codec "$codec" \
      --retrain_epochs "$retrain_epochs" --retrain_clean_prob 0.1 --out "$dir/$codec"
  done
done

python "$(dirname "$0")/dense_table.py" "$OUT"
