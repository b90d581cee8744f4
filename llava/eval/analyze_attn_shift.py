"""Attention shift (paper §3): text-to-image attention in the LLM drifts to the last image tokens; [CLS] does not.

    python -m llava.eval.analyze_attn_shift --model-path ./checkpoints/llava-v1.5-7b \\
        --question-file ./playground/data/analysis/llava_v1_5_mix1k.jsonl --image-folder ./playground/data/train \\
        --output-folder ./playground/data/analysis/attn_shift --visual-token-num 576 --temperature 0 \\
        --conv-mode vicuna_v1

For each sample (first human turn as the prompt, image first, every visual token kept) the prompt's prefill is
run once. For every LLM layer, the head-mean attention each image token receives is gathered from
  all    every token from the first image token on,
  image  the image tokens,
  text   the text tokens after the image except the last one,
  last   the prompt's last token,
each causally normalised (a column's sum divided by the number of tokens that can see it; see
`llava.analysis.statistics.shift_statistics`), then averaged over the samples, next to the [CLS] attention of the vision
encoder. Only the needed rows are computed, layer by layer, while the model runs with SDPA
(`llava.analysis.capture`). Generation settings (`--temperature` etc.) are accepted for the
original command line; the prefill does not depend on them.

Output folder:
  attn_shift.pt               the averaged tensors: cls (P,), all / image / text / last (layers, P), counts, ids
  attn_shift.png              bars over token index and grid heat maps at --figure-layer (default 2)
  layers/layer_XX.png         the same for every layer
  attn_shift_tail.png         per layer, the share of attention on the last 10% of image positions
  attn_shift_summary.json     that share per layer and kind, and for [CLS] (also printed)
`--replot` redraws the figures and the summary from attn_shift.pt without loading the model.
"""

from __future__ import annotations

from llava.analysis import shift
from llava.analysis.driver import build_parser, fraction, parse_args, run_analysis


def main(argv=None) -> dict:
    parser = build_parser(__doc__)
    parser.add_argument("--figure-layer", type=int, default=2,
                        help="LLM layer (1-based) drawn in attn_shift.png; every layer is in layers/")
    parser.add_argument("--tail-fraction", type=fraction, default=0.1,
                        help="the summary's share of attention on this last fraction of image positions")
    return run_analysis(parse_args(parser, argv), shift.SPEC)


if __name__ == "__main__":
    main()
