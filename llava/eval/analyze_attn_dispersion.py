"""Attention dispersion (paper §3): [CLS] attention is concentrated on few image tokens, the LLM's is not.

    python -m llava.eval.analyze_attn_dispersion --model-path ./checkpoints/llava-v1.5-7b \\
        --question-file ./playground/data/analysis/llava_v1_5_mix1k.jsonl --image-folder ./playground/data/train \\
        --output-folder ./playground/data/analysis/attn_dispersion --visual-token-num 576 --temperature 0 \\
        --conv-mode vicuna_v1

For each sample (first human turn as the prompt, image first, every visual token kept) two distributions over the
image tokens are compared: the vision encoder's [CLS] attention and the attention of the prompt's last token at
LLM layer `--layer` (1-based, default 2 as in the paper; head mean). Only that row of that layer is computed,
from q and k while the model runs with SDPA, and the LLM stops after that layer
(`llava.analysis.capture`). Generation settings (`--temperature` etc.) are accepted for the
original command line; the prefill does not depend on them.

Figures (attn_dispersion.png):
  cumulative distribution  each sample's scores sorted in descending order and divided by their sum, cumulated,
                           averaged over samples: the share of attention held by the top x% of tokens;
  histograms               every score divided by the largest score of its kind over all samples, as the share of
                           scores per bin on a log scale (x axis up to about the 99th percentile; the share of
                           scores beyond it is written on the panel).
Output folder: attn_dispersion.pt (per-sample scores: cls (n, P), last (n, P), the layer, ids),
attn_dispersion.png, attn_dispersion_summary.json (the share held by the top 10% of tokens, also printed).
`--replot` redraws the figure and the summary from attn_dispersion.pt without loading the model.
"""

from __future__ import annotations

from llava.analysis import dispersion
from llava.analysis.driver import build_parser, fraction, parse_args, run_analysis


def main(argv=None) -> dict:
    parser = build_parser(__doc__)
    parser.add_argument("--layer", type=int, default=2,
                        help="LLM layer (1-based) whose last-token attention is compared with [CLS] attention")
    parser.add_argument("--top-fraction", type=fraction, default=0.1,
                        help="the summary's share of attention held by this top fraction of image tokens")
    return run_analysis(parse_args(parser, argv), dispersion.SPEC)


if __name__ == "__main__":
    main()
