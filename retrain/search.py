"""An optional small search over the training settings (``tuneloop train --auto``, ``search.enabled``).

The defaults are one configuration for every dataset, and the measurements behind them show where one
size does not fit: a supervised contrastive loss gained 3 to 8 points of test macro-F1 on airline
tweets and lost up to 7 on tweets about five topics (``model.contrastive_weight``); the step size and
the number of optimiser steps matter most on the smallest sets. A project that can spend a few times
the training time lets Optuna try a few configurations and keeps the one that validates best.

The first trial is the defaults and the second the contrastive loss (the one alternative measured to
change results by several points); then Optuna's TPE sampler (seeded) draws from :func:`suggest`'s space
(its first ten draws are random: the default four trials are the defaults, the contrastive loss and two
random configurations). ``metrics["search"]`` numbers trials from 0. Every trial trains on the same
split (``model.seed``), so their validation predictions are paired. Another trial replaces the
defaults only when a paired permutation test on the validation rows finds the best trial's macro-F1 gain
real at level ``search.alpha`` (:mod:`tuneloop.retrain.choice`): the best of several scores on a few
dozen rows is optimistic, and on an unbalanced set one rare-class row moves macro-F1 by several points.
``metrics["search"]["choice"]`` gives the gain, its interval, the gain those rows could tell from noise
and the p-value, in numbers and in words. The search stops when ``search.trials`` have run or when the
next trial, as long as the slowest so far, would end past ``search.minutes``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from tuneloop.retrain.choice import Candidate, Choice, keep_default_unless_better
from tuneloop.retrain.settings import ModelSettings, SearchSettings
from tuneloop.retrain.trainer import TrainResult, train

CONTRASTIVE = {"contrastive_weight": 1.0}
"""The second trial: the supervised contrastive loss at the weight measured in bench/finetune.py."""


def suggest(trial: Any) -> dict[str, Any]:
    """One configuration from the search space: the knobs the measurements found to matter per dataset."""
    r = trial.suggest_categorical("lora_r", [8, 16])
    return {
        "learning_rate": trial.suggest_float("learning_rate", 3e-4, 3e-3, log=True),
        "min_steps": trial.suggest_categorical("min_steps", [150, 300]),
        "contrastive_weight": trial.suggest_categorical("contrastive_weight", [0.0, 1.0]),
        "lora_r": r, "lora_alpha": 2 * r,
    }


def _as_trial(settings: ModelSettings, changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` in the space's own parameters (what Optuna is told a fixed trial was)."""
    out = {"learning_rate": settings.learning_rate, "min_steps": settings.min_steps,
           "contrastive_weight": settings.contrastive_weight, "lora_r": settings.lora_r}
    out.update({k: v for k, v in changes.items() if k in out})
    return out


def trial_name(i: int) -> str:
    """A trial as the CLI counts them: the first is the defaults."""
    return "the defaults" if i == 0 else f"trial {i + 1}"


def choose_trial(results: list[TrainResult], plan: SearchSettings, seed: int) -> Choice:
    """The trial to keep: the first (the defaults) unless the best other one is better on the paired
    validation rows (:func:`tuneloop.retrain.choice.keep_default_unless_better`)."""
    y, _ = results[0].validation
    index = {c: i for i, c in enumerate(results[0].classifier.labels)}
    cands = [Candidate(trial_name(i), np.array([index[c] for c in r.validation[1]])) for i, r in enumerate(results)]
    return keep_default_unless_better([index[c] for c in y], cands, len(index), alpha=plan.alpha,
                                      margin=plan.min_gain, seed=seed)


def search_train(data: pd.DataFrame, labels: list[str] | None, settings: ModelSettings, plan: SearchSettings,
                 log: Callable[[str], None] | None = None,
                 on_trial: Callable[[int, TrainResult], None] | None = None, **train_kw: Any) -> TrainResult:
    """Train up to ``plan.trials`` configurations on ``data`` and return the kept one's result; its
    ``metrics["search"]`` lists every trial (settings changed, validation scores, seconds) and the choice.
    ``on_trial`` sees each trial's result as it ends (bench/finetune.py scores every trial on its test rows)."""
    import optuna

    say = log or (lambda _msg: None)
    train_kw.setdefault("progress", False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=settings.seed))
    study.enqueue_trial(_as_trial(settings, {}))
    study.enqueue_trial(_as_trial(settings, CONTRASTIVE))
    t0, slowest = time.monotonic(), 0.0
    results: list[TrainResult] = []
    trials: list[dict[str, Any]] = []

    def objective(trial: Any) -> float:
        nonlocal slowest
        changes = suggest(trial)
        started = time.monotonic()
        say(f"search trial {trial.number + 1}/{plan.trials}: {changes}")
        result = train(data, labels, settings.model_copy(update=changes), log=say, **train_kw)
        seconds = time.monotonic() - started
        slowest = max(slowest, seconds)
        if on_trial is not None:
            on_trial(trial.number, result)
        score = float(result.metrics["val_macro_f1"])
        results.append(result)
        trials.append({"trial": trial.number, "changes": changes, "val_macro_f1": round(score, 6),
                       "val_accuracy": round(float(result.metrics["val_accuracy"]), 6),
                       "blend_tfidf": result.metrics.get("blend_tfidf"), "seconds": round(seconds, 1)})
        say(f"search trial {trial.number + 1}: validation macro-F1 {score:.3f} in {seconds:.0f} s")
        return score

    stop_event = train_kw.get("stop_event")

    def budget(study: Any, _trial: Any) -> None:
        if time.monotonic() - t0 + slowest > 60 * plan.minutes or (stop_event is not None and stop_event.is_set()):
            study.stop()

    study.optimize(objective, n_trials=plan.trials, callbacks=[budget])
    choice = choose_trial(results, plan, settings.seed)
    kept_at = [trial_name(i) for i in range(len(results))].index(choice.name)
    kept, best = results[kept_at], trials[kept_at]
    kept.metrics["search"] = {
        "trials": trials, "kept_trial": best["trial"], "kept_changes": best["changes"], "alpha": plan.alpha,
        "min_gain": plan.min_gain, "choice": choice.record(), "seconds": round(time.monotonic() - t0, 1),
        "note": "the kept trial's validation score is optimistic: it was chosen on the same rows",
    }
    say(f"search: kept trial {best['trial'] + 1} of {len(trials)} ({best['changes'] or 'the defaults'}), "
        f"validation macro-F1 {best['val_macro_f1']:.3f}, in {time.monotonic() - t0:.0f} s")
    say(f"search: {choice.words()}")
    return kept

