#!/bin/bash
# Shared body of scripts/analyze_attn_{shift,dispersion}.sh: run with ANALYSIS=shift|dispersion set.
# Environment and options: see the header of those two scripts.
set -euo pipefail

CKPT=${CKPT:-llava-v1.5-7b}
MODEL_PATH=${MODEL_PATH:-liuhaotian/${CKPT}}
FILE=${FILE:-llava_v1_5_mix1k.jsonl}
QUESTION_FILE=${QUESTION_FILE:-./playground/data/analysis/${FILE}}
IMAGE_FOLDER=${IMAGE_FOLDER:-./playground/data/train}
OUT=${OUT:-./playground/data/analysis/attn_${ANALYSIS}}
MODULE=llava.eval.analyze_attn_${ANALYSIS}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"
run() {
    "${PYTHON:-python}" -m "${MODULE}" \
        --model-path "${MODEL_PATH}" \
        --question-file "${QUESTION_FILE}" \
        --image-folder "${IMAGE_FOLDER}" \
        --output-folder "${OUT}" \
        --visual-token-num 576 \
        --temperature 0 \
        --conv-mode vicuna_v1 \
        "$@"
}

IFS=, read -ra gpus <<< "${CUDA_VISIBLE_DEVICES:-}"
chunks=${#gpus[@]}
if [[ ${chunks} -le 1 || " $* " == *" --replot "* ]]; then
    run "$@"
    exit
fi
pids=()
for k in "${!gpus[@]}"; do
    CUDA_VISIBLE_DEVICES=${gpus[$k]} run --num-chunks "${chunks}" --chunk-idx "${k}" "$@" &
    pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do
    wait "${pid}" || failed=1
done
if [[ ${failed} -ne 0 ]]; then
    echo "a chunk failed: fix it and rerun; finished chunks are kept in ${OUT} (merge with --replot --num-chunks ${chunks})" >&2
    exit 1
fi
run --replot --num-chunks "${chunks}" "$@"
