#!/bin/bash
# Attention dispersion: [CLS] vs last-token attention at LLM layer 2 (paper §3, DESIGN.md §6) on the 1K LLaVA-mix665k subset.
# Writes attn_dispersion.png (CDF + histograms), attn_dispersion.pt and attn_dispersion_summary.json to $OUT;
# see `python -m llava.eval.analyze_attn_dispersion --help`.
#
# usage: [CUDA_VISIBLE_DEVICES=0,1,...] bash scripts/analyze_attn_dispersion.sh [options]
#   options go to llava.eval.analyze_attn_dispersion, e.g. --replot (redraw from $OUT/attn_dispersion.pt, no model),
#   --skip-missing (analyse the samples whose image exists), --layer 16
# Environment (all optional):
#   CKPT          checkpoint name                       (llava-v1.5-7b)
#   MODEL_PATH    checkpoint dir or hub name            (liuhaotian/$CKPT, from the local HF cache)
#   FILE          sample file in playground/data/analysis (llava_v1_5_mix1k.jsonl)
#   QUESTION_FILE path of the sample file                (./playground/data/analysis/$FILE)
#   IMAGE_FOLDER  LLaVA training images                 (./playground/data/train)
#   OUT           output folder                         (./playground/data/analysis/attn_dispersion)
#   CUDA_VISIBLE_DEVICES  several GPUs: one chunk of the samples per GPU, then merge and plot
#   PYTHON        interpreter                           (python)
set -euo pipefail

CKPT=${CKPT:-llava-v1.5-7b}
MODEL_PATH=${MODEL_PATH:-liuhaotian/${CKPT}}
FILE=${FILE:-llava_v1_5_mix1k.jsonl}
QUESTION_FILE=${QUESTION_FILE:-./playground/data/analysis/${FILE}}
IMAGE_FOLDER=${IMAGE_FOLDER:-./playground/data/train}
OUT=${OUT:-./playground/data/analysis/attn_dispersion}
MODULE=llava.eval.analyze_attn_dispersion

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
