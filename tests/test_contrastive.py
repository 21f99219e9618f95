"""The supervised contrastive loss, alone and inside real training steps of the tiny base."""

from __future__ import annotations

import math

import numpy as np
import torch

from tuneloop.retrain.contrastive import supcon_loss
from tuneloop.retrain.tiny import keyword_sentiment
from tuneloop.retrain.trainer import train

LABELS = ["negative", "neutral", "positive"]


def _by_definition(emb: torch.Tensor, labels: list[int], temperature: float) -> float:
    """SupCon written out anchor by anchor, positive by positive."""
    per_anchor = []
    for i, yi in enumerate(labels):
        positives = [j for j, yj in enumerate(labels) if j != i and yj == yi]
        if not positives:
            continue
        sims = {k: float(emb[i] @ emb[k]) / temperature for k in range(len(labels)) if k != i}
        log_norm = math.log(sum(math.exp(s) for s in sims.values()))
        per_anchor.append(-sum(sims[j] - log_norm for j in positives) / len(positives))
    return sum(per_anchor) / len(per_anchor)


def test_supcon_matches_its_definition_and_rewards_clusters():
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(12, 6, generator=gen), dim=1)
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 1]
    y = torch.tensor(labels)
    assert math.isclose(supcon_loss(emb, y, 0.1).item(), _by_definition(emb, labels, 0.1), rel_tol=1e-5)
    centres = torch.nn.functional.normalize(torch.randn(3, 6, generator=gen), dim=1)
    clustered = torch.nn.functional.normalize(centres[y] + 0.05 * torch.randn(12, 6, generator=gen), dim=1)
    assert supcon_loss(clustered, y, 0.1) < supcon_loss(emb, y, 0.1)
    alone = emb[:3].clone().requires_grad_(True)  # three rows, three labels: no positive pair
    loss = supcon_loss(alone, torch.tensor([0, 1, 2]), 0.1)
    loss.backward()
    assert loss.item() == 0.0 and alone.grad is not None and not alone.grad.any()


def test_contrastive_training_pulls_same_label_texts_together(sentiment_base, sentiment_settings,
                                                               sentiment_version):
    s = sentiment_settings.model_copy(update={"contrastive_weight": 1.0, "warm_start_head": False, "epochs": 3,
                                              "patience": 3, "learning_rate": 1e-2})
    r = train(keyword_sentiment(240), LABELS, s, progress=False)
    per_epoch = [h["train_contrastive_loss"] for h in r.history]
    assert per_epoch[-1] < per_epoch[0]
    held = keyword_sentiment(90, seed=3)
    y = torch.tensor([LABELS.index(v) for v in held["label"]])
    served = r.classifier.predict(held["text"].tolist())
    assert served.embeddings.shape == (90, r.classifier.dim)
    assert np.allclose(np.linalg.norm(served.embeddings, axis=1), 1.0, atol=1e-4)  # still drift's embedding
    base = torch.nn.functional.normalize(torch.as_tensor(r.classifier.base_pooled(held["text"].tolist())), dim=1)
    tuned = torch.as_tensor(served.embeddings)
    assert supcon_loss(tuned, y, 0.1) < supcon_loss(base, y, 0.1) - 0.3  # on texts it never trained on
    plain = train(keyword_sentiment(240), LABELS, s.model_copy(update={"contrastive_weight": 0.0}), progress=False)
    assert all(h["train_contrastive_loss"] is None for h in plain.history)
    continued = train(keyword_sentiment(48, seed=7), None, s.model_copy(update={"epochs": 1}),
                      init_from=sentiment_version, progress=False)  # incremental retraining with the loss on
    assert continued.classifier.labels == LABELS and continued.history[-1]["train_contrastive_loss"] > 0
