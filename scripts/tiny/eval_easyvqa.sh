#!/bin/bash
# easy-vqa test accuracy of the tiny real LLaVA (DINOv2-S/14 + SmolLM2-135M, llava/model/tiny_real.py) through the
# same runner as the big benchmarks (llava.eval.run_benchmark; see EVAL.md):
#     bash scripts/tiny/eval_easyvqa.sh TOKEN [runner options...]
# TOKEN: visual tokens kept of the 64 per image (64 = no pruning; 16 / 6 / 3 = 75 / 90 / 95% reduction).
# The checkpoint is built from the packaged weights on first use, the test split exported from the easy-vqa package.
# Environment (all optional):
#   EASYVQA_SET  easyvqa (all 9,673 test questions, default) or easyvqa_500 (the fixed 500-question subset)
#   METHOD       pruning method (fastervlm)
#   MODEL_PATH   checkpoint directory (built in ~/.cache/fastervlm/tiny-llava-dinov2-smollm2)
#   DATA_ROOT    benchmark data root (./playground/data/eval)
#   PYTHON       interpreter (python)
set -euo pipefail

if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
    echo "usage: bash scripts/tiny/eval_easyvqa.sh TOKEN [options]   (TOKEN: visual tokens kept of 64, e.g. 16)" >&2
    exit 2
fi
token=$1
shift

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"
py="${PYTHON:-python}"
set_name="${EASYVQA_SET:-easyvqa}"
data_root="${DATA_ROOT:-./playground/data/eval}"
if [[ ! -f "${data_root}/${set_name}/llava_${set_name}_test.jsonl" ]]; then
    "${py}" "${repo}/scripts/tiny/export_easyvqa.py" --data-root "${data_root}"
fi
model_path="${MODEL_PATH:-$("${py}" -W ignore -m llava.model.tiny_real)}"
exec "${py}" -W ignore -m llava.eval.run_benchmark --benchmark "${set_name}" --visual-token-num "${token}" \
    --ckpt tiny-llava-dinov2-smollm2 --model-path "${model_path}" --data-root "${data_root}" "$@"
