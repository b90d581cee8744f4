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

# Every argument is checked before anything is exported or built: a bad one must not rewrite the question files.
if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]] || (( 10#$1 < 1 || 10#$1 > 64 )); then
    echo "usage: bash scripts/tiny/eval_easyvqa.sh TOKEN [options]   (TOKEN: visual tokens kept of 64, 1..64," \
         "e.g. 16; got '${1:-}')" >&2
    exit 2
fi
token=$((10#$1))
shift
set_name="${EASYVQA_SET:-easyvqa}"
case "${set_name}" in
    easyvqa|easyvqa_500) ;;  # the sets scripts/tiny/export_easyvqa.py writes (SUBSETS there)
    *)
        echo "EASYVQA_SET=${set_name}: unknown easy-vqa set; use easyvqa (all test questions) or easyvqa_500" >&2
        exit 2 ;;
esac

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"
py="${PYTHON:-python}"
data_root="${DATA_ROOT:-./playground/data/eval}"
if [[ ! -f "${data_root}/${set_name}/llava_${set_name}_test.jsonl" ]]; then  # only the missing set is written
    "${py}" "${repo}/scripts/tiny/export_easyvqa.py" --data-root "${data_root}" --set "${set_name}"
fi
model_path="${MODEL_PATH:-$("${py}" -W ignore -m llava.model.tiny_real)}"
exec "${py}" -W ignore -m llava.eval.run_benchmark --benchmark "${set_name}" --visual-token-num "${token}" \
    --ckpt tiny-llava-dinov2-smollm2 --model-path "${model_path}" --data-root "${data_root}" \
    --pruning-method "${METHOD:-fastervlm}" "$@"
