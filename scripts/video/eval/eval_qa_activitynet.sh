#!/bin/bash
# ActivityNet-QA: judge the answers of run_qa_activitynet.sh TOKEN (same TOKEN, METHOD, CKPT and --limit) with a
# chat model on any OpenAI-compatible endpoint: --api-base URL --judge-model NAME (or JUDGE_API_BASE / JUDGE_MODEL), the key in
# $OPENAI_API_KEY (or the variable named by --api-key-env). Prints accuracy and the mean 0-5 score.
# usage: bash scripts/video/eval/eval_qa_activitynet.sh TOKEN [--limit 1000] --api-base URL --judge-model NAME [options]
exec bash "$(dirname "$0")/../../eval_common.sh" video activitynet "$@" --score-only
