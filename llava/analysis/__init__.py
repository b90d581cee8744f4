"""The attention analyses of the paper (§3): attention shift and attention dispersion in the LLM vs [CLS] attention.

- `capture`:    the LLM's attention rows onto a prompt's image tokens, by hooks (no attention maps);
- `statistics`: what is computed from those rows (causally normalised shares, top / tail shares);
- `samples`:    the LLaVA conversation samples, missing images, one sample's prefill inputs, refused setups;
- `driver`:     the shared command line, chunked runs, statistics files and `run_analysis`;
- `shift`, `dispersion`: each analysis's accumulator, chunk merge, figures and summary (`AnalysisSpec`).
The command lines are `python -m llava.eval.analyze_attn_shift` / `analyze_attn_dispersion` (scripts/analyze_attn_*.sh).
"""
