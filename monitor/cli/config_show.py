"""``tuneloop config show``: every effective setting, where its value came from, secrets masked.

Sources, strongest first (as :func:`tuneloop.monitor.config.load_settings` applies them): an
environment variable ``TUNELOOP_<SECTION>__<KEY>``, a command-line option (``--data-dir``), the
``--config`` file, the built-in default.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from tuneloop.monitor.config import Settings, redact_password
from tuneloop.monitor.webhooks import redact_webhooks

SECRET_WORDS = ("token", "secret", "password")
MASK = "***"


def is_secret(section: str, key: str) -> bool:
    return any(word in key.lower() for word in SECRET_WORDS)


def shown_value(section: str, key: str, value: Any) -> Any:
    if section == "drift" and key == "webhooks":
        return redact_webhooks(value)
    if section == "store" and key == "url" and value:
        return redact_password(value)
    if section == "mlflow" and key == "tracking_uri" and value:
        return redact_password(value)
    if is_secret(section, key) and value:
        return MASK
    return value


def effective_settings(settings: Settings, config_path: str | os.PathLike[str] | None = None,
                       cli_overrides: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per setting: ``{"key": "drift.window_size", "value": 500, "source": "default"}``."""
    from_file: dict[str, Any] = {}
    if config_path is not None and Path(config_path).is_file():
        from_file = tomllib.loads(Path(config_path).read_text(encoding="utf-8"))
    cli_overrides = cli_overrides or {}
    rows = []
    for section, values in settings.model_dump(mode="json").items():
        for key, value in values.items():
            env = f"TUNELOOP_{section}__{key}".upper()
            if env in os.environ:
                source = f"env {env}"
            elif key in cli_overrides.get(section, {}):
                source = "command line"
            elif key in from_file.get(section, {}):
                source = f"file {config_path}"
            else:
                source = "default"
            rows.append({"key": f"{section}.{key}", "value": shown_value(section, key, value), "source": source})
    return rows
