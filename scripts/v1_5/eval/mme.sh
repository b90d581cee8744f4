#!/bin/bash
# MME with llava-v1.5-7b (CKPT, MODEL_PATH, DATA_ROOT, METHOD override; see scripts/eval_common.sh and EVAL.md).
# usage: [CUDA_VISIBLE_DEVICES=0,1,...] bash scripts/v1_5/eval/mme.sh TOKEN [options]
exec bash "$(dirname "$0")/../../eval_common.sh" v1_5 mme "$@"
