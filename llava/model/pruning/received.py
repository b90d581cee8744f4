"""Attention received: keep the visual tokens that the tower's own tokens attend to most, for towers without [CLS].

Issue #16 (scores for towers without a [CLS] token): at a chosen tower layer, each patch token j gets the mean, over
every head and every query token i of its attention segment, of the softmax weight i pays j (column means of the
head-averaged attention map). The tower computes it blockwise (`llava.model.attention_rows.received_attention`) and
hands it over as `TowerOutput.received` (N, P); this selector keeps the `budget` patches of each crop with the highest
value, in raster order. A [CLS]-free counterpart of FasterVLM's [CLS] row: instead of one summary query, every query
votes. The same column-mean score is what VisPruner and VisionZip fall back to on towers whose [CLS] is missing (see
the report in tests/test_received.py's module docstring for what their public code does).
"""

from __future__ import annotations

import torch


def attention_received(features: torch.Tensor, cls_attn: torch.Tensor, budget: int, seed: int = 0, *,
                       received: torch.Tensor) -> torch.Tensor:
    """features (N, P, C), cls_attn (ignored), received (N, P) -> kept indices (N, budget), ascending per crop."""
    p = received.shape[1]
    if not 0 <= budget <= p:
        raise ValueError(f"attention_received (llava/model/pruning/received.py): budget {budget} is not between 0 "
                         f"and the {p} patches of a crop")
    keep = received.float().topk(budget, dim=-1).indices  # (N, k), score order
    return keep.sort(dim=-1).values


attention_received.needs = ("received",)  # the tower output the pipeline passes (TowerOutput.received)
attention_received.needs_cls = False
