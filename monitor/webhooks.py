"""Webhook targets, their payload formats, and URL redaction.

A webhook is a URL and a format:

* ``json`` — tuneloop's own shape ``{alert_id, project, kind, action, message, ts, ...}``;
* ``slack`` — what a Slack incoming webhook (and Mattermost, Rocket.Chat) accepts:
  ``{"text": ..., "blocks": [...]}``;
* ``alertmanager`` — the body Alertmanager's webhook receiver posts (version "4"), so tools that
  already take Alertmanager notifications (PagerDuty/Opsgenie bridges, Karma, custom receivers)
  take tuneloop's alerts unchanged.

Webhook URLs often carry a secret (Slack's path is one), so they are shown as
:func:`redact_url` everywhere but the outgoing request.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

WebhookFormat = Literal["json", "slack", "alertmanager"]
FORMATS: tuple[str, ...] = ("json", "slack", "alertmanager")
# Alertmanager writes the zero time as endsAt of a firing alert.
ZERO_TIME = "0001-01-01T00:00:00Z"


class Webhook(BaseModel):
    """One receiver: ``{url = "...", format = "slack"}`` in ``drift.webhooks`` (a bare URL means json)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    format: WebhookFormat = "json"


def as_webhook(entry: str | Webhook | dict[str, Any]) -> Webhook:
    if isinstance(entry, Webhook):
        return entry
    if isinstance(entry, str):
        return Webhook(url=entry)
    return Webhook(**entry)


def redact_url(url: str) -> str:
    """Scheme and host only, plus a short fingerprint so two hooks stay distinguishable.

    ``https://hooks.slack.com/services/T0/B0/XYZ`` -> ``https://hooks.slack.com/…#a1b2c3``.
    """
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if parts.port:
        host = f"{host}:{parts.port}"
    fingerprint = hashlib.sha256(url.encode()).hexdigest()[:6]
    return f"{parts.scheme or '?'}://{host}/…#{fingerprint}"


def redact_webhooks(entries: list[Any]) -> list[dict[str, str]]:
    return [{"url": redact_url(w.url), "format": w.format} for w in map(as_webhook, entries)]


def rfc3339(ts: datetime | None) -> str | None:
    """A stored (naive UTC) or aware time as RFC 3339 with ``Z``."""
    if ts is None:
        return None
    aware = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return aware.isoformat().replace("+00:00", "Z")


def payload(fmt: str, event: dict[str, Any], external_url: str = "") -> dict[str, Any]:
    """The body to POST for one alert change in ``fmt``.

    ``event`` is tuneloop's JSON shape plus ``severity``, ``started_at`` and ``ended_at`` (aware or
    naive-UTC datetimes, ``ended_at`` None while open).
    """
    base = {k: v for k, v in event.items() if k not in ("started_at", "ended_at")}
    if fmt == "json":
        return base
    if fmt == "slack":
        return _slack(event)
    if fmt == "alertmanager":
        return _alertmanager(event, external_url)
    raise ValueError(f"unknown webhook format {fmt!r}; use one of {', '.join(FORMATS)}")


def _slack(event: dict[str, Any]) -> dict[str, Any]:
    icon = ":rotating_light:" if event["action"] == "opened" else ":white_check_mark:"
    title = f"{icon} tuneloop {event['severity']}: {event['kind']} {event['action']} in project {event['project']}"
    fields = [f"*Project*\n{event['project']}", f"*Check*\n{event['kind']}",
              f"*Severity*\n{event['severity']}", f"*Alert*\n#{event['alert_id']}"]
    return {
        "text": f"{title}: {event['message']}",  # the fallback shown in notifications
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*\n{event['message']}"}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
        ],
    }


def _alertmanager(event: dict[str, Any], external_url: str) -> dict[str, Any]:
    status = "firing" if event["action"] == "opened" else "resolved"
    labels = {"alertname": f"tuneloop_{event['kind']}", "project": event["project"], "check": event["kind"],
              "severity": event["severity"]}
    annotations = {"summary": f"{event['kind']} {event['action']} in project {event['project']}",
                   "description": event["message"]}
    fingerprint = hashlib.sha256(f"{event['project']}/{event['kind']}/{event['alert_id']}".encode()).hexdigest()[:16]
    alert = {
        "status": status,
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339(event["started_at"]),
        "endsAt": rfc3339(event["ended_at"]) if status == "resolved" and event["ended_at"] else ZERO_TIME,
        "generatorURL": f"{external_url}/v1/alerts?project={event['project']}" if external_url else "",
        "fingerprint": fingerprint,
    }
    group = {"alertname": labels["alertname"], "project": event["project"]}
    return {
        "version": "4",
        "groupKey": "{}:{" + ",".join(f'{k}="{v}"' for k, v in group.items()) + "}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "tuneloop",
        "groupLabels": group,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [alert],
    }
