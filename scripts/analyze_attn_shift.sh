#!/bin/bash
# Attention shift in the LLM (paper §3, DESIGN.md §6) on the 1K LLaVA-mix665k subset.
# Writes attn_shift.png (layer 2), layers/layer_XX.png, attn_shift_tail.png, attn_shift.pt and
# attn_shift_summary.json to $OUT; see `python -m llava.eval.analyze_attn_shift --help`.
#
# usage: [CUDA_VISIBLE_DEVICES=0,1,...] bash scripts/analyze_attn_shift.sh [options]
#   options go to llava.eval.analyze_attn_shift, e.g. --replot (redraw from $OUT/attn_shift.pt, no model),
#   --skip-missing (analyse the samples whose image exists), --figure-layer 16
# Environment (all optional):
#   CKPT          checkpoint name                       (llava-v1.5-7b)
#   MODEL_PATH    checkpoint dir or hub name            (liuhaotian/$CKPT, from the local HF cache)
#   FILE          sample file in playground/data/analysis (llava_v1_5_mix1k.jsonl)
#   QUESTION_FILE path of the sample file                (./playground/data/analysis/$FILE)
#   IMAGE_FOLDER  LLaVA training images                 (./playground/data/train)
#   OUT           output folder                         (./playground/data/analysis/attn_shift)
#   CUDA_VISIBLE_DEVICES  several GPUs: one chunk of the samples per GPU, then merge and plot
#   PYTHON        interpreter                           (python)
set -euo pipefail
ANALYSIS=shift
source "$(dirname "${BASH_SOURCE[0]}")/analyze_attn_common.sh" "$@"
