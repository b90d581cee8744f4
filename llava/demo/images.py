"""The demo's images: `--image` with `--query`, else scikit-image's astronaut (random weights) or chelsea plus an
easy-vqa test image (the tiny real model), each with its question and the PNG it is drawn into."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from llava.mm_utils import load_image

DEFAULT_QUERY = "What is in this image?"
PHOTO_QUERY = "What color is the cat?"  # about scikit-image's chelsea, for the tiny real model
EASYVQA_IMAGE, EASYVQA_QUERY, EASYVQA_ANSWER = 0, "what is the red shape?", "triangle"  # easy-vqa test image 0


@dataclass
class DemoImage:
    image: Image.Image
    label: str
    query: str
    output: Path  # the PNG its figure goes to
    expected: str | None = None  # the ground-truth answer, when known (easy-vqa)


def default_image(name: str = "astronaut") -> Image.Image:
    """A real photo that scikit-image ships (astronaut, chelsea, coffee, ...)."""
    try:
        from skimage import data  # optional extra (`.[demo]`): only the default images need it
    except ImportError:
        raise ImportError(f"the default image is scikit-image's {name}: `pip install scikit-image`, or pass "
                          "--image PATH") from None
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def easyvqa_image(image_id: int = EASYVQA_IMAGE) -> Image.Image:
    """An easy-vqa test image (64 x 64), from the `easy-vqa` package."""
    try:
        import easy_vqa  # optional extra (`.[tiny]`): only the tiny real model's second image needs it
    except ImportError:
        raise ImportError('the easy-vqa image needs the package easy-vqa: pip install -e ".[tiny]"') from None
    return load_image(easy_vqa.get_test_image_paths()[image_id])


def demo_images(args, real_model: bool) -> list[DemoImage]:
    """--image/--query, else the defaults: the astronaut (random weights), or chelsea + an easy-vqa test image."""
    output = Path(args.output)
    if args.image:
        return [DemoImage(load_image(args.image), args.image, args.query or DEFAULT_QUERY, output)]
    if not real_model:
        return [DemoImage(default_image(), "scikit-image astronaut", args.query or DEFAULT_QUERY, output)]
    return [
        DemoImage(default_image("chelsea"), "scikit-image chelsea", args.query or PHOTO_QUERY, output),
        DemoImage(easyvqa_image(), f"easy-vqa test image {EASYVQA_IMAGE}", EASYVQA_QUERY,
                  output.with_name(f"{output.stem}_easyvqa{output.suffix}"), EASYVQA_ANSWER),
    ]
