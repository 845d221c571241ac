#!/usr/bin/env bash
# Fresh machine, no GPU, no downloads beyond the package index: install, prepare the built-in synthetic dataset,
# train with accelerate, evaluate with the full-ranking protocol, and recommend for one user.
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export FUSIONREC_CACHE="${FUSIONREC_CACHE:-$PWD/.cache}"

python -m venv .venv
source .venv/bin/activate
pip install -q torch==2.13.0 && pip install -q -e ".[text]"

python prepare_dataset.py --source synthetic --output data/synthetic --seed 0
accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no --cpu \
    train_accelerate.py --dataset data/synthetic --output-dir outputs/demo --seed 0 "$@"
python evaluate_fusionrec.py --model outputs/demo/best --dataset data/synthetic --split leave_one_out \
    --output outputs/demo/test_metrics.json
python recommend.py --model outputs/demo/best --dataset data/synthetic --user-id 1 --k 10
