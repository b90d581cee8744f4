"""Images that used to be corrupted or to exhaust memory, and bad inputs to the CLIs and the Python API (issue 13,
items 4, 12, 13, 14, 15, 18). Every expected value is computed by hand in the test or by a small oracle written here
from upstream LLaVA's code (`expand2square` + the CLIP processor, haotian-liu/LLaVA llava/mm_utils.py)."""

import base64
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from llava.eval.questions import ImageRef
from llava.mm_utils import load_image, load_image_processor, process_images
from tests.conftest import pil_image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_BG = (122, 116, 104)  # int(x * 255) of CLIP's mean: the colour LLaVA pads with
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _raw_processor(side, mean=CLIP_MEAN):
    """A CLIP processor that only rescales (no normalisation): pixel value = colour / 255."""
    return load_image_processor({"size": {"shortest_edge": side}, "crop_size": {"height": side, "width": side},
                                 "do_normalize": False, "image_mean": list(mean)})


def _colours(pixels):
    """(3, H, W) rescaled pixels -> (H, W, 3) integer colours."""
    return (pixels.permute(1, 2, 0) * 255).round().to(torch.int64).numpy()


def _png(tmp_path, image, name="image.png", **save):
    path = tmp_path / name
    image.save(path, **save)
    return path


# --------------------------------------------------------------------------- item 4: modes that were corrupted


def test_16bit_grayscale_png_is_rescaled_not_white(tmp_path):
    # 16-bit levels -> 8 bit: v / 257 rounded (65535 / 257 = 255): 0, 25700 -> 100, 65535 -> 255, 1000 -> 3.89 -> 4,
    # 65278 -> 254 (v / 256 would give 254.99 -> 255)
    levels = np.array([[0, 25700, 65535, 1000, 65278]], dtype=np.uint16)
    path = _png(tmp_path, Image.fromarray(levels))
    with Image.open(path) as raw:
        assert raw.mode in ("I;16", "I")  # the file really is 16-bit
    image = load_image(path)
    assert image.mode == "RGB"
    assert np.asarray(image)[0].tolist() == [[0] * 3, [100] * 3, [255] * 3, [4] * 3, [254] * 3]


def test_32bit_integer_image_in_16bit_range_is_rescaled():
    levels = np.tile(np.array([0, 25700, 65535], dtype=np.int32), (3, 1))
    image = Image.fromarray(levels)  # mode "I", as some readers give 16-bit data
    assert image.mode == "I"
    out = process_images([image], _raw_processor(3), SimpleNamespace(image_aspect_ratio="square"))
    assert _colours(out[0])[0].tolist() == [[0] * 3, [100] * 3, [255] * 3]  # 3x3 at side 3: no resampling


def _rgba_cases():
    """(RGBA pixel, expected RGB on CLIP's mean colour) computed by hand: a/255 * fg + (1 - a/255) * bg."""
    return [
        ((0, 0, 0, 0), CLIP_BG),  # transparent black: the background, not black
        ((10, 20, 30, 0), CLIP_BG),
        ((200, 0, 0, 255), (200, 0, 0)),  # opaque: unchanged
        # a = 128: R 200*128/255 + 122*127/255 = 100.39 + 60.76 = 161.2; G 116*127/255 = 57.8; B 104*127/255 = 51.8
        ((200, 0, 0, 128), (161, 58, 52)),
    ]


def test_rgba_file_composites_alpha_on_the_pad_colour(tmp_path):
    cases = _rgba_cases()
    image = Image.new("RGBA", (len(cases), 1))
    image.putdata([rgba for rgba, _ in cases])
    loaded = np.asarray(load_image(_png(tmp_path, image))).astype(int)[0]
    for got, (_, want) in zip(loaded, cases):
        assert np.abs(got - np.array(want)).max() <= 1, (got, want)


def test_base64_question_image_is_converted_as_a_file(tmp_path):
    """MMBench's base64 images take the same conversion as files: alpha on the pad colour, not black."""
    cases = _rgba_cases()
    image = Image.new("RGBA", (len(cases), 1))
    image.putdata([rgba for rgba, _ in cases])
    encoded = base64.b64encode(Path(_png(tmp_path, image)).read_bytes()).decode()
    loaded = np.asarray(ImageRef(b64=encoded).load(7)).astype(int)[0]
    for got, (_, want) in zip(loaded, cases):
        assert np.abs(got - np.array(want)).max() <= 1, (got, want)


def test_process_images_composites_on_its_processors_mean():
    # mean (0.25, 0.5, 0.75) -> LLaVA's pad colour int(x * 255) = (63, 127, 191), by hand
    processor = _raw_processor(2, mean=(0.25, 0.5, 0.75))
    image = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    image.putpixel((1, 1), (9, 8, 7, 255))
    for aspect in ("pad", "square"):
        colours = _colours(process_images([image], processor, SimpleNamespace(image_aspect_ratio=aspect))[0])
        assert colours[0, 0].tolist() == [63, 127, 191] and colours[1, 1].tolist() == [9, 8, 7], aspect


def test_la_and_palette_transparency(tmp_path):
    la = Image.new("LA", (2, 1))
    la.putdata([(50, 0), (50, 255)])
    assert np.asarray(load_image(_png(tmp_path, la, "la.png")))[0].tolist() == [list(CLIP_BG), [50, 50, 50]]

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)  # index 0 black, index 1 red
    palette.putdata([0, 1])
    path = _png(tmp_path, palette, "p.png", transparency=0)  # index 0 is transparent (tRNS)
    assert np.asarray(load_image(path))[0].tolist() == [list(CLIP_BG), [255, 0, 0]]


def test_plain_modes_are_unchanged(tmp_path):
    gray = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8))
    assert np.asarray(load_image(_png(tmp_path, gray, "l.png")))[0].tolist() == [[0] * 3, [77] * 3, [255] * 3]
    rgb = pil_image(5, 4)
    assert np.array_equal(np.asarray(load_image(_png(tmp_path, rgb, "rgb.png"))), np.asarray(rgb))


# --------------------------------------------------------------------------- item 12: pad mode on extreme images


def _llava_pad_pixels(image, processor):
    """Oracle: upstream LLaVA's pad path, the full square canvas first (expand2square), then the processor."""
    fill = tuple(int(x * 255) for x in processor.image_mean)
    width, height = image.size
    if width != height:
        side = max(width, height)
        canvas = Image.new(image.mode, (side, side), fill)
        canvas.paste(image, ((side - width) // 2, (side - height) // 2))
        image = canvas
    return processor.preprocess(image, return_tensors="pt")["pixel_values"][0]


@pytest.mark.parametrize("side,size", [(32, (40, 20)), (32, (20, 50)), (32, (333, 100)), (32, (100, 333)),
                                       (32, (7, 31)), (32, (64, 63)), (32, (31, 32)), (336, (500, 375)),
                                       (336, (375, 500)), (336, (640, 97))])
def test_pad_resizes_first_with_the_same_pixels(side, size):
    processor = _raw_processor(side)
    image = pil_image(*size, seed=sum(size))
    ours = process_images([image], processor, SimpleNamespace(image_aspect_ratio="pad"))[0]
    ref = _llava_pad_pixels(image, processor)
    assert ours.shape == ref.shape == (3, side, side)
    diff = (_colours(ours) - _colours(ref)).__abs__()
    assert diff.max() <= 1, f"max difference {diff.max()} levels"  # intermediate rounding only
    assert diff.mean() < 0.05


def test_pad_keeps_the_same_tokens_on_the_tiny_model(v15_dir, load):
    _, model, processor, _ = load(v15_dir, visual_token_num=4)
    for size in [(40, 24), (24, 40), (90, 31), (13, 57)]:
        image = pil_image(*size, seed=size[0])
        ours = process_images([image], processor, model.config)
        ref = _llava_pad_pixels(image, processor)[None]
        keep = [model.visual.select(*(lambda o: (o.features, o.cls_attn))(model.visual.encode(p))).keep for p in (ours, ref)]
        assert torch.equal(keep[0], keep[1]), size


_MEMORY_PROBE = textwrap.dedent("""
    import resource, sys
    from types import SimpleNamespace
    import numpy as np
    from PIL import Image
    from llava.mm_utils import load_image_processor, process_images
    proc = load_image_processor({"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}})
    cfg = SimpleNamespace(image_aspect_ratio="pad")
    process_images([Image.new("RGB", (30, 20))], proc, cfg)  # warm up
    for arg in sys.argv[1:]:
        width, height = map(int, arg.split("x"))
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = process_images([image], proc, cfg)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(arg, "x".join(map(str, out.shape)), grown // 1024)
""")


def test_extreme_aspect_ratio_stays_small():
    """The issue's 30000 x 60 image (12.4 GB before: the full-size square canvas), and its transpose: the peak RSS
    grows by a few MB. Speed is not asserted here (a test is no benchmark). Run in a fresh process so that the peak is the call's own (Pillow's memory is invisible to
    tracemalloc)."""
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, "30000x60", "60x30000"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.strip().splitlines():
        size, shape, grown_mb = line.split()
        assert shape == "1x3x336x336", line
        assert int(grown_mb) < 64, line


def test_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    path = _png(tmp_path, pil_image(60, 60), "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 3600 px > 2 x 1000: Pillow refuses it
    with pytest.raises(ValueError, match=r"huge\.png.*3600 pixels.*MAX_IMAGE_PIXELS"):
        load_image(path)


# --------------------------------------------------------------------------- item 13: run_llava's defaults


def _spy_answer(monkeypatch):
    """Record what run_llava.main asks `answer` for (prompt, generation settings), then answer for real."""
    from llava.eval import run_llava

    calls, real = [], run_llava.answer

    def spy(model, tokenizer, processor, prompt, images, **gen):
        calls.append(SimpleNamespace(prompt=prompt, gen=gen, tokenizer=tokenizer))
        return real(model, tokenizer, processor, prompt, images, **gen)

    monkeypatch.setattr(run_llava, "answer", spy)
    return calls


def _image_file(tmp_path, name="img.png"):
    path = tmp_path / name
    pil_image(30, 20).save(path)
    return str(path)


def test_run_llava_uses_the_checkpoints_template_and_greedy(v15_dir, tmp_path, monkeypatch):
    from llava.eval import run_llava

    ckpt = tmp_path / "ckpt"
    shutil.copytree(v15_dir, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["conv_mode"] = "mistral_instruct"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    calls = _spy_answer(monkeypatch)
    run_llava.main(["--model-path", str(ckpt), "--image-file", _image_file(tmp_path), "--query", "what?",
                    "--device", "cpu", "--max_new_tokens", "2"])
    # mistral_instruct (LLAMA_2 style, no system prompt, sep ""), written out by hand
    assert calls[0].prompt == "[INST] <image>\nwhat? [/INST]"
    gen = calls[0].gen
    assert gen["do_sample"] is False and "temperature" not in gen  # greedy unless --temperature > 0
    assert gen["eos_token_id"] == calls[0].tokenizer.eos_token_id == 2
    assert [c.keywords for c in gen["stopping_criteria"]] == [["</s>"]]  # LLAMA_2's turn end


def test_stop_strings_per_template():
    from llava.conversation import conv_templates
    from llava.inference import stop_string

    # what ends an assistant turn in each template (llava/conversation.py), by hand
    expected = {"vicuna_v1": "</s>", "llava_v1": "</s>", "llava_llama_2": "</s>", "mistral_instruct": "</s>",
                "mpt": "<|im_end|>", "chatml_direct": "<|im_end|>", "smollm2_short": "<|im_end|>", "plain": "\n"}
    assert {name: stop_string(conv_templates[name]) for name in expected} == expected


def test_run_llava_stops_at_the_stop_string(v15_dir, tmp_path, monkeypatch, load):
    """Greedy output without stopping, cut by hand at the first occurrence of a stop string, equals run_llava's."""
    from llava import inference
    from llava.conversation import conv_templates
    from llava.eval import run_llava

    tok, model, proc, _ = load(v15_dir)
    image = _image_file(tmp_path)
    prompt = inference.build_prompt("what?", 1, "vicuna_v1")
    free, _, _ = inference.answer(model, tok, proc, prompt, [load_image(image)], do_sample=False, max_new_tokens=8,
                                  min_new_tokens=8)
    words = free.split()
    assert len(words) >= 3, free
    stop = words[2]  # a piece the model writes third: the template's stop string for this test
    cut = free.split(stop, 1)[0].strip()
    template = conv_templates["vicuna_v1"].copy()
    template.sep2 = stop  # the prompt is unchanged: sep2 only follows assistant turns
    monkeypatch.setitem(conv_templates, "stop_test", template)
    text = run_llava.main(["--model-path", str(v15_dir), "--image-file", image, "--query", "what?",
                           "--device", "cpu", "--max_new_tokens", "8", "--conv-mode", "stop_test"])
    assert text == cut and len(cut) < len(free)


# --------------------------------------------------------------------------- items 14, 15: one-line CLI errors


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a CLI loads a model."""
    import llava.model.builder

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    for module in ("llava.inference", "llava.model.builder"):
        monkeypatch.setattr(f"{module}.load_pretrained_model", refuse)
    return llava.model.builder


def test_run_llava_bad_conv_mode_fails_before_loading(v15_dir, tmp_path, capsys, no_model_load):
    from llava.eval import run_llava

    argv = ["--model-path", str(v15_dir), "--image-file", _image_file(tmp_path), "--query", "q", "--device", "cpu"]
    assert run_llava.cli(argv + ["--conv-mode", "vicuna"]) == 1
    _one_line_error(capsys, "'vicuna'", "vicuna_v1", "smollm2_short", "chatml_direct")


@pytest.mark.parametrize("case", ["missing image", "bad image", "zero budget", "budget too large", "bad model path",
                                  "cuda without cuda"])
def test_run_llava_expected_errors_are_one_line(v15_dir, tmp_path, capsys, case):
    from llava.eval import run_llava

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    image, model, extra, needles = _image_file(tmp_path), str(v15_dir), [], []
    if case == "missing image":
        image, needles = str(tmp_path / "nope.png"), ["nope.png", "not found"]
    elif case == "bad image":
        image, needles = str(bad), ["bad.png", "Cannot read image"]
    elif case == "zero budget":
        extra, needles = ["--visual-token-num", "0"], ["visual_token_num=0 is out of range", "at least 1"]
    elif case == "budget too large":
        extra, needles = ["--visual-token-num", "17"], ["visual_token_num=17 is out of range", "between 1 and 16"]
    elif case == "bad model path":
        model, needles = str(tmp_path / "no-model"), ["no-model", "neither a local directory"]
    else:
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        extra, needles = ["--device", "cuda"], ["--device cuda", "no CUDA device"]
    argv = ["--model-path", model, "--image-file", image, "--query", "q", *extra]
    assert run_llava.cli(argv + (["--device", "cpu"] if case != "cuda without cuda" else [])) == 1
    _one_line_error(capsys, *needles)
    with pytest.raises((OSError, ValueError)):  # --debug: the exception itself, with its traceback
        run_llava.cli(argv + ["--debug"])


def test_demo_bad_template_image_budget_fail_before_building(tmp_path, capsys):
    from llava.demo import cli as demo

    model_dir = tmp_path / "model"
    base = ["--random-weights", "--model-dir", str(model_dir), "--output", str(tmp_path / "x.png")]
    assert demo.cli(base + ["--conv-mode", "bogus"]) == 1
    _one_line_error(capsys, "'bogus'", "vicuna_v1")
    assert demo.cli(base + ["--image", str(tmp_path / "nope.png")]) == 1
    _one_line_error(capsys, "nope.png")
    assert demo.cli(base + ["--budgets", "8,half"]) == 1
    _one_line_error(capsys, "comma-separated")
    assert not model_dir.exists()  # all three failed before the model was built
    with pytest.raises(ValueError, match="bogus"):
        demo.cli(base + ["--conv-mode", "bogus", "--debug"])


def test_runner_bad_budget_template_and_paths_are_one_line(tmp_path, capsys):
    from llava.eval import run_benchmark

    base = ["--benchmark", "textvqa", "--data-root", str(tmp_path), "--model-path", str(tmp_path)]
    assert run_benchmark.cli(base + ["--visual-token-num", "0"]) == 1
    _one_line_error(capsys, "--visual-token-num 0", "positive")
    assert run_benchmark.cli(base + ["--visual-token-num", "5", "--conv-mode", "vicuna1"]) == 1
    _one_line_error(capsys, "'vicuna1'", "vicuna_v1")
    assert run_benchmark.cli(base + ["--visual-token-num", "5", "--conv-mode=llava-v1"]) == 1
    _one_line_error(capsys, "'llava-v1'")
    assert run_benchmark.cli(base + ["--visual-token-num", "5"]) == 1  # no question file under the data root
    _one_line_error(capsys, "question file not found", str(tmp_path))
    with pytest.raises(ValueError, match="positive"):
        run_benchmark.cli(base + ["--visual-token-num", "0", "--debug"])


_COMMANDS = textwrap.dedent("""
    import contextlib, io, json, runpy, sys
    results = []
    for module, *argv in json.loads(sys.argv[1]):
        sys.argv, err, code = [module, *argv], io.StringIO(), None
        with contextlib.redirect_stderr(err):
            try:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            except SystemExit as exit:
                code = exit.code
        results.append([module, code, err.getvalue()])
    print(json.dumps(results))
""")


def test_commands_exit_1_with_one_line(tmp_path):
    """The real commands (python -m ...; their `__main__` blocks, run in one fresh process to share the imports):
    exit status 1, one line on stderr, no traceback."""
    commands = [
        ["llava.eval.run_llava", "--model-path", "nowhere", "--image-file", "x.png", "--query", "q",
         "--conv-mode", "x"],
        ["llava.demo", "--random-weights", "--conv-mode", "x"],
        ["llava.eval.run_benchmark", "--benchmark", "textvqa", "--visual-token-num", "-1"],
    ] + [[entry, "--model-path", "nowhere", "--question-file", "missing.jsonl", "--answers-file", "a.jsonl"]
         for entry in ("llava.eval.model_vqa_loader", "llava.eval.model_vqa", "llava.eval.model_vqa_science",
                       "llava.eval.model_vqa_mmbench")]
    env = dict(os.environ, PYTHONPATH=REPO, HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", _COMMANDS, json.dumps(commands)], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    for module, code, err in json.loads(result.stdout.strip().splitlines()[-1]):
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (module, code, err)


# --------------------------------------------------------------------------- item 18: API mistakes, our message


def _ids(tok, question="what is in this image?", n_images=1):
    from tests.test_model import prompt_ids

    return prompt_ids(tok, question, n_images)


def test_pil_images_passed_to_generate(v15_dir, load):
    tok, model, _, _ = load(v15_dir)
    image = pil_image(32, 32)
    for images in ([image], image):
        with pytest.raises(TypeError, match=r"images are PIL images.*process_images\(images, image_processor"):
            model.generate(_ids(tok), images=images, max_new_tokens=1)
    with pytest.raises(TypeError, match="PIL"):
        model(_ids(tok), images=[image])


def test_single_pil_image_or_paths_to_process_images(v15_dir, load):
    _, model, proc, _ = load(v15_dir)
    with pytest.raises(TypeError, match=r"got a single PIL image: pass \[image\]"):
        process_images(pil_image(32, 32), proc, model.config)
    with pytest.raises(TypeError, match=r"images\[0\] is a str.*load_image\(path\)"):
        process_images(["cat.jpg"], proc, model.config)


def test_one_dimensional_ids_and_lists_of_ids(v15_dir, load):
    tok, model, proc, _ = load(v15_dir)
    pixels = process_images([pil_image(32, 32)], proc, model.config)
    ids = _ids(tok)[0]  # 1-D, as tokenizer_image_token(..., return_tensors="pt") gives it
    with pytest.raises(ValueError, match=rf"input_ids must be \(batch, length\).*1-D.*{ids.numel()}.*unsqueeze\(0\)"):
        model.generate(ids, images=pixels, max_new_tokens=1)
    with pytest.raises(ValueError, match=r"1-D.*unsqueeze\(0\)"):
        model(ids, images=pixels)
    with pytest.raises(TypeError, match=r"input_ids must be a torch.LongTensor.*got list.*return_tensors=\"pt\""):
        model.generate(ids.tolist(), images=pixels, max_new_tokens=1)
    with pytest.raises(TypeError, match=r"got list"):
        model.generate(input_ids=[ids.tolist()], images=pixels, max_new_tokens=1)
    with pytest.raises(TypeError, match=r"integer token ids.*float32"):
        model.generate(ids[None].float(), images=pixels, max_new_tokens=1)


def test_unknown_dtype_names_the_valid_ones(v15_dir, load):
    with pytest.raises(ValueError, match=r"dtype 'float17'.*float16.*bfloat16.*float32"):
        load(v15_dir, dtype="float17")
    with pytest.raises(ValueError, match=r"dtype 'nn'"):  # an attribute of torch, not a dtype
        load(v15_dir, torch_dtype="nn")


def test_nan_pixels(v15_dir, load):
    tok, model, proc, _ = load(v15_dir)
    pixels = process_images([pil_image(32, 32)], proc, model.config)
    pixels[0, 1, 3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"image 0: 1 pixel value\(s\) are NaN or infinite"):
        model.generate(_ids(tok), images=pixels, max_new_tokens=1)
    pixels[0, 1, 3, 4] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        model(_ids(tok), images=[pixels[0]])


def test_prompt_longer_than_the_context(v15_dir, load):
    tok, model, proc, _ = load(v15_dir)
    pixels = process_images([pil_image(32, 32)], proc, model.config)
    assert model.config.max_position_embeddings == 512
    long_ids = _ids(tok, "word " * 600)
    text = long_ids.shape[1] - 1  # the <image> placeholder becomes the 16 visual tokens
    with pytest.raises(ValueError, match=rf"prompt is {text + 16} tokens \({text} text \+ 16 visual\).*context of "
                                         r"512 tokens \(max_position_embeddings\)"):
        model.generate(long_ids, images=pixels, max_new_tokens=1)
    with pytest.raises(ValueError, match=r"max_position_embeddings"):
        model(long_ids, images=pixels)
    words = tok("word " * 600, return_tensors="pt").input_ids  # text only: no images
    with pytest.raises(ValueError, match=rf"prompt is {words.shape[1]} tokens \({words.shape[1]} text \+ 0 visual"):
        model.generate(words, max_new_tokens=1)
    _, n, _ = model.generate(words[:, :512], max_new_tokens=1)  # exactly the context: fits
    assert n == 0


def test_image_sizes_given_as_height_width(v16_dir, load):
    """A 96x40 image on the tiny LLaVA-1.6 grid (crop 32): the 64x32 canvas, 2 crops side by side, the fitted
    64x27 image leaves 2 black rows above and 3 below. As (40, 96) the model would read a 32x64 canvas with the
    padding in columns; the crops' pixels show it is not."""
    tok, model, proc, _ = load(v16_dir)
    image = pil_image(96, 40)
    pixels = process_images([image], proc, model.config)
    assert pixels.shape[:2] == (1, 3)  # base + 2 grid crops, whichever way round: the count cannot tell
    with pytest.raises(ValueError, match=r"image_sizes\[0\] = \(40, 96\) looks like \(height, width\).*\(96, 40\)"):
        model.generate(_ids(tok), images=pixels, image_sizes=[(40, 96)], max_new_tokens=1)
    with pytest.raises(ValueError, match=r"image_sizes has 2 entries for 1 image"):
        model.generate(_ids(tok), images=pixels, image_sizes=[(96, 40), (96, 40)], max_new_tokens=1)
    with pytest.raises(ValueError, match=r"image_sizes\[0\] must be \(width, height\).*got \(96,\)"):
        model.generate(_ids(tok), images=pixels, image_sizes=[(96,)], max_new_tokens=1)
    _, n, _ = model.generate(_ids(tok), images=pixels, image_sizes=[image.size], max_new_tokens=1)
    assert n == 3 * 16  # the right order is accepted: base + 2 crops of 16 tokens


def test_padding_bands_are_read_from_the_stitched_grid():
    """`_padding_uniform` on grids cut by hand (explicit slices, raster order): a 64x40 image centred on a 64x64
    canvas (2 x 2 crops of 32) leaves rows 0-11 and 52-63 black; a 96x20 image on a 96x32 canvas (3 x 1) rows 0-5
    and 26-31."""
    from llava.model.image_checks import _padding_uniform
    from llava.model.merge import GridLayout

    def crops(canvas, rows, cols):
        return torch.stack([canvas[:, r * 32:(r + 1) * 32, c * 32:(c + 1) * 32] for r in range(rows)
                            for c in range(cols)])

    square = torch.zeros(3, 64, 64)
    square[:, 12:52] = torch.rand(3, 40, 64) + 1
    grid = crops(square, 2, 2)
    layout = GridLayout(cols=2, rows=2, side=4)
    assert _padding_uniform(grid, layout, (64, 40)) is True
    assert _padding_uniform(grid, layout, (40, 64)) is False  # bands in columns would cut through the image
    assert _padding_uniform(grid, layout, (64, 63)) is None  # a 1-px pad leaves no band to look at

    wide = torch.zeros(3, 32, 96)
    wide[:, 6:26] = torch.rand(3, 20, 96) + 1
    layout = GridLayout(cols=3, rows=1, side=4)
    assert _padding_uniform(crops(wide, 1, 3), layout, (96, 20)) is True
    wide[:, 31, 70] = 5.0  # one pixel in the bottom band, in the third crop
    assert _padding_uniform(crops(wide, 1, 3), layout, (96, 20)) is False
