"""The DINOv2 tower (tiny random weights): features and [CLS] attention against transformers' own eager Dinov2Model,
at an input side other than the one its position embeddings were trained for (so they are interpolated)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from llava.model.multimodal_encoder.builder import build_vision_tower, tokens_per_crop, tower_model_type
from llava.model.multimodal_encoder.dinov2_encoder import Dinov2VisionTower

INPUT = 28  # 4 x 4 patches of 7 px; the checkpoint's position embeddings are for 42 px (6 x 6)


class Cfg:
    mm_vision_select_layer = -2
    mm_vision_select_feature = "patch"


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    from llava.model.tiny_real import dinov2_preprocessor_config

    path = tmp_path_factory.mktemp("dinov2-tiny")
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, mlp_ratio=2, patch_size=7,
                          image_size=42, layerscale_value=0.5)
    model = Dinov2Model(config)
    with torch.no_grad():  # peaked attention, so rankings are unambiguous
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embeddings" not in name:
                p.copy_(torch.randn(p.shape) * 1.5 / p.shape[-1] ** 0.5)
    model.save_pretrained(path)  # hub names: attention.attention.query, ...
    (path / "preprocessor_config.json").write_text(json.dumps(dinov2_preprocessor_config(INPUT)))
    return path


def test_builder_dispatches_on_model_type(dinov2_dir, clip_dir):
    assert tower_model_type(dinov2_dir) == "dinov2" and tower_model_type(clip_dir) == "clip"
    assert tokens_per_crop(dinov2_dir) == 16  # from the processor's crop (28 px), not the config's 42 px
    tower = build_vision_tower(Cfg(), dinov2_dir)
    assert isinstance(tower, Dinov2VisionTower)
    assert tower.num_patches == 16 and tower.config.image_size == INPUT and tower.hidden_size == 32
    assert tower.vision_tower.config.image_size == 42  # the model's own config is left alone


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_features_and_cls_attention_equal_full_eager_model(dinov2_dir, backend):
    from transformers import Dinov2Model

    tower = build_vision_tower(Cfg(), dinov2_dir, attn_implementation=backend)
    pixels = torch.randn(2, 3, INPUT, INPUT, generator=torch.Generator().manual_seed(1))
    out = tower(pixels)
    ref_model = Dinov2Model.from_pretrained(dinov2_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = ref_model(pixels, output_hidden_states=True, output_attentions=True)
    assert out.features.shape == (2, 16, 32) and out.cls_attn.shape == (2, 16)
    torch.testing.assert_close(out.features, ref.hidden_states[-2][:, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.cls_attn, ref.attentions[-2].mean(dim=1)[:, 0, 1:], atol=1e-6, rtol=1e-5)
    assert (out.cls_attn.sum(-1) < 1).all()


def test_layers_after_the_selected_one_never_run(dinov2_dir):
    tower = build_vision_tower(Cfg(), dinov2_dir)
    calls = []
    handles = [layer.register_forward_hook(lambda m, i, o, n=n: calls.append(n))
               for n, layer in enumerate(tower.vision_tower.encoder.layer)]
    tower(torch.zeros(1, 3, INPUT, INPUT))
    for h in handles:
        h.remove()
    assert calls == [0, 1]


def test_input_side_must_be_a_multiple_of_the_patch(dinov2_dir):
    from transformers import Dinov2Model

    with pytest.raises(ValueError, match="not a multiple"):
        Dinov2VisionTower(Dinov2Model.from_pretrained(dinov2_dir), input_size=30)


def test_image_processor_is_pil_with_imagenet_statistics(dinov2_dir):
    from llava.mm_utils import load_image_processor
    from tests.conftest import pil_image

    processor = load_image_processor(dinov2_dir)
    assert getattr(processor, "backend", None) == "pil"
    image = pil_image(64, 48)
    pixels = processor.preprocess(image, return_tensors="pt")["pixel_values"]
    # by hand: shortest edge to 28 with PIL's bicubic (64x48 -> 37x28), centre crop 28x28 (columns 4..31),
    # then (x / 255 - ImageNet mean) / ImageNet std
    resized = np.asarray(image.resize((37, 28), Image.Resampling.BICUBIC), dtype=np.float64)[:, 4:32] / 255
    expected = (resized - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    torch.testing.assert_close(pixels[0], torch.from_numpy(expected).permute(2, 0, 1).float(), atol=1e-5, rtol=0)
