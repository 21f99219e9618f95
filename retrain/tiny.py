"""Tiny random encoders saved like real bases, so tests train real models in seconds without downloads.

The default is a BERT with the same tokenizer class and files on disk as the packaged all-MiniLM-L6-v2;
any other supported family (DistilBERT, RoBERTa, XLM-R, DeBERTa-v2, ModernBERT, MPNet) is built the same
way from its own config and tokenizer class. Everything that loads a base (``resolve_base`` +
``AutoModel``/``AutoTokenizer``) works unchanged on them; only the sizes differ.
"""

from __future__ import annotations

import random
import string
from pathlib import Path

import pandas as pd

# Enough everyday English that short test sentences mostly tokenize to whole words; anything else
# still tokenizes, letter by letter, through the "##x" continuation pieces.
_COMMON_TEXT = """
the a an and or but not no yes is are was were be been being am do does did have has had will would
can could should may might must shall i you he she it we they me him her us them my your his its our
their this that these those there here what which who whom whose when where why how all any each few
more most other some such only own same so than too very just also now then again once of in on at
by for with about against between into through during before after above below to from up down out
off over under further good bad great terrible awful excellent love hate like dislike happy sad
angry glad nice poor best worst amazing horrible wonderful fine okay ok well really quite day time
year people way thing man woman child world life hand part place case week company system program
question work government number night point home water room mother area money story fact month lot
right study book eye job word business issue side kind head house service friend father power hour
game line end member law car city community name president team minute idea kid body information
back parent face others level office door health person art war history party result change morning
reason research girl guy moment air teacher force education food movie film music phone product price
new old big small long short high low early late young important public real sure free full easy hard
"""
COMMON_WORDS = _COMMON_TEXT.split()


POSITIVE_WORDS = ["love", "great", "excellent", "wonderful", "amazing", "happy"]
NEGATIVE_WORDS = ["hate", "terrible", "awful", "horrible", "worst", "sad"]
NEUTRAL_WORDS = ["report", "schedule", "meeting", "weather", "address", "update"]
_FILLER = ["the", "a", "this", "that", "my", "our", "service", "product", "movie", "food", "phone", "day", "team",
           "car", "city", "really", "very", "today"]


TINY_SIZE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
# Special tokens first, in each family's usual id order (the padding id must match the config's pad_token_id).
_SPECIALS = {
    "wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "mpnet": ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"],
    "bpe": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "xlm-roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "deberta-v2": ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"],
}
TOKENIZER_KIND = {"bert": "wordpiece", "distilbert": "wordpiece", "modernbert": "wordpiece", "mpnet": "mpnet",
                  "roberta": "bpe", "xlm-roberta": "xlm-roberta", "deberta-v2": "deberta-v2"}


def _config(model_type: str, vocab_size: int, specials: list[str]):  # type: ignore[no-untyped-def]
    """A 2-layer, 64-wide config of ``model_type`` (the supported families of :mod:`.architectures`)."""
    from transformers import AutoConfig

    ids = {t: i for i, t in enumerate(specials)}
    pad = ids.get("[PAD]", ids.get("<pad>", 0))
    if model_type == "distilbert":
        return AutoConfig.for_model("distilbert", vocab_size=vocab_size, dim=64, n_layers=2, n_heads=2,
                                    hidden_dim=128, pad_token_id=pad)
    extra: dict[str, object] = {}
    if model_type in ("roberta", "xlm-roberta", "mpnet"):  # positions start after the padding index
        extra = {"max_position_embeddings": 514, "bos_token_id": 0, "eos_token_id": 2}
    elif model_type == "deberta-v2":
        extra = {"relative_attention": True, "position_biased_input": False, "pos_att_type": ["p2c", "c2p"],
                 "type_vocab_size": 0, "max_relative_positions": -1, "position_buckets": 32}
    elif model_type == "modernbert":
        extra = {"cls_token_id": ids["[CLS]"], "sep_token_id": ids["[SEP]"], "bos_token_id": ids["[CLS]"],
                 "eos_token_id": ids["[SEP]"], "global_attn_every_n_layers": 1, "local_attention": 64}
    return AutoConfig.for_model(model_type, vocab_size=vocab_size, pad_token_id=pad, **TINY_SIZE, **extra)


def _tokenizer(kind: str, words: list[str]):  # type: ignore[no-untyped-def]
    """The family's own tokenizer class over a small vocabulary in which every listed word is one token."""
    from transformers import (
        BertTokenizerFast,
        DebertaV2TokenizerFast,
        MPNetTokenizerFast,
        RobertaTokenizerFast,
        XLMRobertaTokenizerFast,
    )

    specials = _SPECIALS[kind]
    chars = [*string.ascii_lowercase, *string.digits, *string.punctuation]
    if kind in ("wordpiece", "mpnet"):  # lower-cased
        vocab: dict[str, int] = {}
        for piece in [*specials, *chars, *(f"##{c}" for c in string.ascii_lowercase + string.digits), *words]:
            vocab.setdefault(piece, len(vocab))
        if kind == "mpnet":
            return MPNetTokenizerFast(vocab=vocab, do_lower_case=True)
        return BertTokenizerFast(vocab=vocab, do_lower_case=True)
    chars += string.ascii_uppercase
    if kind == "bpe":  # byte-level BPE: "Ġ" marks a leading space; merges build each word letter by letter
        vocab, merges = {}, {}
        for piece in [*specials, "Ġ", *chars]:
            vocab.setdefault(piece, len(vocab))
        for word in words:
            built = "Ġ"
            for ch in word:
                merges.setdefault((built, ch), None)
                built += ch
                vocab.setdefault(built, len(vocab))
        return RobertaTokenizerFast(vocab=vocab, merges=list(merges), add_prefix_space=True)
    # Unigram (sentencepiece-style): "▁" marks a word start; whole words score far above single letters
    pieces = [(t, 0.0) for t in specials] + [("▁", -3.0)] + [(c, -5.0) for c in chars]
    seen = {p for p, _ in pieces}
    pieces += [(f"▁{w}", -1.0) for w in dict.fromkeys(words) if f"▁{w}" not in seen]
    if kind == "xlm-roberta":
        return XLMRobertaTokenizerFast(vocab=pieces)
    return DebertaV2TokenizerFast(vocab=pieces, do_lower_case=True)


def make_tiny_base(dir: Path, vocab_words: list[str] | None = None, model_type: str = "bert") -> Path:
    """Write a randomly initialised 2-layer encoder (hidden 64) of ``model_type`` and its tokenizer to ``dir``.

    ``model_type`` is any family :mod:`tuneloop.retrain.architectures` supports (BERT by default, shaped
    like the packaged MiniLM); each gets its own tokenizer class (WordPiece, byte-level BPE or Unigram).
    ``vocab_words`` adds whole-word tokens (e.g. the keywords a test's labels depend on).
    The init is seeded and does not disturb the caller's global RNG state.
    """
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    kind = TOKENIZER_KIND[model_type]
    words = list(dict.fromkeys([*COMMON_WORDS, *(w.lower() for w in vocab_words or [])]))
    tokenizer = _tokenizer(kind, words)
    config = _config(model_type, len(tokenizer), _SPECIALS[kind])
    hf_logging.disable_progress_bar()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModel.from_config(config)
        # Random features are only useful if they say which words a text holds: drop the token-type
        # vector every token shares and shrink the position vectors, so word identity dominates.
        embeddings = getattr(model, "embeddings", None)
        if getattr(embeddings, "token_type_embeddings", None) is not None:
            embeddings.token_type_embeddings.weight.data.zero_()
        if getattr(embeddings, "position_embeddings", None) is not None:
            embeddings.position_embeddings.weight.data.mul_(0.1)
    model.save_pretrained(dir)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(dir)
    return dir


def keyword_sentiment(n: int, seed: int = 0, labels: tuple[str, str, str] = ("negative", "neutral", "positive"),
                      ) -> pd.DataFrame:
    """``n`` short labelled texts (columns text, label) whose label is given by one keyword among fillers.

    Learnable by the tiny base within a few epochs; classes cycle so every label is equally frequent.
    """
    rng = random.Random(seed)
    words = dict(zip(labels, (NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS), strict=True))
    rows = []
    for i in range(n):
        label = labels[i % 3]
        text = [rng.choice(_FILLER) for _ in range(rng.randint(3, 10))]
        text.insert(rng.randrange(len(text) + 1), rng.choice(words[label]))
        rows.append((" ".join(text), label))
    return pd.DataFrame(rows, columns=["text", "label"])
