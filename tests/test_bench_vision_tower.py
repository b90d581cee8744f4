"""Smoke test of scripts/bench_vision_tower.py on the tiny config: it runs, writes its CSV and PNG, and the
tower's [CLS] attention matches the eager maps. No timing assertions."""

import csv
import importlib.util
import sys
from pathlib import Path

import torch
from transformers import CLIPVisionModel

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_vision_tower.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_vision_tower", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_vision_tower_tiny_smoke(tmp_path, capsys):
    bench = load_script()
    csv_path, png_path = tmp_path / "bench.csv", tmp_path / "bench.png"
    result = bench.main(
        ["--tiny", "--repeats", "1", "--warmup", "0", "--csv", str(csv_path), "--plot", str(png_path)]
    )

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["plain", "plain-truncated", "ours", "original"]
    assert all(float(r["median_ms"]) > 0 for r in rows)
    assert [int(r["layers_run"]) for r in rows] == [4, 3, 3, 4]
    assert float(rows[0]["ratio_vs_plain"]) == 1.0 and float(rows[1]["ratio_vs_truncated"]) == 1.0

    assert png_path.exists() and png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # correctness columns: reported both in the returned dict and in the CSV's "ours" row
    assert result["cls_attn_max_abs_diff"] < 1e-5
    assert float(rows[2]["cls_attn_max_abs_diff_vs_original"]) < 1e-5
    assert result["topk_identical"] and rows[2]["topk_identical_vs_original"] == "True"
    assert result["topk_k"] == 58
    assert all(float(r["features_max_abs_diff_vs_plain"]) < 1e-4 for r in rows)

    out = capsys.readouterr().out
    assert "(c) ours" in out and "top-58 sets identical: True" in out


def test_variants_equal_a_separate_eager_clip():
    """The CSV's correctness columns are the script's own comparisons; here every variant is checked against a
    separate transformers CLIPVisionModel (eager, output_attentions) holding the same weights: features of layer
    -2 for all four, and the head-mean [CLS] row of layer -2's maps for the two that report it."""
    bench = load_script()
    torch.manual_seed(0)
    model = CLIPVisionModel._from_config(bench.tiny_config(), attn_implementation="sdpa").eval()
    reference = CLIPVisionModel._from_config(bench.tiny_config(), attn_implementation="eager").eval()
    reference.load_state_dict(model.state_dict())
    pixels = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = reference(pixels, output_attentions=True, output_hidden_states=True)
        for variant in bench.build_variants(model):
            bench.set_attn(model, variant.attn_implementation)
            features, cls_attn = variant.fn(pixels)
            torch.testing.assert_close(features, ref.hidden_states[-2][:, 1:], atol=1e-5, rtol=1e-5)
            if variant.key in ("ours", "original"):
                torch.testing.assert_close(cls_attn, ref.attentions[-2].mean(dim=1)[:, 0, 1:], atol=1e-6, rtol=1e-5)
            else:
                assert cls_attn is None
