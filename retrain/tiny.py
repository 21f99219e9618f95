"""A tiny random BERT saved like the real base, so tests train real models in seconds without downloads.

It has the same architecture family, tokenizer class and files on disk as the packaged
all-MiniLM-L6-v2, so everything that loads a base (``resolve_base`` + ``AutoModel``/``AutoTokenizer``)
works unchanged on it; only the sizes differ.
"""

from __future__ import annotations

import random
import string
from pathlib import Path

import pandas as pd

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

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


def make_tiny_base(dir: Path, vocab_words: list[str] | None = None) -> Path:
    """Write a randomly initialised 2-layer BERT (hidden 64) and its WordPiece tokenizer to ``dir``.

    ``vocab_words`` adds whole-word tokens (e.g. the keywords a test's labels depend on).
    The init is seeded and does not disturb the caller's global RNG state.
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    pieces = [
        *SPECIAL_TOKENS,
        *string.ascii_lowercase,
        *string.digits,
        *string.punctuation,
        *(f"##{c}" for c in string.ascii_lowercase + string.digits),
        *COMMON_WORDS,
        *(w.lower() for w in vocab_words or []),
    ]
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))

    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    hf_logging.disable_progress_bar()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertModel(config)
        # Random features are only useful if they say which words a text holds: drop the token-type
        # vector every token shares and shrink the position vectors, so word identity dominates.
        model.embeddings.token_type_embeddings.weight.data.zero_()
        model.embeddings.position_embeddings.weight.data.mul_(0.1)
    model.save_pretrained(dir)
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
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
