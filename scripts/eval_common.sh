#!/bin/bash
# Shared body of scripts/v1_5/eval/*.sh and scripts/v1_6/eval/*.sh: they call
#     eval_common.sh FAMILY BENCHMARK TOKEN [runner options...]
# and everything else happens in one Python runner, llava.eval.run_benchmark (see EVAL.md).
#
# TOKEN: visual tokens kept per crop (576 = no pruning; 144 / 58 / 29 = 75 / 90 / 95% reduction).
# Environment (all optional), each turned into the runner flag beside it here; options after TOKEN win over them:
#   CKPT        --ckpt            checkpoint name in output paths  (llava-v1.5-7b | llava-v1.6-vicuna-7b)
#   MODEL_PATH  --model-path      checkpoint dir or hub name       (liuhaotian/$CKPT, from the local HF cache)
#   DATA_ROOT   --data-root       benchmark data root              (./playground/data/eval)
#   METHOD      --pruning-method  pruning method                   (fastervlm)
#   CUDA_VISIBLE_DEVICES  one answering process per listed GPU, then merge
#   PYTHON      interpreter                       (python)
#   LAUNCHER    a launcher that starts the runner on many processes / nodes, given `-m llava.eval.run_benchmark`
#               (e.g. "torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HEAD:29500"):
#               each rank answers one chunk, rank 0 merges and scores (see README, several nodes)
set -euo pipefail

family=$1
bench=$2
shift 2
if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
    if [[ $family == video ]]; then
        echo "usage: bash scripts/video/eval/{run,eval}_qa_${bench}.sh TOKEN [options]   (TOKEN: patches kept per frame, e.g. 64)" >&2
    else
        echo "usage: bash scripts/${family}/eval/${bench}.sh TOKEN [options]   (TOKEN: visual tokens kept per crop, e.g. 144)" >&2
    fi
    exit 2
fi
token=$1
shift

# An unset or empty variable adds no flag, so the runner's default (by --family for the checkpoint) applies.
settings=()
[[ -n "${CKPT:-}" ]] && settings+=(--ckpt "${CKPT}")
[[ -n "${MODEL_PATH:-}" ]] && settings+=(--model-path "${MODEL_PATH}")
[[ -n "${DATA_ROOT:-}" ]] && settings+=(--data-root "${DATA_ROOT}")
[[ -n "${METHOD:-}" ]] && settings+=(--pruning-method "${METHOD}")

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"
runner=(-m llava.eval.run_benchmark --family "${family}" --benchmark "${bench}" --visual-token-num "${token}"
        ${settings[@]+"${settings[@]}"} "$@")
if [[ -n "${LAUNCHER:-}" ]]; then
    # the launcher starts its own interpreters, so warnings are silenced through the environment instead of -W
    export PYTHONWARNINGS=ignore
    # LAUNCHER is a command line: split on spaces on purpose
    # shellcheck disable=SC2086
    exec ${LAUNCHER} "${runner[@]}"
fi
exec "${PYTHON:-python}" -W ignore "${runner[@]}"
