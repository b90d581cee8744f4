"""LLaVA-OneVision (transformers' LlavaOnevisionForConditionalGeneration: SigLIP without [CLS], anyres crops with
`image_newline`) pruned through `apply_pruning`.

Sources of truth: the unmodified transformers model (its own logits and greedy output at full budget, before apply
and after undo); an oracle written here with transformers' own modules: its SigLIP tower's `hidden_states`, its
projector, its `pack_image_features` (run on the crops' (crop, patch) coordinates, so the token layout of the
unpadded grid and its newlines is transformers' own) and its decoder + lm_head, on the kept embeddings; the kept
indices of `uniform` computed by hand.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoTokenizer,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches
from transformers.processing_utils import ProcessorMixin

from llava.integrations.transformers import apply_pruning
from llava.model.multimodal_encoder.clip_encoder import TowerOutput
from llava.model.pruning import METHODS
from llava.model.pruning.divprune import divprune
from tests.conftest import pil_image

SIDE, PATCH = 32, 8
P = (SIDE // PATCH) ** 2  # 16 tokens per crop
PINPOINTS = [[32, 64], [64, 32], [64, 64], [32, 96], [96, 32]]  # (height, width): grids of at most 3 crops
PROMPT = "USER: <image>\nWhat is shown? ASSISTANT:"
UNIFORM_4_OF_16 = [2, 6, 10, 14]  # floor((i + 0.5) * 16 / 4), i = 0..3: by hand


@pytest.fixture(scope="module")
def processor(tok_dir):
    return make_processor(tok_dir, SIDE)


def make_processor(tok_dir, side: int, max_crops: int = 9):
    """transformers' LlavaOnevisionProcessor on the tiny tokenizer (`<image>`, `<video>` added). Its video
    processor needs torchvision, which this package does not require: the class check is skipped for that one
    argument (None), the image path is transformers' own."""
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    tokenizer.add_tokens(["<image>", "<video>"], special_tokens=True)
    tokenizer.pad_token = tokenizer.unk_token
    tokenizer.padding_side = "left"
    images = LlavaOnevisionImageProcessorPil(size={"height": side, "width": side}, image_grid_pinpoints=PINPOINTS)
    check = ProcessorMixin.check_argument_for_proper_class

    def skip_none(self, name, arg):
        return None if arg is None else check(self, name, arg)

    ProcessorMixin.check_argument_for_proper_class = skip_none
    try:
        return LlavaOnevisionProcessor(image_processor=images, tokenizer=tokenizer, video_processor=None,
                                       num_image_tokens=(side // PATCH) ** 2, vision_feature_select_strategy="full",
                                       vision_aspect_ratio=f"anyres_max_{max_crops}")
    finally:
        ProcessorMixin.check_argument_for_proper_class = check


@pytest.fixture(scope="module")
def model(processor):
    return make_model(processor, SIDE)


def make_model(processor, side: int, max_crops: int = 9):
    """Tiny random OneVision: 3-layer SigLIP (`side` px, patch 8), 3-layer Qwen2; `<image>` / `<video>` are the last
    two vocabulary rows."""
    vocab = len(processor.tokenizer) - 2
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                image_size=side, patch_size=PATCH)
    text = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=vocab + 2, max_position_embeddings=512,
                       tie_word_embeddings=False)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=vocab,
                                  video_token_index=vocab + 1, vision_feature_layer=-1,
                                  vision_feature_select_strategy="full", image_grid_pinpoints=PINPOINTS,
                                  vision_aspect_ratio=f"anyres_max_{max_crops}", tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration._from_config(config, attn_implementation="eager").eval()
    torch.nn.init.normal_(model.model.image_newline, std=1.0)
    return model


def inputs(processor, images, prompts=None):
    prompts = prompts or [PROMPT] * len(images)
    return dict(processor(text=prompts, images=images, return_tensors="pt", padding=True))


IMAGES = {"wide": (40, 30), "tall": (20, 70), "square": (32, 32)}  # (width, height): 2x1, 1x3 and 1x1 grids


@torch.no_grad()
def logits(model, batch):
    return model(**batch).logits


@pytest.mark.parametrize("method, shapes", [("uniform", ["wide", "tall"]), ("random", ["wide", "tall"]),
                                            ("fastv", ["wide"])])
def test_full_budget_equals_the_unmodified_model(model, processor, method, shapes):
    """fastv on one image: its budget is P x crops (48 for the 2x1 grid), at least the image's 44 tokens; in a batch
    its per-sample drop counts would differ, which FastV refuses (llava/model/pruning/fastv.py)."""
    batch = inputs(processor, [pil_image(*IMAGES[shape], seed=i + 1) for i, shape in enumerate(shapes)])
    assert_full_budget_is_the_model(model, batch, method)


def assert_full_budget_is_the_model(model, batch, method: str) -> None:
    """Logits and 4 greedy tokens of `method` at P per crop equal the unmodified model's."""
    expected = logits(model, batch)
    greedy = model.generate(**batch, max_new_tokens=4, do_sample=False)
    with apply_pruning(model, method, visual_token_num=P):
        assert torch.allclose(logits(model, batch), expected, atol=1e-5)
        assert torch.equal(model.generate(**batch, max_new_tokens=4, do_sample=False), greedy)


def test_multi_image_sample_at_full_budget(model, processor):
    """Two images in one sample: transformers gives each its base crop and one newline (no tiling)."""
    images = [pil_image(*IMAGES["wide"], seed=3), pil_image(*IMAGES["tall"], seed=4)]
    batch = inputs(processor, [images], ["USER: <image> and <image>\nSame? ASSISTANT:"])  # one sample
    assert batch["batch_num_images"].tolist() == [2]
    expected = logits(model, batch)
    with apply_pruning(model, "uniform", visual_token_num=P):
        assert torch.allclose(logits(model, batch), expected, atol=1e-5)


@torch.no_grad()
def oracle_logits(model, batch, kept: list[int]):
    """One sample with one tiled image, `kept` patch indices in every crop, from transformers' modules only:
    the layout is its `pack_image_features` on each crop's (crop, patch) coordinates (newline = (-1, -1))."""
    ov = model.model
    n_crops = image_size_to_num_patches(batch["image_sizes"][0], PINPOINTS, SIDE)
    pixels = batch["pixel_values"][0, :n_crops]
    features = ov.multi_modal_projector(ov.vision_tower(pixels, output_hidden_states=True).hidden_states[-1])
    coords = torch.stack(torch.meshgrid(torch.arange(n_crops), torch.arange(P), indexing="ij"), -1).float()
    layout = ov.pack_image_features([coords], batch["image_sizes"], image_newline=torch.tensor([-1.0, -1.0]))[0][0]
    tokens = []
    for crop, patch in layout.long().tolist():
        if crop < 0:
            tokens.append(ov.image_newline)
        elif patch in kept:
            tokens.append(features[crop, patch])
    ids = batch["input_ids"][0]
    spots = (ids == model.config.image_token_id).nonzero().flatten()
    assert len(spots) == len(layout)  # the oracle's full layout is what the processor counted
    embed = model.get_input_embeddings()
    seq = torch.cat([embed(ids[: spots[0]]), torch.stack(tokens), embed(ids[spots[-1] + 1:])])[None]
    return model.lm_head(ov.language_model(inputs_embeds=seq).last_hidden_state)


@pytest.mark.parametrize("shape", list(IMAGES))
def test_uniform_equals_the_oracle(model, processor, shape):
    batch = inputs(processor, [pil_image(*IMAGES[shape], seed=5)])
    expected = oracle_logits(model, batch, UNIFORM_4_OF_16)
    with apply_pruning(model, "uniform", visual_token_num=4) as pruning:
        got = logits(model, batch)
        keep = pruning.adapter.pipeline(pruning.adapter.split_crops(batch["pixel_values"], [1]), [(1, 1)]).keep
    assert keep[0].tolist() == [UNIFORM_4_OF_16]
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)


def test_batch_of_two_sizes_equals_each_alone(model, processor):
    images = [pil_image(*IMAGES["wide"], seed=6), pil_image(*IMAGES["tall"], seed=7)]
    with apply_pruning(model, "uniform", visual_token_num=4):
        both = logits(model, inputs(processor, images))
        alone = [logits(model, inputs(processor, [image]))[0, -1] for image in images]
    for row, one in zip(both[:, -1], alone):
        assert torch.allclose(row, one, atol=1e-5)


@pytest.mark.parametrize("method", ["fastervlm", "visionzip", "vispruner"])
def test_cls_attention_methods_are_refused_with_the_alternatives(model, method):
    with pytest.raises(ValueError) as error:
        apply_pruning(model, method, visual_token_num=4)
    message = str(error.value)
    assert f"{method!r} ranks patches by the [CLS] token's attention" in message
    assert "has no [CLS] token" in message and "random, uniform, fastv" in message
    assert "fastervlm" not in model.__dict__  # nothing was installed


def test_apply_and_undo_restore_bit_identical_outputs(model, processor):
    batch = inputs(processor, [pil_image(*IMAGES["wide"], seed=8)])
    before = logits(model, batch)
    pruning = apply_pruning(model, "random", visual_token_num=3)
    assert not torch.equal(logits(model, batch)[0, -1], before[0, -1])
    pruning.undo()
    assert torch.equal(logits(model, batch), before)


# -- videos: pooled 2x2 after the projector, pruned per frame after the pooling, one newline per video -----------
# Sources of truth: the unmodified model; transformers' own `get_video_features` (SigLIP, projector, its bilinear
# `apply_pooling`, the newline) for the oracle's pooled tokens; its processor's `replace_video_token` for the
# placeholder count; kept indices of `uniform` and the 2x2 block means of a pooled score by hand.
VIDEO_SIDE = 40  # 5x5 patches -> ceil(5 / 2)^2 = 9 pooled tokens per frame: a non-integer (5 -> 3) resize
Q_ODD, Q_EVEN = 9, 4  # pooled tokens per frame: VIDEO_SIDE, SIDE (4x4 -> 2x2)
UNIFORM_3_OF_9 = [1, 4, 7]  # floor((i + 0.5) * 9 / 3), i = 0..2: by hand
VIDEO_PROMPT = "USER: <video>\nWhat happens? ASSISTANT:"


@pytest.fixture(scope="module")
def video_processor(tok_dir):
    return make_processor(tok_dir, VIDEO_SIDE)


@pytest.fixture(scope="module")
def video_model(video_processor):
    return make_model(video_processor, VIDEO_SIDE)


def frames(n_videos: int, n_frames: int, side: int, seed: int) -> torch.Tensor:
    """Random normalised pixels (videos, T, 3, S, S) (the video processor needs torchvision, not required here)."""
    return torch.randn(n_videos, n_frames, 3, side, side, generator=torch.Generator().manual_seed(seed))


def video_inputs(processor, videos: torch.Tensor, prompts=None) -> dict:
    """Each `<video>` expanded to transformers' own placeholder count (`replace_video_token`), left-padded."""
    prompts = prompts or [VIDEO_PROMPT] * len(videos)
    inputs = {"pixel_values_videos": videos}
    texts = [p.replace("<video>", processor.replace_video_token(inputs, i)) for i, p in enumerate(prompts)]
    return {**processor.tokenizer(texts, return_tensors="pt", padding=True), **inputs}


def spliced_and_pruned(model, batch, token_id: int, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Sample 0's prompt embeddings with transformers' visual `tokens` (n, D) at its `token_id` placeholders, then
    the placeholders whose `keep` (n,) is False dropped -> (L', D)."""
    ids = batch["input_ids"][0]
    spots = ids == token_id
    assert int(spots.sum()) == tokens.shape[0]  # transformers' tokens fill exactly the processor's placeholders
    seq = model.get_input_embeddings()(ids).clone()
    seq[spots] = tokens
    kept = torch.ones_like(spots)
    kept[spots] = keep
    return seq[kept]


@torch.no_grad()
def video_oracle_embeds(model, batch, kept: list[int] | list[list[int]]) -> torch.Tensor:
    """One sample with one video: transformers' pooled tokens per frame (its `get_video_features`), the `kept`
    ones of each frame (one list for all frames, or one per frame) and the final newline at the placeholders, the
    pruned placeholders dropped -> (L', D)."""
    pooled = model.model.get_video_features(batch["pixel_values_videos"]).pooler_output[0]  # (T * Q + 1, D)
    n_frames = batch["pixel_values_videos"].shape[1]
    q = (pooled.shape[0] - 1) // n_frames
    per_frame = kept if kept and isinstance(kept[0], list) else [kept] * n_frames
    keep_video = torch.tensor([i % q in per_frame[i // q] for i in range(n_frames * q)] + [True])
    return spliced_and_pruned(model, batch, model.config.video_token_id, pooled, keep_video)


@torch.no_grad()
def oracle_greedy(model, seq: torch.Tensor, n_new: int) -> tuple[torch.Tensor, list[int]]:
    """The unmodified decoder + lm_head on embeddings (L', D) with positions 0..L'-1: prefill logits and n_new
    greedy tokens, each step re-run on the whole sequence (no cache, so the handle's cache path is checked)."""
    first = model.lm_head(model.model.language_model(inputs_embeds=seq[None]).last_hidden_state)
    out, logit = [], first[0, -1]
    for _ in range(n_new):
        token = int(logit.argmax())
        out.append(token)
        seq = torch.cat([seq, model.get_input_embeddings()(torch.tensor([token]))])
        logit = model.lm_head(model.model.language_model(inputs_embeds=seq[None]).last_hidden_state)[0, -1]
    return first, out


@pytest.mark.parametrize("method, n_videos", [("uniform", 2), ("random", 2), ("divprune", 2), ("fastv", 1)])
def test_video_full_budget_equals_the_unmodified_model(video_model, video_processor, method, n_videos):
    """visual_token_num = P (the image default, 25) is capped at the Q = 9 pooled tokens of a frame: all kept."""
    batch = video_inputs(video_processor, frames(n_videos, 2, VIDEO_SIDE, seed=11))
    expected = logits(video_model, batch)
    greedy = video_model.generate(**batch, max_new_tokens=4, do_sample=False)
    with apply_pruning(video_model, method, visual_token_num=(VIDEO_SIDE // PATCH) ** 2) as pruning:
        assert torch.allclose(logits(video_model, batch), expected, atol=1e-5)
        assert torch.equal(video_model.generate(**batch, max_new_tokens=4, do_sample=False), greedy)
    counts = pruning.last_v_token_num if n_videos > 1 else [pruning.last_v_token_num]
    assert counts == [2 * Q_ODD + 1] * n_videos


@torch.no_grad()
def test_video_uniform_equals_the_oracle_with_decode(video_model, video_processor):
    """3 of 9 pooled tokens per frame (by hand), prefill logits and 3 greedy tokens through the cache."""
    batch = video_inputs(video_processor, frames(1, 3, VIDEO_SIDE, seed=12))
    expected, expected_tokens = oracle_greedy(video_model, video_oracle_embeds(video_model, batch, UNIFORM_3_OF_9), 3)
    with apply_pruning(video_model, "uniform", visual_token_num=3) as pruning:
        got = logits(video_model, batch)
        out = video_model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert [k.tolist() for k in pruning.adapter.video_pipeline(batch["pixel_values_videos"]).keep] == \
        [[UNIFORM_3_OF_9] * 3]
    assert pruning.last_v_token_num == 3 * 3 + 1
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)
    assert out[0, batch["input_ids"].shape[1]:].tolist() == expected_tokens


@torch.no_grad()
def test_video_divprune_selects_among_the_pooled_tokens(video_model, video_processor):
    """The kept set is DivPrune's greedy max-min (llava/model/pruning/divprune.py, tested against the public
    algorithm in tests/test_divprune.py) run on transformers' pooled tokens of each frame, not on the patches."""
    batch = video_inputs(video_processor, frames(1, 2, VIDEO_SIDE, seed=13))
    pooled = video_model.model.get_video_features(batch["pixel_values_videos"]).pooler_output[0, :-1]
    expected_keep = divprune(pooled.view(2, Q_ODD, -1), None, 4)
    with apply_pruning(video_model, "divprune", visual_token_num=4) as pruning:
        got = logits(video_model, batch)
        keep = pruning.adapter.video_pipeline(batch["pixel_values_videos"]).keep[0]
    assert torch.equal(keep, expected_keep)
    assert len(set(map(tuple, keep.tolist()))) == 2  # the frames' kept sets differ: a per-frame choice is visible
    expected = oracle_greedy(video_model, video_oracle_embeds(video_model, batch, keep.tolist()), 0)[0]
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.skipif("attention_received" not in METHODS, reason="attention_received is not registered yet")
@torch.no_grad()
def test_video_attention_received_ranks_the_pooled_received_attention(video_model, video_processor):
    """Oracle: transformers' SigLIP attention probabilities at the feature layer (eager, `output_attentions`),
    averaged over heads and queries (the attention each patch receives), resized to the pooled grid as transformers
    resizes features (bilinear 5x5 -> 3x3, align_corners=False), top 4 per frame in raster order."""
    batch = video_inputs(video_processor, frames(1, 2, VIDEO_SIDE, seed=17))
    pixels = batch["pixel_values_videos"][0]
    attn = video_model.model.vision_tower(pixels, output_attentions=True).attentions[-1]  # (T, H, P, P), layer 3
    side = VIDEO_SIDE // PATCH
    received = attn.mean(dim=1).mean(dim=1).view(2, 1, side, side)
    pooled = torch.nn.functional.interpolate(received, size=[3, 3], mode="bilinear", align_corners=False)
    expected_keep = pooled.flatten(1).topk(4, dim=-1).indices.sort(dim=-1).values
    with apply_pruning(video_model, "attention_received", visual_token_num=4) as pruning:
        got = logits(video_model, batch)
        keep = pruning.adapter.video_pipeline(batch["pixel_values_videos"]).keep[0]
    assert torch.equal(keep, expected_keep)
    expected = oracle_greedy(video_model, video_oracle_embeds(video_model, batch, keep.tolist()), 0)[0]
    assert torch.allclose(got, expected, atol=1e-5)


def test_pooled_score_is_the_mean_of_each_2x2_block(model):
    """A per-patch score map is pooled as the features are: on a 4x4 map transformers' bilinear resize to 2x2
    (scale exactly 2, align_corners=False) is the mean of each 2x2 block; by hand for arange(16)."""
    with apply_pruning(model, "uniform", visual_token_num=2) as pruning:  # a tower output with a received map
        out = TowerOutput(torch.zeros(1, 16, 32), torch.zeros(1, 0), received=torch.arange(16.0)[None])
        maps = pruning.adapter.video_pipeline.pooled_scores(out)
    assert list(maps) == ["received"]
    assert maps["received"].tolist() == [[2.5, 4.5, 10.5, 12.5]]  # (0+1+4+5)/4, (2+3+6+7)/4, ...


@torch.no_grad()
def test_images_and_a_video_in_one_batch(model, processor):
    """Sample 0: an image; sample 1: a video (2x2 pooling, Q = 4). At full budget the batch equals the unmodified
    model; pruned, each sample's last logits equal the sample alone."""
    alone = [inputs(processor, [pil_image(*IMAGES["wide"], seed=14)]), video_inputs(processor, frames(1, 2, SIDE, 15))]
    both = left_padded([a["input_ids"][0] for a in alone], processor.tokenizer.pad_token_id)
    both.update({k: v for a in alone for k, v in a.items() if k not in both})  # pixels, sizes, batch_num_images
    expected = logits(model, both)
    with apply_pruning(model, "uniform", visual_token_num=P) as pruning:
        assert torch.allclose(logits(model, both), expected, atol=1e-5)
    with apply_pruning(model, "uniform", visual_token_num=2) as pruning:
        got = logits(model, both)[:, -1]
        assert pruning.last_v_token_num[1] == 2 * 2 + 1
        for row, one in zip(got, alone):
            assert torch.allclose(row, logits(model, one)[0, -1], atol=1e-5)


def left_padded(rows: list[torch.Tensor], pad: int) -> dict:
    """Token rows of different lengths as one left-padded batch (the processor refuses `<video>` text without
    videos, which it cannot process here)."""
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([torch.full((width - len(r),), pad), r]) for r in rows])
    mask = torch.stack([torch.arange(width) >= width - len(r) for r in rows]).long()
    return {"input_ids": ids, "attention_mask": mask}


def test_video_apply_and_undo_restore_bit_identical_outputs(model, processor):
    batch = video_inputs(processor, frames(1, 2, SIDE, seed=16))
    before = logits(model, batch)
    pruning = apply_pruning(model, "random", visual_token_num=1)
    assert not torch.equal(logits(model, batch)[0, -1], before[0, -1])
    pruning.undo()
    assert torch.equal(logits(model, batch), before)


# -- "anyres_max_N" grids that transformers resizes: pruned after the resize, the grid as one unit --------------
# Sources of truth: the unmodified model; transformers' own `get_image_features` / `pack_image_features` (stitch,
# unpad, bilinear resize, newlines) for the oracle's tokens and for the resized attention map; the geometry and the
# kept indices of `uniform` by hand. With anyres_max_2 (P = 16): "tall" (1x3 crops) unpads to 12x4 = 48 tokens,
# ratio sqrt(48 / 32) = 1.22 > 1.1, resized to int(12 // 1.22) x int(4 // 1.22) = 9x3; "wide3" (3x1 crops) to 3x9;
# "wide" (2x1 crops, 4x6 = 24 tokens, ratio 0.87) is not resized.
RESIZED = {"tall": (9, 3), "wide3": (3, 9)}  # (h', w') by hand
MAX2_IMAGES = {**IMAGES, "wide3": (90, 30)}
UNIFORM_7_OF_27 = [1, 5, 9, 13, 17, 21, 25]  # floor((i + 0.5) * 27 / 7), i = 0..6; 7 = floor(4 * 27 / 16 + 1/2)


@pytest.fixture(scope="module")
def max2_processor(tok_dir):
    return make_processor(tok_dir, SIDE, max_crops=2)


@pytest.fixture(scope="module")
def max2_model(max2_processor):
    return make_model(max2_processor, SIDE, max_crops=2)


def max2_inputs(processor, shapes: list[str], seed: int) -> dict:
    return inputs(processor, [pil_image(*MAX2_IMAGES[s], seed=seed + i) for i, s in enumerate(shapes)])


@torch.no_grad()
def resized_oracle_embeds(model, batch, base_kept: list[int], grid_kept: list[int], shape: str) -> torch.Tensor:
    """One sample with one resized image: transformers' own image tokens (base crop, resized grid, a newline per
    row) at the placeholders, the base crop's `base_kept` patches, the grid's `grid_kept` raster indices and every
    newline kept, the rest dropped -> (L', D)."""
    ov = model.model
    tokens = ov.get_image_features(pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"],
                                   vision_aspect_ratio=model.config.vision_aspect_ratio).pooler_output[0]
    height, width = RESIZED[shape]
    newline = (tokens == ov.image_newline).all(dim=-1)
    assert newline.nonzero().flatten().tolist() == [P + r * (width + 1) + width for r in range(height)]
    raster = (~newline[P:]).long().cumsum(0) - 1  # each grid token's raster index on the h' x w' grid
    keep = torch.cat([torch.isin(torch.arange(P), torch.tensor(base_kept)),
                      newline[P:] | torch.isin(raster, torch.tensor(grid_kept))])
    return spliced_and_pruned(model, batch, model.config.image_token_id, tokens, keep)


@pytest.mark.parametrize("method, shapes", [("uniform", ["tall", "wide3"]), ("random", ["tall", "wide"]),
                                            ("divprune", ["wide3"]), ("attention_received", ["tall"]),
                                            ("fastv", ["tall"])])
def test_resized_grid_full_budget_equals_the_unmodified_model(max2_model, max2_processor, method, shapes):
    assert_full_budget_is_the_model(max2_model, max2_inputs(max2_processor, shapes, seed=21), method)


def test_fastv_keeps_of_a_resized_grid_what_the_selectors_give_the_llm(max2_model, max2_processor):
    """"tall" (1 + 3 crops, resized to 9 x 3): at 4 per crop the selectors give the LLM 4 + 7 + 9 = 20 tokens (by
    hand: round(4 x 27 / 16) = 7 grid tokens, 9 newlines); FastV keeps as many, not 4 x 4 crops = 16."""
    batch = max2_inputs(max2_processor, ["tall"], seed=23)
    with apply_pruning(max2_model, "fastv", visual_token_num=4, llm_layer=1) as pruning:
        logits(max2_model, batch)
        assert pruning.last_v_token_num == 20


@torch.no_grad()
def test_resized_grid_uniform_equals_the_oracle_with_decode(max2_model, max2_processor):
    """4 of 16 base patches and 7 of the 27 resized grid tokens (by hand); 9 newlines; 3 greedy tokens."""
    batch = max2_inputs(max2_processor, ["tall"], seed=22)
    seq = resized_oracle_embeds(max2_model, batch, UNIFORM_4_OF_16, UNIFORM_7_OF_27, "tall")
    expected, expected_tokens = oracle_greedy(max2_model, seq, 3)
    with apply_pruning(max2_model, "uniform", visual_token_num=4) as pruning:
        got = logits(max2_model, batch)
        assert pruning.last_v_token_num == 4 + 7 + 9
        out = max2_model.generate(**batch, max_new_tokens=3, do_sample=False)
        keep = pruning.adapter.resized_grid(batch["pixel_values"][0], MAX2_IMAGES["tall"])[2]
    assert keep.tolist() == [UNIFORM_4_OF_16 + [P + i for i in UNIFORM_7_OF_27]]
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)
    assert out[0, batch["input_ids"].shape[1]:].tolist() == expected_tokens


@torch.no_grad()
def test_resized_grid_attention_received_ranks_the_resized_attention(max2_model, max2_processor):
    """Oracle: transformers' eager SigLIP attention at the feature layer, averaged over heads and queries (the
    attention each patch receives), laid out and resized by transformers' own `pack_image_features` (the score as a
    1-channel feature, newline marker -1); top 4 of the base crop, top 7 of the 27 resized grid scores."""
    batch = max2_inputs(max2_processor, ["wide3"], seed=23)
    ov, pixels = max2_model.model, batch["pixel_values"][0]
    attn = ov.vision_tower(pixels, output_attentions=True).attentions[-1]  # (crops, H, P, P), layer 3 of 3
    received = attn.mean(dim=1).mean(dim=1)  # (crops, P)
    packed = ov.pack_image_features([received[..., None]], batch["image_sizes"], image_newline=torch.tensor([-1.0]),
                                    vision_aspect_ratio="anyres_max_2")[0][0][:, 0]
    grid = packed[P:][packed[P:] >= 0]
    assert grid.shape == (27,)
    base_keep = received[0].topk(4).indices.sort().values.tolist()
    grid_keep = grid.topk(7).indices.sort().values.tolist()
    with apply_pruning(max2_model, "attention_received", visual_token_num=4) as pruning:
        got = logits(max2_model, batch)
        keep = pruning.adapter.resized_grid(pixels, MAX2_IMAGES["wide3"])[2]
    assert keep.tolist() == [base_keep + [P + i for i in grid_keep]]
    expected = oracle_greedy(max2_model, resized_oracle_embeds(max2_model, batch, base_keep, grid_keep, "wide3"), 0)
    assert torch.allclose(got, expected[0], atol=1e-5)


@torch.no_grad()
def test_resized_grid_divprune_selects_among_the_resized_tokens(max2_model, max2_processor):
    """The grid's kept set is DivPrune's greedy max-min (tested against the public algorithm in
    tests/test_divprune.py) on transformers' resized grid tokens; the base crop's on its SigLIP features."""
    batch = max2_inputs(max2_processor, ["tall"], seed=24)
    ov, pixels = max2_model.model, batch["pixel_values"][0]
    tokens = ov.get_image_features(pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"],
                                   vision_aspect_ratio="anyres_max_2").pooler_output[0]
    grid = tokens[P:][~(tokens[P:] == ov.image_newline).all(dim=-1)]  # (27, D) in raster order
    base_keep = divprune(ov.vision_tower(pixels[:1], output_hidden_states=True).hidden_states[-1], None, 4)[0]
    grid_keep = divprune(grid[None], None, 7)[0]
    with apply_pruning(max2_model, "divprune", visual_token_num=4) as pruning:
        got = logits(max2_model, batch)
        keep = pruning.adapter.resized_grid(pixels, MAX2_IMAGES["tall"])[2]
    assert keep.tolist() == [base_keep.tolist() + (P + grid_keep).tolist()]
    expected = oracle_greedy(max2_model, resized_oracle_embeds(max2_model, batch, base_keep.tolist(),
                                                               grid_keep.tolist(), "tall"), 0)
    assert torch.allclose(got, expected[0], atol=1e-5)


def test_batch_of_a_resized_and_a_plain_image_equals_each_alone(max2_model, max2_processor):
    images = [pil_image(*MAX2_IMAGES["wide"], seed=25), pil_image(*MAX2_IMAGES["tall"], seed=26)]
    with apply_pruning(max2_model, "uniform", visual_token_num=4) as pruning:
        both = logits(max2_model, inputs(max2_processor, images))
        assert pruning.last_v_token_num[1] == 4 + 7 + 9
        alone = [logits(max2_model, inputs(max2_processor, [image]))[0, -1] for image in images]
    for row, one in zip(both[:, -1], alone):
        assert torch.allclose(row, one, atol=1e-5)


def test_resized_grid_apply_and_undo_restore_bit_identical_outputs(max2_model, max2_processor):
    batch = max2_inputs(max2_processor, ["tall"], seed=27)
    before = logits(max2_model, batch)
    pruning = apply_pruning(max2_model, "random", visual_token_num=3)
    assert not torch.equal(logits(max2_model, batch)[0, -1], before[0, -1])
    pruning.undo()
    assert torch.equal(logits(max2_model, batch), before)
