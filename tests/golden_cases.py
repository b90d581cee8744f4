"""Stored outputs of the model path, recorded from the code before the #14 redesign (commit 8e45172), and the cases
that produce them. `tests/test_golden_outputs.py` replays every case on today's code and compares.

What is recorded per case (tiny checkpoints of tests/tiny_checkpoints.py, CPU, float32):
- the pixel tensors `process_images` made (then fed back from the file, so a change there shows once, here);
- the tower's [CLS] attention and the projector's input (the kept tokens, in order, before projection) and the
  kept patch index of every projector input row (its position among the tower's patch features; -1 for a token
  that is no patch, e.g. VisionZip's contextual tokens);
- the logits of one forward pass (sha256 of the exact bytes, and the values at the last position);
- `generate`'s new token ids (greedy, 4 tokens), `v_token_num` and `cls_attn`.
Cases: LLaVA-1.5, LLaVA-1.6 in "paper" and "upstream" mode, every registered method at a budget of 5 tokens per
crop (and the full budget for fastervlm), batch 1 and batch 4 (four image sizes, four prompt lengths, left-padded);
transformers' own LlavaForConditionalGeneration / LlavaNextForConditionalGeneration with `apply_pruning`, batch 1
and 2.

Record (only to re-pin after a deliberate behaviour change, say why in the commit):
    HF_HUB_OFFLINE=1 python -m tests.golden_cases tests/golden/outputs.pt
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import torch

from llava.conversation import conv_templates
from llava.hf import apply_pruning
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from tests.conftest import pil_image
from tests.hf_helpers import hf_model, hf_processor
from tests.tiny_checkpoints import make_clip_dir, make_llama_tokenizer_dir, make_llava_dir

GOLDEN_FILE = Path(__file__).parent / "golden" / "outputs.pt"
METHODS = ("fastervlm", "random", "uniform", "visionzip", "vispruner", "fastv")
BUDGET = 5  # of the tiny tower's 16 patches per crop
SIZES = [(50, 20), (24, 40), (70, 30), (32, 32)]  # (w, h): wide (odd unpad padding), tall, 3x1 grid, square
QUESTIONS = ["what is in this image?", "describe it", "how many colours are there in the picture, roughly?", "why?"]
HF_PROMPTS = ["USER: <image>\nwhat is in this image? ASSISTANT:", "USER: <image>\ndescribe it ASSISTANT:"]


# ---------------------------------------------------------------------------------------------------------------
# the tiny checkpoints (deterministic: same seeds as the test fixtures)
# ---------------------------------------------------------------------------------------------------------------
def build_checkpoints(root: Path) -> dict[str, Path]:
    tok = make_llama_tokenizer_dir(root / "tokenizer")
    clip = make_clip_dir(root / "clip-vit-tiny")
    return {"tok": tok, "clip": clip, "v1.5": make_llava_dir(root / "llava-v1.5-tiny", "v1.5", clip, tok),
            "v1.6": make_llava_dir(root / "llava-v1.6-tiny", "v1.6", clip, tok)}


def cases() -> list[tuple[str, dict]]:
    """(name, settings) of every case; the names are the keys of the stored file."""
    out = []
    for family, modes in (("v1.5", ("paper",)), ("v1.6", ("paper", "upstream"))):
        for mode in modes:
            for method in METHODS + ("full",):
                for batch in (1, 4):
                    out.append((f"{family}/{mode}/{method}/b{batch}",
                                dict(family=family, mode=mode, method=method, batch=batch)))
    for kind in ("llava", "llava_next"):
        for method in METHODS:
            for batch in (1, 2):
                out.append((f"hf-{kind}/{method}/b{batch}", dict(kind=kind, method=method, batch=batch)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# probes: what goes into the projector, and the tower's patch features
# ---------------------------------------------------------------------------------------------------------------
class Probe:
    """Records the projector's input (N, k, C) and (with a tower) the tower's patch features (N, P, C)."""

    def __init__(self, projector: torch.nn.Module, tower: torch.nn.Module | None = None):
        self.projector_input, self.patches = [], []
        self._hooks = [projector.register_forward_pre_hook(lambda m, args: self.projector_input.append(args[0]))]
        if tower is not None:
            self._hooks.append(tower.register_forward_hook(lambda m, args, out: self.patches.append(out.features)))

    def close(self) -> None:
        for h in self._hooks:
            h.remove()

    def kept_indices(self) -> torch.Tensor:
        """(N, k) position of each projector input row among its crop's patch features, -1 where none equals."""
        tokens, patches = self.projector_input[0].float(), self.patches[0].float()
        tokens = tokens.reshape(patches.shape[0], -1, tokens.shape[-1])
        equal = (tokens[:, :, None, :] == patches[:, None, :, :]).all(-1)  # (N, k, P)
        return torch.where(equal.any(-1), equal.float().argmax(-1), torch.full(equal.shape[:2], -1))


def logits_record(logits: torch.Tensor) -> dict:
    logits = logits.detach().float().contiguous()
    return {"logits_sha256": hashlib.sha256(logits.numpy().tobytes()).hexdigest(),
            "logits_shape": tuple(logits.shape), "logits_last": logits[:, -1].clone()}


def _listify(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


# ---------------------------------------------------------------------------------------------------------------
# our model tree
# ---------------------------------------------------------------------------------------------------------------
def our_inputs(tokenizer, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    rows = []
    for question in QUESTIONS[:n]:
        conv = conv_templates["vicuna_v1"].copy()
        conv.append_message(conv.roles[0], "<image>\n" + question)
        conv.append_message(conv.roles[1], None)
        rows.append(tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt"))
    if n == 1:
        return rows[0][None], None
    longest = max(len(r) for r in rows)
    ids = torch.zeros(n, longest, dtype=torch.long)
    mask = torch.zeros(n, longest, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, longest - len(r):], mask[i, longest - len(r):] = r, 1
    return ids, mask


def load_ours(ckpts: dict, family: str, mode: str, method: str):
    full = method == "full"
    tok, model, proc, _ = load_pretrained_model(
        str(ckpts[family]), None, None, device="cpu", visual_token_num=None if full else BUDGET,
        pruning_method="fastervlm" if full else method, anyres_mode=mode, llm_layer=1)
    return tok, model, proc


def run_ours(loaded, settings: dict, pixels=None) -> dict:
    tok, model, proc = loaded
    n = settings["batch"]
    images = [pil_image(*size, seed=i) for i, size in enumerate(SIZES[:n])]
    made = process_images(images, proc, model.config, anyres_mode=model.pruning.anyres_mode)
    pixels = made if pixels is None else pixels
    sizes = [im.size for im in images]
    ids, mask = our_inputs(tok, n)
    inner = model.get_model()
    probe = Probe(inner.mm_projector, inner.vision_tower)
    try:
        with torch.no_grad():
            logits = model(ids, attention_mask=mask, images=pixels, image_sizes=sizes).logits
        kept = probe.kept_indices()
        projector_input = probe.projector_input[0].detach().clone()
    finally:
        probe.close()
    new, v_token_num, cls_attn = model.generate(ids, attention_mask=mask, images=pixels, image_sizes=sizes,
                                                max_new_tokens=4, do_sample=False)
    return {"pixels": made, "kept": kept, "projector_input": projector_input, **logits_record(logits),
            "new_tokens": new.clone(), "v_token_num": _listify(v_token_num), "cls_attn": _listify(cls_attn)}


# ---------------------------------------------------------------------------------------------------------------
# transformers' Llava / LlavaNext with apply_pruning
# ---------------------------------------------------------------------------------------------------------------
def run_hf(model, processor, settings: dict) -> dict:
    n = settings["batch"]
    images = [pil_image(*size, seed=10 + i) for i, size in enumerate(SIZES[:n])]
    inputs = processor(images=images, text=HF_PROMPTS[:n], return_tensors="pt", padding=True)
    inner = model.model
    probe = Probe(inner.multi_modal_projector)
    with apply_pruning(model, method=settings["method"], visual_token_num=BUDGET, llm_layer=1) as handle:
        try:
            with torch.no_grad():
                logits = model(**inputs).logits
            projector_input = probe.projector_input[0].detach().clone()
        finally:
            probe.close()
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        v_token_num, cls_attn = _listify(handle.last_v_token_num), _listify(handle.last_cls_attn)
    return {"projector_input": projector_input, **logits_record(logits), "new_tokens": out.clone(),
            "v_token_num": v_token_num, "cls_attn": cls_attn}


def refused_or(run, *args) -> dict:
    """A case's record, or the refusal it meets (e.g. FastV on LLaVA-1.6 images of different grids in one batch)."""
    try:
        return run(*args)
    except (NotImplementedError, ValueError) as error:
        return {"error": f"{type(error).__name__}: {error}"}


def run_all(root: Path, stored: dict | None = None, only=None) -> dict:
    """Every case's record. With `stored`, the pixels are fed back from it (the model path is compared on the
    recorded inputs)."""
    ckpts = build_checkpoints(root)
    results, loaded, hf = {}, {}, {}
    for name, s in cases():
        if only is not None and not only(name):
            continue
        if "family" in s:
            key = (s["family"], s["mode"], s["method"])
            if key not in loaded:
                loaded.clear()
                loaded[key] = load_ours(ckpts, *key)
            pixels = stored[name].get("pixels") if stored is not None else None
            results[name] = refused_or(run_ours, loaded[key], s, pixels)
        else:
            if s["kind"] not in hf:
                model, _ = hf_model(s["kind"], ckpts[{"llava": "v1.5", "llava_next": "v1.6"}[s["kind"]]],
                                    ckpts["clip"], attn_implementation="eager")
                hf[s["kind"]] = (model, hf_processor(s["kind"], ckpts["tok"], ckpts["clip"]))
            results[name] = refused_or(run_hf, *hf[s["kind"]], s)
    return results


def main(argv: list[str]) -> None:
    target = Path(argv[0]) if argv else GOLDEN_FILE
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        results = run_all(Path(tmp))
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(results, target)
    print(f"wrote {len(results)} cases to {target}")


if __name__ == "__main__":
    main(sys.argv[1:])
