"""llava.model.attention_rows against hand-computed rows and transformers' own eager attention weights.

Oracles: small cases worked out by hand (exp of logarithms, so every softmax is a ratio of integers), and
`output_attentions=True` of transformers' eager `CLIPVisionModel` ([CLS] rows) and `LlamaModel` (last-query and
causal rows with rotary embedding, grouped-query attention and left padding).
"""

import math

import pytest
import torch
import torch.nn as nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaModel

from llava.model.attention_rows import (
    QKCapture,
    attention_rows,
    causal_rows,
    cls_attention_from_qk,
    last_query_attention,
)

LN2, LN3, LN4, LN5 = (math.log(x) for x in (2, 3, 4, 5))


def test_cls_row_of_two_heads_by_hand():
    """scale 1, 2 heads of dim 2, 3 tokens. Head 0 reads the first coordinate: q = (1, 0), keys (0, ln2, ln3)
    -> exp 1, 2, 3 -> 1/6, 2/6, 3/6. Head 1 reads the second: q = (0, 1), keys (0, 0, ln4) -> 1, 1, 4 -> 1/6,
    1/6, 4/6. Head mean: 1/6, 1/4, 7/12. Only token 0's query counts (the other queries are noise)."""
    q = torch.tensor([[[1.0, 0.0, 0.0, 1.0], [9.0, -9.0, 3.0, 7.0], [-5.0, 2.0, 8.0, 1.0]]])  # (1, 3, 2 heads * 2)
    k = torch.tensor([[[0.0, 5.0, 7.0, 0.0], [LN2, -1.0, 3.0, 0.0], [LN3, 2.0, -4.0, LN4]]])
    row = cls_attention_from_qk(q, k, num_heads=2, scale=1.0)
    assert row.dtype == torch.float32
    torch.testing.assert_close(row, torch.tensor([[1 / 6, 1 / 4, 7 / 12]]), rtol=1e-6, atol=1e-7)
    # scale multiplies the logits: scale 2 squares the exps -> head 0: 1, 4, 9; head 1: 1, 1, 16
    row2 = cls_attention_from_qk(q, k, num_heads=2, scale=2.0)
    expected = (torch.tensor([1, 4, 9]) / 14 + torch.tensor([1, 1, 16]) / 18) / 2
    torch.testing.assert_close(row2, expected[None].float(), rtol=1e-6, atol=1e-7)


def test_grouped_query_heads_and_blocked_keys_by_hand():
    """2 query heads share 1 key head; key 2 is blocked. Head 0: q = (1, 0) on keys (0, ln2, ln5) -> 1, 2, (0)
    -> 1/3, 2/3, 0. Head 1: q = (0, 1) on (0, ln3, 0) -> 1, 3, (0) -> 1/4, 3/4, 0."""
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)  # (B, H, R, D)
    k = torch.tensor([[0.0, 0.0], [LN2, LN3], [LN5, 0.0]]).view(1, 1, 3, 2)  # (B, KV, L, D)
    blocked = torch.tensor([False, False, True])
    probs = attention_rows(q, k, 1.0, blocked)
    expected = torch.tensor([[[1 / 3, 2 / 3, 0.0]], [[1 / 4, 3 / 4, 0.0]]])[None]
    torch.testing.assert_close(probs, expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="3 query heads do not group evenly over 2 key heads"):
        attention_rows(torch.zeros(1, 3, 1, 2), torch.zeros(1, 2, 3, 2), 1.0)


class Attention(nn.Module):
    """Called as Llama's attention is: hidden states, then keyword position embeddings and mask."""

    def forward(self, hidden, position_embeddings=None, attention_mask=None):
        return hidden


def test_capture_removes_its_hooks_also_on_an_exception():
    q_proj, k_proj, attn = nn.Linear(4, 4), nn.Linear(4, 4), Attention()
    x, cos_sin, mask = torch.randn(1, 2, 4), (torch.ones(1, 2, 2), torch.zeros(1, 2, 2)), torch.ones(1, 1, 2, 2)
    with pytest.raises(RuntimeError, match="boom"):
        with QKCapture(q_proj, k_proj, attention=attn) as capture:
            q_proj(x), k_proj(x), attn(x, position_embeddings=cos_sin, attention_mask=mask)
            raise RuntimeError("boom")
    # kept while the block ran
    torch.testing.assert_close(capture.q, q_proj(x))
    torch.testing.assert_close(capture.k, k_proj(x))
    assert capture.position_embeddings is cos_sin and capture.attention_mask is mask
    assert not (q_proj._forward_hooks or k_proj._forward_hooks or attn._forward_pre_hooks or attn._forward_hooks)

    def stop(capture):
        raise KeyError("stop here")

    with pytest.raises(KeyError, match="stop here"):  # raised by `after`, inside the model's forward
        with QKCapture(q_proj, k_proj, attention=attn, after=stop):
            attn(x)
    assert not (attn._forward_pre_hooks or attn._forward_hooks)
    capture = QKCapture(q_proj, k_proj)
    capture.active = False
    q_proj(x)
    assert capture.q is None  # inactive: nothing kept
    capture.remove()
    assert not q_proj._forward_hooks


def test_cls_rows_equal_clip_eager_attention_weights():
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8)
    model = CLIPVisionModel._from_config(config, attn_implementation="eager").eval()
    attn = model.encoder.layers[1].self_attn
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), QKCapture(attn.q_proj, attn.k_proj) as capture:
        weights = model(pixels, output_attentions=True).attentions[1]  # (N, H, 17, 17)
    row = cls_attention_from_qk(capture.q, capture.k, attn.num_heads, attn.scale)
    torch.testing.assert_close(row, weights[:, :, 0].mean(dim=1), rtol=1e-5, atol=1e-7)


def llama(attn_implementation: str) -> LlamaModel:
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaModel._from_config(config, attn_implementation=attn_implementation).eval()
    with torch.no_grad():  # larger q/k weights: peaked rows, so a wrong key or head shows
        for layer in model.layers:
            layer.self_attn.q_proj.weight.mul_(4)
            layer.self_attn.k_proj.weight.mul_(4)
    return model


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_last_query_rows_equal_llama_eager_weights_with_rotary_gqa_and_left_padding(backend):
    """Two prompts, the shorter left-padded by 3; the model under capture runs with `backend` (its mask is additive
    for eager, boolean for SDPA), the oracle is the eager model's weights of layer 1, last query, head mean."""
    eager, model = llama("eager"), llama(backend)
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers left-padded prompts
    attn = model.layers[1].self_attn
    with torch.no_grad():
        weights = eager(ids, attention_mask=mask, position_ids=positions, output_attentions=True).attentions[1]
        with QKCapture(attn.q_proj, attn.k_proj, attention=attn) as capture:
            model(ids, attention_mask=mask, position_ids=positions)
    cos, sin = capture.position_embeddings
    row = last_query_attention(capture.q[:, -1:], capture.k, cos, sin, 4, 2, attn.scaling, capture.attention_mask)
    expected = weights[:, :, -1].mean(dim=1)  # (2, 9)
    torch.testing.assert_close(row, expected, rtol=1e-5, atol=1e-7)
    assert row[1, :3].abs().max() == 0  # padding columns get nothing
    assert not row[1, 3:].eq(row[0, 3:]).all()  # the two samples differ (no batch mix-up hidden by symmetry)


def test_causal_rows_equal_llama_eager_weights_in_chunks():
    model = llama("sdpa")
    ids = torch.randint(0, 50, (1, 11), generator=torch.Generator().manual_seed(3))
    eager = llama("eager")
    attn = model.layers[2].self_attn
    with torch.no_grad():
        weights = eager(ids, output_attentions=True).attentions[2][0].mean(dim=0)  # (11, 11)
        with QKCapture(attn.q_proj, attn.k_proj, attention=attn) as capture:
            model(ids)
    cos, sin = capture.position_embeddings
    q = capture.q.view(1, 11, 4, 8).transpose(1, 2)
    k = capture.k.view(1, 11, 2, 8).transpose(1, 2)
    rotate = torch.cat  # rotary by hand (Llama's rotate_half): (x1, x2) -> (-x2, x1)
    q = q * cos[:, None] + rotate([-q[..., 4:], q[..., :4]], dim=-1) * sin[:, None]
    k = k * cos[:, None] + rotate([-k[..., 4:], k[..., :4]], dim=-1) * sin[:, None]
    rows = torch.arange(2, 11)  # rows 2 and 3 come before some of the columns 3..6: zeros right of the row
    out = causal_rows(q, k, rows, slice(3, 7), attn.scaling, chunk_rows=4)  # chunks 4, 4, 1
    torch.testing.assert_close(out, weights[2:, 3:7], rtol=1e-5, atol=1e-7)
    assert out[0].abs().max() == 0 and out[1, 1:].abs().max() == 0
