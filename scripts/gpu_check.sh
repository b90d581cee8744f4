#!/bin/bash
# GPU checks in one command (see scripts/gpu_check.py for what is checked and how it is judged):
#     bash scripts/gpu_check.sh [OUT_DIR] [gpu_check.py options...]
# (a) flash_attention_2 vs sdpa: kept sets identical, logits close; (b) bf16 / fp16 kept sets vs float32;
# (c) `python -m llava.bench.efficiency --synthetic 7b` (and onevision-7b, qwen2.5-vl-7b) rows and
# scripts/bench_vision_tower.py on the GPU.
# Estimated 3-5 minutes on one large GPU (not yet timed on one). Without a GPU (or without flash-attn) it prints a
# SKIP line for each part it cannot run, runs the rest on the CPU (bf16 kept sets of a tiny model), and exits 0
# unless a check fails.
# Writes OUT_DIR (default outputs/gpu_check)/summary.md, results.json, log.txt and the benchmark CSV / PNG files.
# Environment: PYTHON (interpreter, default python).
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-${repo}/outputs/gpu_check}"
[[ $# -gt 0 ]] && shift
mkdir -p "${out}"
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # random weights only: nothing to download
cd "${repo}"
"${PYTHON:-python}" scripts/gpu_check.py --out "${out}" "$@" 2>&1 | tee "${out}/log.txt"
status=${PIPESTATUS[0]}
echo "summary: ${out}/summary.md (exit status ${status})"
exit "${status}"
