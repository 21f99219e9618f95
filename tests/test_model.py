"""TextClassifier: one forward pass gives labels, probabilities and the drift embedding."""

from __future__ import annotations

import numpy as np
import pytest

from tuneloop.retrain.encoder import Encoder
from tuneloop.retrain.model import Predictions, TextClassifier

TEXTS = ["i love this phone", "terrible service today", "the meeting report", "", "a " * 40 + "great"]


def test_one_forward_gives_labels_probs_confidence_and_unit_embeddings(sentiment_trained):
    clf = sentiment_trained.classifier
    pred = clf.predict(TEXTS)
    assert isinstance(pred, Predictions) and len(pred) == len(TEXTS)
    assert pred.probs.shape == (len(TEXTS), 3) and pred.probs.dtype == np.float32
    np.testing.assert_allclose(pred.probs.sum(axis=1), 1.0, atol=1e-5)
    assert pred.labels == [clf.labels[i] for i in pred.probs.argmax(axis=1)]
    np.testing.assert_allclose(pred.confidence, pred.probs.max(axis=1))
    assert pred.embeddings.shape == (len(TEXTS), clf.dim) and pred.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(pred.embeddings, axis=1), 1.0, atol=1e-5)
    assert not clf.training


def test_results_do_not_depend_on_batching_or_order(sentiment_trained):
    clf = sentiment_trained.classifier
    whole = clf.predict(TEXTS, batch_size=64)
    small = clf.predict(TEXTS, batch_size=2)  # other padding, other batch mates
    single = [clf.predict([t]) for t in TEXTS]
    np.testing.assert_allclose(small.probs, whole.probs, atol=1e-5)
    np.testing.assert_allclose(small.embeddings, whole.embeddings, atol=1e-5)
    np.testing.assert_allclose(np.vstack([p.probs for p in single]), whole.probs, atol=1e-5)


def test_embedding_is_the_encoder_embedding_before_training(sentiment_base, sentiment_settings):
    # A fresh LoRA adapter is the identity, so the pooled embedding must equal the Encoder's exactly:
    # drift computed on either side compares like with like.
    clf = TextClassifier.from_base(sentiment_base, ["a", "b"], sentiment_settings)
    expected = Encoder(sentiment_base, max_length=sentiment_settings.max_length,
                       truncation=sentiment_settings.truncation).encode(TEXTS)
    np.testing.assert_allclose(clf.predict(TEXTS).embeddings, expected, atol=1e-5)


def test_empty_input_and_bad_label_maps(sentiment_trained, sentiment_base, sentiment_settings):
    pred = sentiment_trained.classifier.predict([])
    assert pred.labels == [] and pred.probs.shape == (0, 3) and pred.embeddings.shape[0] == 0
    for labels in (["only"], ["a", "b", "a"]):
        with pytest.raises(ValueError, match="distinct labels"):
            TextClassifier.from_base(sentiment_base, labels, sentiment_settings)


def test_only_adapter_and_head_are_trainable(sentiment_base, sentiment_settings):
    clf = TextClassifier.from_base(sentiment_base, ["a", "b"], sentiment_settings)
    trainable = [n for n, p in clf.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert {t for n in trainable for t in ("query", "key", "value") if f".{t}." in n} == {"query", "key", "value"}


def test_a_saved_version_serves_the_same_tfidf_blend(sentiment_trained, sentiment_base, sentiment_settings, tmp_path):
    clf = sentiment_trained.classifier
    assert clf.sparse is not None and clf.settings.blend_tfidf == sentiment_trained.metrics["blend_tfidf"]
    assert 0 < clf.settings.blend_tfidf < 1  # keywords both models read: a tie on validation, the even blend
    written = {p.name for p in clf.save(tmp_path)}
    assert {"tfidf.json", "tfidf.safetensors"} <= written
    loaded = TextClassifier.from_dir(tmp_path, sentiment_base, clf.settings)
    np.testing.assert_allclose(loaded.predict(TEXTS).probs, clf.predict(TEXTS).probs, atol=1e-5)
    encoder_only = loaded.settings.model_copy(update={"blend_tfidf": 0.0})
    alone = TextClassifier.from_dir(tmp_path, sentiment_base, encoder_only).predict(TEXTS)
    assert not np.allclose(alone.probs, clf.predict(TEXTS).probs)  # the blend does change the served output
    np.testing.assert_allclose(alone.embeddings, clf.predict(TEXTS).embeddings, atol=1e-5)  # drift sees the encoder
