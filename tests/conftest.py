import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tok_dir(tiny_dir):
    from tests.helpers_tokenizer import make_llama_tokenizer_dir

    return make_llama_tokenizer_dir(tiny_dir / "tokenizer")


@pytest.fixture(scope="session")
def clip_dir(tiny_dir):
    from tests.tiny_checkpoints import make_clip_dir

    return make_clip_dir(tiny_dir / "clip-vit-tiny")


@pytest.fixture(scope="session")
def v15_dir(tiny_dir, clip_dir, tok_dir):
    from tests.tiny_checkpoints import make_llava_dir

    return make_llava_dir(tiny_dir / "llava-v1.5-tiny", "v1.5", clip_dir, tok_dir)


@pytest.fixture(scope="session")
def v16_dir(tiny_dir, clip_dir, tok_dir):
    from tests.tiny_checkpoints import make_llava_dir

    return make_llava_dir(tiny_dir / "llava-v1.6-tiny", "v1.6", clip_dir, tok_dir)


@pytest.fixture
def load():
    """load_pretrained_model on CPU in float32."""
    from llava.model.builder import load_pretrained_model

    def _load(path, **kw):
        kw.setdefault("device", "cpu")
        return load_pretrained_model(str(path), None, None, **kw)

    return _load


def pil_image(w: int, h: int, seed: int = 0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
