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
ANALYSIS=dispersion
source "$(dirname "${BASH_SOURCE[0]}")/analyze_attn_common.sh" "$@"
