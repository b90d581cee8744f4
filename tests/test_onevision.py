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
from tests.conftest import pil_image

SIDE, PATCH = 32, 8
P = (SIDE // PATCH) ** 2  # 16 tokens per crop
PINPOINTS = [[32, 64], [64, 32], [64, 64], [32, 96], [96, 32]]  # (height, width): grids of at most 3 crops
PROMPT = "USER: <image>\nWhat is shown? ASSISTANT:"
UNIFORM_4_OF_16 = [2, 6, 10, 14]  # floor((i + 0.5) * 16 / 4), i = 0..3: by hand


@pytest.fixture(scope="module")
def processor(tok_dir):
    """transformers' LlavaOnevisionProcessor on the tiny tokenizer (`<image>`, `<video>` added). Its video
    processor needs torchvision, which this package does not require: the class check is skipped for that one
    argument (None), the image path is transformers' own."""
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    tokenizer.add_tokens(["<image>", "<video>"], special_tokens=True)
    tokenizer.pad_token = tokenizer.unk_token
    tokenizer.padding_side = "left"
    images = LlavaOnevisionImageProcessorPil(size={"height": SIDE, "width": SIDE}, image_grid_pinpoints=PINPOINTS)
    check = ProcessorMixin.check_argument_for_proper_class

    def skip_none(self, name, arg):
        return None if arg is None else check(self, name, arg)

    ProcessorMixin.check_argument_for_proper_class = skip_none
    try:
        return LlavaOnevisionProcessor(image_processor=images, tokenizer=tokenizer, video_processor=None,
                                       num_image_tokens=P, vision_feature_select_strategy="full")
    finally:
        ProcessorMixin.check_argument_for_proper_class = check


@pytest.fixture(scope="module")
def model(processor):
    """Tiny random OneVision: 3-layer SigLIP (32 px, patch 8), 3-layer Qwen2; `<image>` / `<video>` are the last
    two vocabulary rows."""
    vocab = len(processor.tokenizer) - 2
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                image_size=SIDE, patch_size=PATCH)
    text = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=vocab + 2, max_position_embeddings=512,
                       tie_word_embeddings=False)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=vocab,
                                  video_token_index=vocab + 1, vision_feature_layer=-1,
                                  vision_feature_select_strategy="full", image_grid_pinpoints=PINPOINTS,
                                  tie_word_embeddings=False)
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


def test_downsampled_grids_and_videos_are_refused(model, processor):
    """With "anyres_max_1" transformers interpolates a 2x1 grid down (its processor counts fewer placeholders than
    the unpadded grid has tokens); refused, as is a video, instead of passing through unpruned."""
    batch = inputs(processor, [pil_image(*IMAGES["wide"], seed=9)])
    model.config.vision_aspect_ratio = processor.vision_aspect_ratio = "anyres_max_1"
    try:
        small = inputs(processor, [pil_image(*IMAGES["wide"], seed=9)])
        assert small["input_ids"].shape[1] < batch["input_ids"].shape[1]  # transformers downsampled it
        with apply_pruning(model, "uniform", visual_token_num=4), pytest.raises(NotImplementedError,
                                                                                 match="is downsampled by"):
            logits(model, small)
    finally:
        model.config.vision_aspect_ratio = processor.vision_aspect_ratio = "anyres_max_9"
    with apply_pruning(model, "uniform", visual_token_num=4):
        with pytest.raises(NotImplementedError, match="videos"):
            logits(model, {**batch, "pixel_values_videos": torch.zeros(1, 2, 3, SIDE, SIDE)})
