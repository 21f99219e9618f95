"""Supervised contrastive loss (SupCon, Khosla et al. 2020) over a batch of sentence embeddings.

Added to cross-entropy, it pulls same-label rows of a batch together and pushes the others apart on the
unit sphere: a batch of n rows gives n x (n - 1) pair signals instead of n labels, which is what a few
hundred rows need, and it keeps the pooled embedding (the one drift reads) a sentence embedding.
"""

from __future__ import annotations

import torch


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over anchors with at least one same-label row of -mean log p(positive | anchor).

    ``embeddings``: [n, d], L2-normalised; ``labels``: [n] class indices. p is a softmax over the other
    rows' cosine similarities divided by ``temperature``. A batch in which no row shares a label with
    another gives 0 (no positive pair, nothing to learn).
    """
    n = embeddings.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    anchors = positives.any(dim=1)
    if not anchors.any():
        return embeddings.sum() * 0.0
    sim = (embeddings @ embeddings.T) / temperature
    log_prob = sim.masked_fill(self_mask, float("-inf")).log_softmax(dim=1)
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1) / positives.sum(dim=1).clamp(min=1)
    return -pos_log_prob[anchors].mean()
