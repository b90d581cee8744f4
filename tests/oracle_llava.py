"""FasterVLM on LLaVA-1.5 written out with transformers' own classes: an oracle for the end-to-end tests.

The original algorithm (Theia-4869/FasterVLM, llava/model/llava_arch.py: `encode_images` and
`prepare_inputs_labels_for_multimodal`): per image, the head-mean [CLS] attention row of the selected vision layer
ranks the patches; the top `k` go into a boolean index mask, so they are read back in raster order; their projected
features replace the image placeholder, images in placeholder order. Here every step runs in transformers'
`LlavaForConditionalGeneration` with eager attention: the CLIP tower's own attention maps (`output_attentions=True`)
and hidden states, its projector, token embeddings, decoder and lm_head, and a plain greedy loop without a cache.
Nothing in llava.model runs (only the weights are converted), so a bug in our tower, selection, splice or
generation code shows up as a difference.
"""

from __future__ import annotations

from pathlib import Path

import torch

from llava.constants import IMAGE_TOKEN_INDEX
from tests.hf_helpers import hf_model

SELECT_LAYER = -2  # mm_vision_select_layer of every LLaVA-1.5 checkpoint (and of the tiny ones)


def eager_llava(ckpt_dir, clip_dir):
    """(transformers' LlavaForConditionalGeneration with the checkpoint's weights, eager attention; its vocab size
    without the extra image-token row)."""
    model, image_token_id = hf_model("llava", ckpt_dir, clip_dir, attn_implementation="eager")
    return model, image_token_id


def eager_clip(clip_dir):
    """transformers' CLIPVisionModel read by transformers itself from a CLIP directory (openai layout), eager."""
    from transformers import CLIPVisionModel

    return CLIPVisionModel.from_pretrained(str(clip_dir), attn_implementation="eager").eval()


@torch.no_grad()
def cls_attention_and_features(tower, pixels: torch.Tensor):
    """tower: an eager CLIPVisionModel (`eager_clip`, or `hf.model.vision_tower`); pixels (N, 3, S, S) ->
    [CLS] attention (N, P): head mean of the selected layer's [CLS] query row over the patch columns;
    patch features (N, P, C): that layer's output without [CLS]."""
    out = tower(pixels, output_attentions=True, output_hidden_states=True)
    return out.attentions[SELECT_LAYER].mean(dim=1)[:, 0, 1:], out.hidden_states[SELECT_LAYER][:, 1:]


def kept_positions(cls_attn: torch.Tensor, k: int) -> torch.Tensor:
    """(N, P) scores -> (N, k) kept patch positions, as the original builds them: top-k scattered into a mask."""
    mask = torch.zeros_like(cls_attn, dtype=torch.bool)
    mask.scatter_(1, cls_attn.topk(k, dim=1).indices, True)
    return torch.stack([row.nonzero().flatten() for row in mask])


@torch.no_grad()
def pruned_embeds(hf, ids: torch.Tensor, pixels: torch.Tensor, k: int) -> torch.Tensor:
    """ids (1, L) holding one IMAGE_TOKEN_INDEX per image, pixels (N, 3, S, S) in placeholder order ->
    the LLM's input embeddings (1, L - N + N * k, D)."""
    cls_attn, feats = cls_attention_and_features(hf.model.vision_tower, pixels)
    keep = kept_positions(cls_attn, k)
    images = hf.model.multi_modal_projector(torch.stack([f[i] for f, i in zip(feats, keep)]))  # (N, k, D)
    spots = (ids[0] == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
    if len(spots) != len(images):
        raise ValueError(f"oracle: {len(spots)} placeholders for {len(images)} images")
    embed = hf.get_input_embeddings()
    pieces, start = [], 0
    for image, spot in zip(images, spots):
        pieces += [embed(ids[0, start:spot]), image]
        start = spot + 1
    pieces.append(embed(ids[0, start:]))
    return torch.cat(pieces)[None]


@torch.no_grad()
def logits_from_embeds(hf, embeds: torch.Tensor, vocab: int) -> torch.Tensor:
    """(1, S, D) -> (1, S, vocab): the decoder and lm_head, without transformers' extra image-token row."""
    hidden = hf.model.language_model(inputs_embeds=embeds).last_hidden_state
    return hf.lm_head(hidden)[..., :vocab]


@torch.no_grad()
def greedy_tokens(hf, embeds: torch.Tensor, vocab: int, max_new_tokens: int, eos_token_id: int) -> list[int]:
    """Greedy decoding by re-running the whole sequence each step (no cache): the new token ids, eos included."""
    embed = hf.get_input_embeddings()
    tokens = []
    for _ in range(max_new_tokens):
        nxt = int(logits_from_embeds(hf, embeds, vocab)[0, -1].argmax())
        tokens.append(nxt)
        if nxt == eos_token_id:
            break
        embeds = torch.cat([embeds, embed(torch.tensor([[nxt]]))], dim=1)
    return tokens


def vicuna_v1_prompt(question: str, n_images: int = 1) -> str:
    """LLaVA's `vicuna_v1` conversation (llava/conversation.py in haotian-liu/LLaVA) with the images first, written
    out by hand: system line, `USER: <image>\n...<question> ASSISTANT:`."""
    system = ("A chat between a curious user and an artificial intelligence assistant. "
              "The assistant gives helpful, detailed, and polite answers to the user's questions.")
    return f"{system} USER: " + "<image>\n" * n_images + f"{question} ASSISTANT:"


def sentencepiece_decode(ckpt_dir):
    """The original stack's decoding (transformers 4.3x's slow LlamaTokenizer is `sentencepiece` itself): token ids
    -> text, control tokens (bos / eos) dropped. Byte-fallback pieces are decoded as SentencePiece does, one invalid
    byte at a time, which transformers 5's fast decoder does not do."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(Path(ckpt_dir) / "tokenizer.model"))
    return lambda tokens: processor.decode(list(tokens))


def fastervlm_answer(hf, vocab: int, decode, ids: torch.Tensor, pixels: torch.Tensor, k: int, max_new_tokens: int,
                     eos_token_id: int = 2) -> str:
    """The oracle's greedy answer text (stripped, as the eval runner writes it); `decode` from
    `sentencepiece_decode`."""
    tokens = greedy_tokens(hf, pruned_embeds(hf, ids, pixels, k), vocab, max_new_tokens, eos_token_id)
    return decode(tokens).strip()
