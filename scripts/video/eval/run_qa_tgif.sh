#!/bin/bash
# TGIF-QA: answer with Video-LLaVA-7B-hf, chunked over CUDA_VISIBLE_DEVICES, resumable (CKPT, MODEL_PATH,
# DATA_ROOT, METHOD override; see scripts/eval_common.sh and EVAL.md). TOKEN is per frame: 256 = no pruning,
# 64 = 75%, 26 = 90% reduction. --limit 1000: the seed's first 1,000 questions. Judge with eval_qa_tgif.sh.
# usage: [CUDA_VISIBLE_DEVICES=0,1,...] bash scripts/video/eval/run_qa_tgif.sh TOKEN [--limit 1000] [options]
exec bash "$(dirname "$0")/../../eval_common.sh" video tgif "$@" --no-score
