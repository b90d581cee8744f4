"""Attention shift / dispersion analyses on the tiny LLaVA-1.5 (16 patches = 4x4 grid, 2 LLM layers).

The reference path is independent of the hooks: the model loaded with eager attention, `output_attentions=True`,
and the statistics written out column by column from the full maps.
"""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from llava.analysis.capture import FROM_IMAGE, LAST, ImageSpan, capture_image_attention
from llava.analysis.statistics import cumulative_shares, shift_statistics, tail_share, top_share
from llava.eval import analyze_attn_dispersion, analyze_attn_shift
from llava.inference import build_prompt
from llava.mm_utils import load_image, process_images, tokenizer_image_token
from tests.conftest import pil_image
from tests.oracle_llava import cls_attention_and_features, eager_clip

# (id, question, where the conversation puts <image>): the analysis always puts the image first.
SAMPLES = [
    ("a1", "what is in this image?", "first"),
    (7, "describe the picture with detail", "last"),
    ("c3", "is there a red cat or a blue dog on the street?", "first"),
]


def write_question_file(folder, samples, missing=()):
    images = folder / "train"
    (images / "coco").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (sid, question, where) in enumerate(samples):
        rel = f"coco/{i}.png"
        if sid not in missing:
            pil_image(40 + 9 * i, 28 + 6 * i, seed=i).save(images / rel)
        value = f"<image>\n{question}" if where == "first" else f"{question}\n<image>"
        turns = [{"from": "human", "value": value}, {"from": "gpt", "value": "a reply"}]
        lines.append(json.dumps({"id": sid, "image": rel, "conversations": turns}))
    qfile = folder / "mix.jsonl"
    qfile.write_text("\n".join(lines) + "\n")
    return qfile, images


def cli(v15_dir, qfile, images, out, *extra):
    return ["--model-path", str(v15_dir), "--question-file", str(qfile), "--image-folder", str(images),
            "--output-folder", str(out), "--temperature", "0", "--conv-mode", "vicuna_v1", "--device", "cpu", *extra]


def pixels_of(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_question_file(tmp_path_factory.mktemp("analysis_data"), SAMPLES)


@pytest.fixture(scope="module")
def runs(v15_dir, data, tmp_path_factory):
    """One shift run and one dispersion run over SAMPLES (SDPA model, hooks)."""
    qfile, images = data
    out = tmp_path_factory.mktemp("analysis_out")
    shift = analyze_attn_shift.main(cli(v15_dir, qfile, images, out / "shift", "--visual-token-num", "16"))
    dispersion = analyze_attn_dispersion.main(cli(v15_dir, qfile, images, out / "dispersion"))
    return {"shift": (out / "shift", shift), "dispersion": (out / "dispersion", dispersion)}


@pytest.fixture(scope="module")
def reference(v15_dir, clip_dir, data):
    """Per sample, from the eager model's full attention maps: image span, maps (layers, H, S, S); the [CLS]
    attention from transformers' eager CLIPVisionModel read from the tower's own directory (its layer -2 maps)."""
    from llava.model.builder import load_pretrained_model

    qfile, images = data
    tokenizer, model, processor, _ = load_pretrained_model(str(v15_dir), None, None, device="cpu",
                                                           attn_implementation="eager")
    tower = eager_clip(clip_dir)
    out = []
    for i, (_, question, where) in enumerate(SAMPLES):
        query = question + ("\n" if where == "last" else "")  # the original keeps the newline before <image>
        ids = tokenizer_image_token(build_prompt(query, 1, "vicuna_v1"), tokenizer, return_tensors="pt")
        image = load_image(images / f"coco/{i}.png")
        pixels = process_images([image], processor, model.config)
        with torch.no_grad():
            mm = model.prepare_multimodal_inputs(ids[None], None, pixels, [image.size])
            maps = model(inputs_embeds=mm.inputs_embeds, attention_mask=mm.attention_mask,
                         output_attentions=True).attentions
        start = int((ids == -200).nonzero()[0])
        out.append({"cls": cls_attention_and_features(tower, pixels)[0][0], "start": start,
                    "stop": start + mm.v_token_num[0],
                    "maps": torch.stack([a[0] for a in maps]), "inputs": mm})
    return out


def reference_shift(maps, start, stop):
    """Column by column from the head-mean maps: the mean over the rows that can see each image token."""
    layers = []
    for m in maps.mean(dim=1):  # (S, S) per layer
        s = m.shape[0]
        cols = range(start, stop)
        layers.append({
            "all": torch.stack([m[c:, c].mean() for c in cols]),
            "image": torch.stack([m[c:stop, c].mean() for c in cols]),
            "text": torch.stack([m[stop:s - 1, c].mean() for c in cols]),
            "last": m[s - 1, start:stop],
        })
    return {k: torch.stack([layer[k] for layer in layers]) for k in ("all", "image", "text", "last")}


def test_shift_statistics_by_hand():
    """2 image tokens, 2 text tokens after them (the last is the prompt's last token). Rows: queries from the first
    image token on; columns: image tokens. Image token 0 is seen by 4 rows, image token 1 only by the 3 rows from
    itself on (causal mask), so their sums are divided by 4 and 3:
      all   (1.0 + 0.2 + 0.1 + 0.4) / 4 = 0.425      (0.5 + 0.3 + 0.2) / 3 = 1/3
      image (1.0 + 0.2) / 2 = 0.6                     0.5 / 1 = 0.5
      text  0.1 / 1 (row 2; the last row is apart)    0.3 / 1
      last  0.4                                       0.2"""
    blocks = torch.tensor([[1.0, 0.0], [0.2, 0.5], [0.1, 0.3], [0.4, 0.2]], dtype=torch.float64)
    stats = shift_statistics(blocks, num_image=2)
    expected = {"all": [0.425, 1 / 3], "image": [0.6, 0.5], "text": [0.1, 0.3], "last": [0.4, 0.2]}
    for kind, values in expected.items():
        assert stats[kind].tolist() == pytest.approx(values), kind
    assert shift_statistics(blocks[[0, 1, 3]], num_image=2)["text"] is None  # no text row but the last one


def test_dispersion_cdf_and_shares_by_hand():
    """4 tokens, 2 samples (the first not normalised: shares divide by the row's sum).
    sample 1: 0.2 0.8 0.4 0.6 -> sorted shares 0.4 0.3 0.2 0.1 -> cumulated 0.4 0.7 0.9 1.0
    sample 2: 0.5 0 0.25 0.25 -> sorted shares 0.5 0.25 0.25 0 -> cumulated 0.5 0.75 1.0 1.0
    mean, with the share of the top 0 tokens first: 0, 0.45, 0.725, 0.95, 1."""
    scores = torch.tensor([[0.2, 0.8, 0.4, 0.6], [0.5, 0.0, 0.25, 0.25]])
    assert cumulative_shares(scores).tolist() == pytest.approx([0.0, 0.45, 0.725, 0.95, 1.0])
    assert top_share(scores, 0.25) == pytest.approx(0.45)  # the top 1 of 4 tokens
    assert top_share(scores, 0.5) == pytest.approx(0.725)
    assert top_share(scores, 0.1) == pytest.approx(0.45)  # rounds to 0 tokens: at least 1
    # tail: the last positions in raster order, not the largest: 0.6 / 2.0 and 0.25 / 1.0
    assert tail_share(scores, 0.25).tolist() == pytest.approx([0.3, 0.25])


def test_hooked_rows_equal_full_attention_maps(v15_dir, reference, load):
    _, model, _, _ = load(v15_dir)  # SDPA
    assert model.config._attn_implementation == "sdpa"
    for ref in reference:
        mm, span = ref["inputs"], ImageSpan(ref["start"], ref["stop"])
        full = ref["maps"].mean(dim=1)  # (layers, S, S)
        with torch.no_grad():
            rows = capture_image_attention(model.get_model(), mm.inputs_embeds, mm.attention_mask, span, [0, 1],
                                           FROM_IMAGE, chunk_rows=7)  # chunks that do not divide the rows
            last = capture_image_attention(model.get_model(), mm.inputs_embeds, mm.attention_mask, span, [1], LAST)
        for layer in (0, 1):
            torch.testing.assert_close(rows[layer], full[layer, span.start:, span.start:span.stop],
                                       rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(last[1][0], full[1, -1, span.start:span.stop], rtol=1e-4, atol=1e-6)
        with torch.no_grad():  # the forward stops after layer 1: its hooks still give the right row
            first = capture_image_attention(model.get_model(), mm.inputs_embeds, mm.attention_mask, span, [0], LAST)
        torch.testing.assert_close(first[0][0], full[0, -1, span.start:span.stop], rtol=1e-4, atol=1e-6)
    for layer in model.get_model().layers:  # no hook is left behind
        attn = layer.self_attn
        assert not (attn._forward_hooks or attn.q_proj._forward_hooks or attn.k_proj._forward_hooks)


def test_shift_statistics_equal_the_ones_from_full_maps(runs, reference):
    folder, summary = runs["shift"]
    saved = torch.load(folder / "attn_shift.pt", weights_only=True)
    per_sample = [reference_shift(r["maps"], r["start"], r["stop"]) for r in reference]
    for kind in ("all", "image", "text", "last"):
        expected = torch.stack([s[kind] for s in per_sample]).mean(dim=0)
        assert saved[kind].shape == (2, 16)
        torch.testing.assert_close(saved[kind], expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(saved["cls"], torch.stack([r["cls"] for r in reference]).mean(dim=0),
                               atol=1e-6, rtol=1e-5)
    assert saved["sample_ids"] == [s[0] for s in SAMPLES] and saved["grid"] == 4
    # Summary: share of the last 10% of positions (2 of 16 tokens) per layer, and for [CLS].
    last = torch.stack([s["last"] for s in per_sample]).mean(dim=0)
    assert summary["tail_tokens"] == 2 and summary["grid"] == [4, 4]
    assert summary["tail_share_per_layer"]["last"] == pytest.approx((last[:, -2:].sum(1) / last.sum(1)).tolist(),
                                                                    rel=1e-4)
    assert summary["cls_tail_share"] == pytest.approx(float(saved["cls"][-2:].sum() / saved["cls"].sum()), rel=1e-4)


def test_dispersion_statistics_equal_the_ones_from_full_maps(runs, reference):
    folder, summary = runs["dispersion"]
    saved = torch.load(folder / "attn_dispersion.pt", weights_only=True)
    last = torch.stack([r["maps"][1].mean(dim=0)[-1, r["start"]:r["stop"]] for r in reference])  # layer 2
    cls = torch.stack([r["cls"] for r in reference])
    torch.testing.assert_close(saved["last"], last, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(saved["cls"], cls, atol=1e-6, rtol=1e-5)
    assert saved["layer"] == 2 and summary["llm_layer"] == 2 and summary["top_tokens"] == 2

    def top2(x):
        return float((x.sort(dim=1, descending=True).values[:, :2].sum(1) / x.sum(1)).mean())

    assert summary["cls_top_share"] == pytest.approx(top2(cls), rel=1e-4)
    assert summary["last_top_share"] == pytest.approx(top2(last), rel=1e-4)


@pytest.mark.parametrize("name", ["shift", "dispersion"])
def test_figures_and_json_are_written_and_replot_reproduces_them(runs, name):
    folder, summary = runs[name]
    module = {"shift": analyze_attn_shift, "dispersion": analyze_attn_dispersion}[name]
    stem = f"attn_{name}"
    on_disk = json.loads((folder / f"{stem}_summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    expected = [f"{stem}.png"] + ([f"{stem}_tail.png", "layers/layer_1.png", "layers/layer_2.png"]
                                  if name == "shift" else [])
    assert on_disk["figures"] == expected
    before = {f: pixels_of(folder / f) for f in expected}
    for f in expected:
        os.remove(folder / f)
    os.remove(folder / f"{stem}_summary.json")

    replotted = module.main(["--output-folder", str(folder), "--replot"])  # no model
    assert replotted == summary
    for f in expected:
        np.testing.assert_array_equal(pixels_of(folder / f), before[f])


def test_missing_images_are_reported_with_their_sample_id(v15_dir, reference, tmp_path):
    samples = SAMPLES[:2] + [("gone-42", "what is this?", "first")]
    qfile, images = write_question_file(tmp_path, samples, missing={"gone-42"})
    with pytest.raises(FileNotFoundError, match=r"1 of 3 sample image\(s\) not found(.|\n)*id 'gone-42' \(line 3\)"
                                                r".*coco/2\.png(.|\n)*--skip-missing"):
        analyze_attn_dispersion.main(cli(v15_dir, qfile, images, tmp_path / "out"))
    summary = analyze_attn_dispersion.main(cli(v15_dir, qfile, images, tmp_path / "out", "--skip-missing"))
    assert summary["skipped_ids"] == ["gone-42"] and summary["num_samples"] == 2
    saved = torch.load(tmp_path / "out" / "attn_dispersion.pt", weights_only=True)  # the two others, as analysed
    expected = torch.stack([r["maps"][1].mean(dim=0)[-1, r["start"]:r["stop"]] for r in reference[:2]])
    torch.testing.assert_close(saved["last"], expected, rtol=1e-4, atol=1e-6)


def test_chunks_merge_into_the_whole_run(v15_dir, data, runs, tmp_path):
    qfile, images = data
    for k in range(2):
        chunk = ["--num-chunks", "2", "--chunk-idx", str(k)]
        done = analyze_attn_shift.main(cli(v15_dir, qfile, images, tmp_path, *chunk))
        assert done == {"chunk_stats": str(tmp_path / f"attn_shift.chunk{k}-of-2.pt")}
    assert not (tmp_path / "attn_shift.pt").exists()  # nothing merged until --replot
    merged = analyze_attn_shift.main(["--output-folder", str(tmp_path), "--replot", "--num-chunks", "2"])
    whole = torch.load(runs["shift"][0] / "attn_shift.pt", weights_only=True)
    again = torch.load(tmp_path / "attn_shift.pt", weights_only=True)
    for kind in ("cls", "all", "image", "text", "last"):
        torch.testing.assert_close(again[kind], whole[kind])
    assert again["sample_ids"] == whole["sample_ids"] and merged["num_samples"] == len(SAMPLES)


def test_anyres_checkpoints_and_pruning_are_refused(v15_dir, v16_dir, data, tmp_path):
    qfile, images = data
    with pytest.raises(NotImplementedError, match="LLaVA-1.6 \\(anyres\\)"):
        analyze_attn_shift.main(cli(v16_dir, qfile, images, tmp_path))
    with pytest.raises(ValueError, match="need all 16 visual tokens"):
        analyze_attn_shift.main(cli(v15_dir, qfile, images, tmp_path, "--visual-token-num", "8"))
    with pytest.raises(ValueError, match="--layer 3 is out of range"):
        analyze_attn_dispersion.main(cli(v15_dir, qfile, images, tmp_path, "--layer", "3"))


def test_shell_script_runs_the_analysis(v15_dir, data, reference, tmp_path):
    import subprocess
    import sys

    qfile, images = data
    env = dict(os.environ, MODEL_PATH=str(v15_dir), QUESTION_FILE=str(qfile), IMAGE_FOLDER=str(images),
               OUT=str(tmp_path / "out"), PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(["bash", "scripts/analyze_attn_dispersion.sh", "--visual-token-num", "16", "--device", "cpu"],
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    last = torch.stack([r["maps"][1].mean(dim=0)[-1, r["start"]:r["stop"]] for r in reference])  # layer 2
    cls = torch.stack([r["cls"] for r in reference])

    def top2(x):  # mean share of the 2 largest of 16 (10%)
        return float((x.sort(dim=1, descending=True).values[:, :2].sum(1) / x.sum(1)).mean())

    assert (f"[attn_dispersion] 3 samples: the top 10% of image tokens (2 of 16) hold {top2(cls):.1%} of [CLS] "
            f"attention vs {top2(last):.1%} of the last token's attention at LLM layer 2") in done.stdout
    assert {"attn_dispersion.png", "attn_dispersion.pt", "attn_dispersion_summary.json"} <= set(
        os.listdir(tmp_path / "out"))
