"""`llava.integrations.transformers` on transformers' own Llava classes: the adapter's placeholder count against the
count transformers' LlavaNextProcessor writes (and against a hand count), the adapter table, and `undo` leaving
the instance exactly as it was before `apply_pruning`."""

import pytest
import torch
from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

from llava.hf import apply_pruning
from llava.integrations.transformers import ADAPTERS, adapter_class
from llava.integrations.transformers.adapters import LlavaAdapter, LlavaNextAdapter
from llava.model.placeholders import kept_placeholders
from tests.conftest import pil_image
from tests.hf_helpers import hf_model, hf_processor

PROMPT = "USER: <image>\nwhat is in this image? ASSISTANT:"


@pytest.fixture(scope="module")
def llava_next(v16_dir, clip_dir):
    return hf_model("llava_next", v16_dir, clip_dir)


@pytest.fixture(scope="module")
def next_processor(tok_dir, clip_dir):
    return hf_processor("llava_next", tok_dir, clip_dir)


# (w, h) -> the full-budget token count worked out by hand (16 patches per 32 px crop, 4 x 4 patches per crop).
HAND_COUNTS = {
    # 188x47: transformers' rule picks 96x32 (3x1, a 12 x 4 patch canvas); 47 * (12 / 188) is 2.9999999999999996,
    # which transformers rounds to 3 rows -> pad (4 - 3) // 2 = 0: all 4 rows stay (LLaVA's int() would keep 2).
    (188, 47): 16 + 4 * (12 + 1),
    # 64x16: 64x32 (2x1, 8 x 4 patches); 16 * 8 / 64 = 2 rows -> pad 1: rows 1-2 stay.
    (64, 16): 16 + 2 * (8 + 1),
    # 24x24: transformers reads pinpoints as [height, width], so the first of the two equal canvases is 64 wide x 32
    # tall (2x1, 8 x 4 patches); the square image spans 4 of the 8 columns (pad 2 each side), all 4 rows.
    (24, 24): 16 + 4 * (4 + 1),
}


@pytest.mark.parametrize("size", [(188, 47), (64, 16), (24, 24), (40, 24), (30, 70), (50, 20)])
def test_full_token_count_equals_the_processors_placeholders(llava_next, next_processor, size):
    model, image_token_id = llava_next
    inputs = next_processor(images=pil_image(*size, seed=2), text=PROMPT, return_tensors="pt")
    written = int((inputs["input_ids"] == image_token_id).sum())
    with apply_pruning(model, visual_token_num=4) as handle:
        assert handle.adapter.pipeline.full_tokens(size) == written
    if size in HAND_COUNTS:
        assert written == HAND_COUNTS[size]


def test_adapter_table_and_lookup(llava_next):
    class MyNext(LlavaNextForConditionalGeneration):
        pass

    assert ADAPTERS[LlavaForConditionalGeneration] is LlavaAdapter
    assert ADAPTERS[LlavaNextForConditionalGeneration] is LlavaNextAdapter
    model, _ = llava_next
    assert adapter_class(model) is LlavaNextAdapter
    subclass_instance = MyNext.__new__(MyNext)  # the lookup reads the class only
    assert adapter_class(subclass_instance) is LlavaNextAdapter


@pytest.mark.parametrize("target", [torch.nn.Linear(2, 2), "a string"])
def test_unsupported_class_is_one_type_error(target):
    """One TypeError naming what was given and every supported class (listed here by hand)."""
    with pytest.raises(TypeError, match=r"apply_pruning takes a transformers .* instance, got (Linear|str)") as err:
        apply_pruning(target)
    for name in ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration",
                 "VideoLlavaForConditionalGeneration"):
        assert name in str(err.value)


@pytest.mark.parametrize("method", ["fastervlm", "fastv"])
def test_undo_leaves_the_instance_as_before(llava_next, method):
    model, _ = llava_next
    before = dict(model.__dict__)
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    handle = apply_pruning(model, method=method, visual_token_num=3, llm_layer=1)
    assert model.fastervlm is handle and {"forward", "generate"} <= model.__dict__.keys()
    handle.undo()
    assert model.__dict__.keys() == before.keys()
    assert all(model.__dict__[k] is v for k, v in before.items())
    assert model.forward.__func__ is type(model).forward
    assert model.generate.__func__ is type(model).generate
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hooks


def test_kept_placeholders_of_two_images_in_one_sample():
    """transformers' layout, by hand: text, 4 placeholders of image 0, text, 4 of image 1; 2 and 3 tokens kept:
    the first 2 of the first block and the first 3 of the second stay, every text position stays."""
    placeholders = torch.tensor([[0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0]], dtype=torch.bool)
    keep = kept_placeholders(placeholders, owner=[0, 0], full=[4, 4], kept=[2, 3])
    assert keep.int().tolist() == [[1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 1]]
