"""Behaviour is unchanged by refactoring: every case of `tests/golden_cases.py`, replayed on today's code, gives what
the code before the #14 redesign gave (stored in tests/golden/outputs.pt, recorded at commit 8e45172).

Integers (kept patch indices, generated ids, visual-token counts, refusals) must be equal. Floats (pixels, [CLS]
attention, the projector's input, last-position logits) must be equal too when FASTERVLM_GOLDEN_EXACT=1 (also the
sha256 of every logit's bytes: bit-identical); otherwise within 1e-5, so a CPU with other vector units still passes.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.golden_cases import GOLDEN_FILE, cases, run_all

EXACT = os.environ.get("FASTERVLM_GOLDEN_EXACT") == "1"
CASE_NAMES = [name for name, _ in cases()]


@pytest.fixture(scope="module")
def stored():
    return torch.load(GOLDEN_FILE, weights_only=False)


@pytest.fixture(scope="module")
def replayed(stored, tmp_path_factory):
    return run_all(tmp_path_factory.mktemp("golden"), stored)


def same_floats(actual, expected, what: str) -> None:
    if EXACT:
        assert torch.equal(actual, expected), f"{what} differs (bit-exact check)"
    else:
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5, msg=lambda m: f"{what}: {m}")


def test_every_case_is_stored(stored):
    assert sorted(stored) == sorted(CASE_NAMES)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_case_equals_the_stored_output(stored, replayed, name):
    expected, actual = stored[name], replayed[name]
    assert ("error" in actual) == ("error" in expected), actual.get("error", expected.get("error"))
    if "error" in expected:
        assert actual["error"] == expected["error"]
        return
    if "pixels" in expected:
        for got, want in zip(_tensors(actual["pixels"]), _tensors(expected["pixels"]), strict=True):
            same_floats(got, want, "process_images output")
    if "kept" in expected:
        assert torch.equal(actual["kept"], expected["kept"]), "kept patch indices differ"
    same_floats(actual["projector_input"], expected["projector_input"], "projector input")
    assert actual["logits_shape"] == expected["logits_shape"]
    same_floats(actual["logits_last"], expected["logits_last"], "last-position logits")
    if EXACT:
        assert actual["logits_sha256"] == expected["logits_sha256"], "logits are not bit-identical"
    assert torch.equal(actual["new_tokens"], expected["new_tokens"]), "generated ids differ"
    assert actual["v_token_num"] == expected["v_token_num"]
    assert len(actual["cls_attn"]) == len(expected["cls_attn"])
    for got, want in zip(actual["cls_attn"], expected["cls_attn"]):
        same_floats(got, want, "[CLS] attention")


def _tensors(pixels) -> list[torch.Tensor]:
    return list(pixels) if isinstance(pixels, (list, tuple)) else [pixels]
