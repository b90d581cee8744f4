"""Video-LLaVA (transformers' VideoLlavaForConditionalGeneration) pruned per frame through `apply_pruning`.

Sources of truth: the unmodified transformers model (its own logits at full budget; its own `generate`, one video at a
time, for the batched `answer_videos`), and an oracle written here from
FasterVLM's video branch (Theia-4869/FasterVLM `videollava/model/llava_arch.py` `encode_videos`: per frame, the
head-mean [CLS] row of the selected layer's attention map, top-k, sorted) computed from transformers' eager
CLIPVisionModel with `output_attentions=True`; transformers' own tower, projector and decoder rebuild the logits.
"""

from __future__ import annotations

import pytest
import torch

from llava.integrations.transformers import apply_pruning, video_prompt
from llava.integrations.transformers.video_llava import answer_video, answer_videos
from tests.conftest import pil_image
from tests.video_helpers import FRAMES, PATCHES, video_llava_model, video_llava_processor

SELECT_LAYER = -2
K = 5


@pytest.fixture(scope="module")
def processor(tok_dir):
    return video_llava_processor(tok_dir)


@pytest.fixture(scope="module")
def model(processor):
    return video_llava_model(len(processor.tokenizer) - 2)


def video(seed: int, frames: int = FRAMES):
    return [pil_image(40, 36, seed=seed * 100 + i) for i in range(frames)]


def inputs(processor, seeds, question="What happens?"):
    return processor(text=[video_prompt(question)] * len(seeds), videos=[video(s) for s in seeds])


@torch.no_grad()
def oracle_logits(model, ids, pixels, k):
    """FasterVLM per frame, written with transformers' modules only. ids (1, L) with T x (P + 1) <video>
    placeholders; pixels (1, T, 3, S, S) -> (logits (1, L', V), kept (T, k))."""
    out = model.model.video_tower(pixels[0], output_attentions=True, output_hidden_states=True)
    cls_attn = out.attentions[SELECT_LAYER].mean(dim=1)[:, 0, 1:]  # (T, P)
    hidden = out.hidden_states[SELECT_LAYER]  # (T, 1 + P, C)
    kept = cls_attn.topk(k, dim=1).indices.sort(dim=1).values  # (T, k)
    frames = [torch.cat([h[:1], h[1:][i]]) for h, i in zip(hidden, kept)]  # [CLS], then kept patches in raster order
    video = model.model.multi_modal_projector(torch.cat(frames))  # (T * (1 + k), D)
    spots = (ids[0] == model.config.video_token_id).nonzero().flatten()
    embed = model.get_input_embeddings()
    seq = torch.cat([embed(ids[0, :spots[0]]), video, embed(ids[0, spots[-1] + 1:])])[None]
    hidden = model.model.language_model(inputs_embeds=seq).last_hidden_state
    return model.lm_head(hidden), kept, cls_attn


def test_full_budget_equals_the_unmodified_model(model, processor):
    batch = inputs(processor, [0])
    with torch.no_grad():
        reference = model(**batch).logits
        with apply_pruning(model, "fastervlm", None) as handle:
            pruned = model(**batch).logits
    torch.testing.assert_close(pruned, reference, rtol=0, atol=1e-6)
    assert handle.last_v_token_num == FRAMES * (PATCHES + 1)


def test_pruned_frames_equal_a_per_frame_top_k_oracle(model, processor):
    batch = inputs(processor, [1])
    expected, kept, cls_attn = oracle_logits(model, batch["input_ids"], batch["pixel_values_videos"], K)
    with torch.no_grad(), apply_pruning(model, "fastervlm", K) as handle:
        logits = model(**batch).logits
        visual = handle.adapter.video_pipeline(batch["pixel_values_videos"])
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(visual.keep[0], kept)
    torch.testing.assert_close(handle.last_cls_attn, cls_attn, rtol=1e-5, atol=1e-6)
    assert handle.last_v_token_num == FRAMES * (K + 1)


def test_batch_of_two_videos_equals_each_alone(model, processor):
    both = inputs(processor, [2, 3])
    with torch.no_grad(), apply_pruning(model, "fastervlm", K) as handle:
        together = model(**both).logits[:, -1]
        counts = handle.last_v_token_num
        alone = [model(**inputs(processor, [s])).logits[0, -1] for s in (2, 3)]
    torch.testing.assert_close(together, torch.stack(alone), rtol=1e-4, atol=1e-5)
    assert counts == [FRAMES * (K + 1)] * 2


@pytest.mark.parametrize("method", ["fastervlm", "random", "uniform", "visionzip", "vispruner", "fastv"])
def test_every_method_prunes_each_frame(model, processor, method):
    batch = inputs(processor, [4])
    with torch.no_grad(), apply_pruning(model, method, K) as handle:
        logits = model(**batch).logits
    own_cls = method == "visionzip"  # its prefix is the frame's [CLS] row, counted in its budget
    per_frame = K if own_cls or method == "fastv" else K + 1
    assert handle.last_v_token_num == FRAMES * per_frame
    # FastV keeps every placeholder at the input and drops the rest of the visual positions after layer K
    assert logits.shape[1] == batch["input_ids"].shape[1] - FRAMES * (PATCHES + 1) + FRAMES * per_frame


@torch.no_grad()
def test_image_and_video_in_one_batch(model, processor):
    """Sample 0 a video, sample 1 an image: each equals its own oracle (image: 16 patches, strategy "default")."""
    image = pil_image(36, 40, seed=7)
    texts = [video_prompt("What happens?"), video_prompt("What is it?").replace("<video>", "<image>")]
    mixed = processor(text=texts, images=[image], videos=[video(5)])
    with apply_pruning(model, "fastervlm", K) as handle:
        together = model(**mixed).logits[:, -1]
        counts, attn = handle.last_v_token_num, handle.last_cls_attn
        alone_video = model(**inputs(processor, [5])).logits[0, -1]
        alone_image = model(**processor(text=texts[1], images=[image])).logits[0, -1]
    torch.testing.assert_close(together, torch.stack([alone_video, alone_image]), rtol=1e-4, atol=1e-5)
    out = model.model.image_tower(processor(text=texts[1], images=[image])["pixel_values"], output_attentions=True)
    torch.testing.assert_close(attn[1], out.attentions[SELECT_LAYER].mean(dim=1)[:, 0, 1:], rtol=1e-5, atol=1e-6)
    assert counts == [FRAMES * (K + 1), K]


@torch.no_grad()
def test_apply_and_undo_restore_the_instance(model, processor):
    batch = inputs(processor, [6])
    reference = model(**batch).logits
    before = {name: model.__dict__.get(name) for name in ("forward", "generate", "fastervlm")}
    handle = apply_pruning(model, "fastervlm", K)
    assert model(**batch).logits.shape[1] < reference.shape[1]
    handle.undo()
    assert {name: model.__dict__.get(name) for name in before} == before
    assert torch.equal(model(**batch).logits, reference)


@torch.no_grad()
def test_loader_reads_a_video_llava_hf_directory(tmp_path, tok_dir, load):
    """load_pretrained_model on a saved Video-LLaVA-hf directory: transformers' model with the per-frame pruning
    installed; its logits equal the per-frame oracle on the saved model."""
    from tests.video_helpers import make_video_llava_hf_dir

    path, saved = make_video_llava_hf_dir(tmp_path / "video-llava-hf", tok_dir)
    tokenizer, model, processor, _ = load(path, visual_token_num=K, pruning_method="fastervlm")
    batch = inputs(processor, [8])
    expected, _, _ = oracle_logits(saved, batch["input_ids"], batch["pixel_values_videos"], K)
    torch.testing.assert_close(model(**batch).logits, expected, rtol=1e-5, atol=1e-5)
    assert model.fastervlm.last_v_token_num == FRAMES * (K + 1)


def test_original_video_llava_layout_is_refused_with_the_fix(tmp_path, load):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", "mm_video_tower": "LanguageBind/x"}))
    with pytest.raises(ValueError, match=r"config.json .*Video-LLaVA-7B-hf"):
        load(tmp_path)


# ------------------------------------------------------------------ answer_videos: one left-padded generate call
QUESTIONS = ["What happens?", "Which animal runs across the field in the second half of the clip?", "Why?"]
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the human's questions.")
MAX_NEW = 6


@torch.no_grad()
def transformers_alone(model, processor, question, frames):
    """transformers' own generate (no pruning installed), one video, the Video-LLaVA eval prompt written by hand ->
    (text, `<video>` placeholders = T x (P + 1))."""
    batch = processor(text=f"{SYSTEM} USER: <video>\n{question} ASSISTANT:", videos=[frames])
    out = model.generate(**batch, do_sample=False, max_new_tokens=MAX_NEW)
    text = processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()
    return text, len(frames) * (PATCHES + 1)


def test_batched_answers_at_full_budget_equal_transformers_generate_alone(model, processor):
    """Three questions of different lengths (left padding differs per row), videos of 8, 6 and 4 frames (so each
    entry's count is its own): each equals transformers' unpruned generate on it alone."""
    videos = [video(10, 8), video(11, 6), video(12, 4)]
    expected = [transformers_alone(model, processor, q, v) for q, v in zip(QUESTIONS, videos)]
    assert expected[0][1] == 8 * 17 and expected[2][1] == 4 * 17
    lengths = {len(processor.tokenizer(video_prompt(q)).input_ids) for q in QUESTIONS}
    assert len(lengths) == 3  # the batch is padded differently per row
    with apply_pruning(model, "fastervlm", None):
        got = answer_videos(model, processor, [video_prompt(q) for q in QUESTIONS], videos, max_new_tokens=MAX_NEW)
    assert got == expected
    assert any(text for text, _ in got)  # the tiny model writes tokens: not a comparison of empty strings


@pytest.mark.parametrize("method", ["fastervlm", "fastv"])
def test_batched_answers_at_a_pruned_budget_equal_each_alone(model, processor, method):
    """Differential (next to the independent test above): pruned per frame, the batch equals each entry alone.
    FastV drops inside the LLM, the same number per row, so its videos all have 8 frames."""
    frames = [8, 8, 8] if method == "fastv" else [8, 5, 3]
    videos = [video(20 + i, n) for i, n in enumerate(frames)]
    with apply_pruning(model, method, K):
        alone = [answer_video(model, processor, q, v, max_new_tokens=MAX_NEW) for q, v in zip(QUESTIONS, videos)]
        together = answer_videos(model, processor, [video_prompt(q) for q in QUESTIONS], videos,
                                 max_new_tokens=MAX_NEW)
    assert together == alone
    per_frame = K if method == "fastv" else K + 1  # hand arithmetic: FastV keeps K per frame, the others [CLS] + K
    assert [n for _, n in together] == [f * per_frame for f in frames]


def test_answer_videos_refuses_a_question_without_its_video_token(model, processor):
    with pytest.raises(ValueError, match="holds 0 <video>.*video_prompt"):
        answer_videos(model, processor, ["What happens?"], [video(0)])
