"""The Label page's state machine, without Streamlit: one item at a time, label / skip / undo.

Labels are written at once through ``POST /v1/feedback`` (source ``human``, annotator = the
token's name). Undo takes the last labelled item back to the front of the queue and retracts
its feedback when the server offers ``DELETE /v1/feedback/{id}``; otherwise the next label for
that prediction supersedes it (the latest human label wins).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from tuneloop.dashboard.api import Api, ApiError


@dataclass
class Done:
    item: dict[str, Any]
    label: str | None  # None: skipped
    feedback_id: str | None = None
    retracted: bool = False


@dataclass
class LabelQueue:
    """What the labeller works through in this browser session."""

    strategy: str
    page_size: int = 20
    project: str = "default"
    items: list[dict[str, Any]] = field(default_factory=list)
    history: list[Done] = field(default_factory=list)
    skipped: set[str] = field(default_factory=set)
    queue_size: int | None = None
    labelled_today: int | None = None
    labels: list[str] = field(default_factory=list)
    labelled_here: int = 0
    exhausted: bool = False

    def current(self) -> dict[str, Any] | None:
        return self.items[0] if self.items else None

    def refill(self, api: Api) -> None:
        """Fetch the next page from the server when the local page is used up."""
        if self.items:
            return
        from tuneloop.dashboard.data import load_label

        done = {d.item["prediction_id"] for d in self.history if d.label is not None}
        limit = min(self.page_size + len(self.skipped) + len(done), 500)
        data = load_label(api, self.strategy, limit)
        self.items = [i for i in data.items if i["prediction_id"] not in self.skipped | done][: self.page_size]
        self.queue_size, self.labelled_today = data.queue_size, data.labelled_today
        if data.labels:
            self.labels = data.labels
        self.exhausted = not self.items

    def label(self, api: Api, label: str, annotator: str | None) -> Done:
        item = self.items[0]
        feedback_id = uuid.uuid4().hex
        record = {"id": feedback_id, "prediction_id": item["prediction_id"], "label": label, "source": "human"}
        if annotator:
            record["annotator"] = annotator
        api.send_feedback([record])
        self.items.pop(0)
        done = Done(item, label, feedback_id)
        self.history.append(done)
        self.labelled_here += 1
        if self.labelled_today is not None:
            self.labelled_today += 1
        if self.queue_size:
            self.queue_size -= 1
        return done

    def skip(self) -> Done:
        item = self.items.pop(0)
        self.skipped.add(item["prediction_id"])
        done = Done(item, None)
        self.history.append(done)
        return done

    def undo(self, api: Api) -> Done | None:
        """Put the last labelled or skipped item back in front; retract its feedback if the server can."""
        if not self.history:
            return None
        done = self.history[-1]
        if done.label is not None and done.feedback_id:
            try:
                api.retract_feedback(done.feedback_id)
                done.retracted = True
            except ApiError as e:
                if e.kind in ("unreachable", "unauthorized", "forbidden"):
                    raise  # nothing changed: the label stays, and stays undoable
                # A server without DELETE /v1/feedback/{id}: the next label supersedes this one.
        self.history.pop()
        if done.label is None:
            self.skipped.discard(done.item["prediction_id"])
        else:
            self.labelled_here -= 1
            if self.labelled_today:
                self.labelled_today -= 1
            if self.queue_size is not None:
                self.queue_size += 1
        self.items.insert(0, done.item)
        self.exhausted = False
        return done
