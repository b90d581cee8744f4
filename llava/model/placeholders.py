"""Placeholder arithmetic, in one place: how many `<image>` positions each image gets in the token sequence, and
the re-padding after the sequences change length.

Our own model (one IMAGE_TOKEN_INDEX per image in the prompt):
- `count_placeholders` / `check_image_count`: one `<image>` per image;
- `splice` / `splice_labels` / `splice_batch`: each placeholder replaced by its image's visual tokens, the batch
  left-padded again (`left_pad`) into `MultimodalInputs`.
transformers' Llava models (the processor wrote one placeholder per visual token at full budget):
- `assign_images`: which sample each image belongs to, from the placeholder counts;
- `kept_placeholders` / `drop_positions`: the placeholders of pruned tokens removed, rows re-padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.pipeline import VisualTokens


@dataclass
class MultimodalInputs:
    """What the LLM gets: left-padded embeddings (B, L, D), mask (B, L), labels (B, L) or None (visual positions and
    padding are IGNORE_INDEX), per sample the visual-token count and the [CLS] attention ((crops, P)), and where the
    visual tokens sit (B, L) bool (for methods that prune inside the LLM)."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    v_token_num: list[int]
    cls_attn: list[torch.Tensor]
    visual_mask: torch.Tensor | None = None


def count_placeholders(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[int]:
    """Real (unmasked) IMAGE_TOKEN_INDEX positions per sample of ids (B, L)."""
    ids = input_ids if attention_mask is None else input_ids.masked_fill(~attention_mask.bool(), 0)
    return (ids == IMAGE_TOKEN_INDEX).sum(dim=1).tolist()


def check_image_count(placeholders: list[int], num_images: int) -> None:
    """The prompts must hold exactly one `<image>` per image: both directions are errors, said plainly."""
    total = sum(placeholders)
    if total != num_images:
        raise ValueError(
            f"the prompt(s) hold {total} <image> placeholder(s) (per sample: {placeholders}) but {num_images} "
            f"image(s) were given; put one <image> in the prompt for each image (tokenizer_image_token turns it into "
            f"IMAGE_TOKEN_INDEX={IMAGE_TOKEN_INDEX})"
        )


def splice(
    ids: torch.Tensor, embed_tokens: nn.Module, images: list[torch.Tensor]
) -> torch.Tensor:
    """One sample: text embeddings of `ids` (L,) with each IMAGE_TOKEN_INDEX replaced by the next image's tokens.

    Returns (L - len(images) + sum(n_i), D).
    """
    spots = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
    if len(spots) != len(images):
        raise ValueError(f"sample has {len(spots)} <image> placeholders but {len(images)} image(s) were assigned")
    text = embed_tokens(ids.clamp(min=0))  # (L, D); placeholder rows are replaced below
    pieces, start = [], 0
    for spot, image in zip(spots, images):
        pieces += [text[start:spot], image.to(device=text.device, dtype=text.dtype)]
        start = spot + 1
    pieces.append(text[start:])
    return torch.cat(pieces)


def splice_labels(labels: torch.Tensor, ids: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Labels (L,) aligned with `splice`'s output: IGNORE_INDEX over each image's `counts[i]` tokens."""
    spots = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
    pieces, start = [], 0
    for spot, n in zip(spots, counts):
        pieces += [labels[start:spot], labels.new_full((n,), IGNORE_INDEX)]
        start = spot + 1
    pieces.append(labels[start:])
    return torch.cat(pieces)


def left_pad(sequences: list[torch.Tensor], fill: float | int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (L_i, ...) sequences into (B, L, ...) with left padding by `fill`, and the (B, L) attention mask."""
    longest = max(s.shape[0] for s in sequences)
    first = sequences[0]
    out = first.new_full((len(sequences), longest, *first.shape[1:]), fill)
    mask = torch.zeros(len(sequences), longest, dtype=torch.long, device=first.device)
    for i, s in enumerate(sequences):
        out[i, longest - s.shape[0]:] = s
        mask[i, longest - s.shape[0]:] = 1
    return out, mask




def splice_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, visual: VisualTokens,
                 embed_tokens: nn.Module, labels: torch.Tensor | None = None) -> MultimodalInputs:
    """Token ids (B, L) with IMAGE_TOKEN_INDEX placeholders (and optional labels (B, L)) and the images' visual
    tokens, in prompt order -> MultimodalInputs (each sample's real tokens spliced, then left-padded again)."""
    placeholders = count_placeholders(input_ids, attention_mask)
    check_image_count(placeholders, len(visual.embeds))
    sequences, label_rows, visual_rows, v_counts, cls_attn, start = [], [], [], [], [], 0
    for b, n in enumerate(placeholders):
        real = slice(None) if attention_mask is None else attention_mask[b].bool()
        ids = input_ids[b][real]
        mine = slice(start, start + n)
        sequences.append(splice(ids, embed_tokens, visual.embeds[mine]))
        if labels is not None:
            label_rows.append(splice_labels(labels[b][real], ids, visual.counts[mine]))
        visual_rows.append(splice_labels(torch.zeros_like(ids), ids, visual.counts[mine]) == IGNORE_INDEX)
        v_counts.append(sum(visual.counts[mine]))
        cls_attn.append(torch.cat(visual.cls_attn[mine]) if n else visual.cls_attn[0].new_zeros(0, 0))
        start += n
    inputs_embeds, mask = left_pad(sequences)
    padded_labels = left_pad(label_rows, fill=IGNORE_INDEX)[0] if labels is not None else None
    visual_mask = left_pad(visual_rows, fill=False)[0]
    return MultimodalInputs(inputs_embeds, mask, padded_labels, v_counts, cls_attn, visual_mask)


# ---------------------------------------------------------------------------------------------------------------
# transformers' layout: one placeholder per visual token
# ---------------------------------------------------------------------------------------------------------------
def assign_images(placeholders: list[int], full: list[int]) -> list[int]:
    """The sample each image belongs to: images fill the samples' placeholders in order. placeholders: per sample,
    full: per image (its placeholders at full budget). Raises when the counts do not add up (a prompt not made by
    this model's processor, or images and prompts that do not match)."""
    owner = []
    for b, n in enumerate(placeholders):
        while n > 0 and len(owner) < len(full) and full[len(owner)] <= n:
            n -= full[len(owner)]
            owner.append(b)
        if n:
            break
    if len(owner) != len(full) or sum(placeholders) != sum(full):
        raise ValueError(
            f"the prompts hold {placeholders} image placeholder tokens per sample, but the {len(full)} image(s) need "
            f"{full} each: build the inputs with this model's processor (one <image> per image, same image sizes)"
        )
    return owner


def kept_placeholders(placeholders: torch.Tensor, owner: list[int], full: list[int], kept: list[int]) -> torch.Tensor:
    """Positions to keep (B, L) bool: all text, and of image i's `full[i]` placeholders (in the sample `owner[i]`)
    the first `kept[i]`, where its kept visual tokens go. placeholders: (B, L) bool."""
    keep = ~placeholders
    start = [0] * placeholders.shape[0]
    for i, b in enumerate(owner):
        spots = placeholders[b].nonzero().flatten()
        keep[b, spots[start[b]:start[b] + kept[i]]] = True
        start[b] += full[i]
    return keep


def drop_positions(keep: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   labels: torch.Tensor | None, pad_id: int):
    """Rows of ids / mask / labels (B, L) without the positions where `keep` is False, re-padded to one length on
    the side the input was padded on (left unless some row ends in padding). Returns (ids, mask or None, labels or
    None); the mask stays None when it was None and every row keeps as many positions."""
    rows = [keep[b] for b in range(keep.shape[0])]
    lengths = [int(r.sum()) for r in rows]
    longest = max(lengths)
    if attention_mask is None and len(set(lengths)) == 1:
        return input_ids[keep].view(len(rows), longest), None, (
            None if labels is None else labels[keep].view(len(rows), longest))
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    left = not bool((mask[:, -1] == 0).any())

    def pad(x: torch.Tensor, fill: int) -> torch.Tensor:
        out = x.new_full((len(rows), longest), fill)
        for b, (r, n) in enumerate(zip(rows, lengths)):
            if left:
                out[b, longest - n:] = x[b][r]
            else:
                out[b, :n] = x[b][r]
        return out

    return pad(input_ids, pad_id), pad(mask, 0), None if labels is None else pad(labels, IGNORE_INDEX)
