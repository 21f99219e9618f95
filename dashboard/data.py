"""What each page fetches from the server, as plain data (no Streamlit here).

One loader per page makes exactly the HTTP calls that page makes, and turns the answers into
DataFrames the charts and tables take. The pages call these; the benchmark calls the same
functions and times each request (see ``bench/dashboard.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from tuneloop.dashboard.api import Api, ApiError

# Time ranges offered on the overview; "all" reads daily buckets, the others hourly.
RANGES: dict[str, timedelta | None] = {
    "6 h": timedelta(hours=6), "24 h": timedelta(hours=24), "7 d": timedelta(days=7),
    "30 d": timedelta(days=30), "all": None,
}
AUTO = "auto"
"""The default range: from the first prediction to now, in buckets that suit that span."""
RANGE_CHOICES: tuple[str, ...] = (AUTO, *RANGES)
MINUTE_BUCKETS_UP_TO = timedelta(hours=3)
"""Auto range: minute buckets for spans up to this (a demo, a fresh install), hourly up to
``HOUR_BUCKETS_UP_TO``, daily beyond."""
HOUR_BUCKETS_UP_TO = timedelta(days=10)


def utcnow() -> datetime:
    """Naive UTC, like every timestamp the server sends."""
    return pd.Timestamp.now(tz="UTC").tz_localize(None).to_pydatetime()


def since_for(range_name: str, now: datetime | None = None) -> datetime | None:
    span = RANGES[range_name]
    return None if span is None else (now or utcnow()) - span


def bucket_for(range_name: str) -> str:
    """Traffic buckets: hourly, daily for "all"."""
    return "day" if RANGES[range_name] is None else "hour"


def accuracy_bucket_for(range_name: str) -> str:
    """Accuracy buckets: hourly up to a day (labels are sparse: an hour holds few), daily beyond."""
    span = RANGES[range_name]
    return "hour" if span is not None and span <= timedelta(days=1) else "day"


def auto_range(first: datetime | None, now: datetime) -> tuple[datetime, str, str]:
    """(since, traffic bucket, accuracy bucket) that fit data starting at ``first``."""
    if first is None or now - first <= MINUTE_BUCKETS_UP_TO:
        start = first if first is not None else now - timedelta(hours=1)
        return start.replace(second=0, microsecond=0), "minute", "minute"
    if now - first <= HOUR_BUCKETS_UP_TO:
        return first, "hour", "hour" if now - first <= timedelta(days=1) else "day"
    return first, "day", "day"


def first_traffic(api: Api) -> datetime | None:
    """The hour of the first prediction, from the hourly rollup (cheap at any size)."""
    stats = stats_frame(api.stats(bucket="day"))
    stats = stats[stats["n"].fillna(0) > 0]
    if stats.empty:
        return None
    day = stats["bucket"].min().to_pydatetime()
    hours = stats_frame(api.stats(bucket="hour", since=day))
    hours = hours[hours["n"].fillna(0) > 0]
    return hours["bucket"].min().to_pydatetime() if not hours.empty else day


def to_ts(value: Any) -> pd.Timestamp | None:
    """A server timestamp (ISO text, naive UTC) as a naive pandas Timestamp, or None."""
    if value is None or value == "" or (not isinstance(value, str) and pd.isna(value)):
        return None
    ts = pd.Timestamp(value)
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def _frame(rows: list[dict[str, Any]], time_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in time_columns:
        if col in df.columns:
            df[col] = pd.to_datetime(df[col], utc=True, errors="coerce", format="ISO8601").dt.tz_localize(None)
    return df


# -- models and promotions ------------------------------------------------------------------------
@dataclass
class Promotion:
    version: str
    at: pd.Timestamp


def promotions_from(models: dict[str, Any]) -> list[Promotion]:
    """Every promotion the server reports: its ``promotions`` list, else each version's ``promoted_at``."""
    rows = models.get("promotions")
    if rows is None:
        rows = [{"version": m["version"], "at": m.get("promoted_at")} for m in models.get("items", [])]
    out = []
    for r in rows:
        at = to_ts(r.get("at") or r.get("ts") or r.get("promoted_at"))
        if at is not None:
            out.append(Promotion(str(r.get("version")), at))
    return sorted(out, key=lambda p: p.at)


def champion_of(models: dict[str, Any]) -> dict[str, Any] | None:
    for m in models.get("items", []):
        if m.get("status") == "champion":
            return m
    return None


def flat_metrics(metrics: Any, prefix: str = "") -> dict[str, float]:
    """Scalar metrics of a version, nested keys joined with '.' (confusion matrices left out)."""
    out: dict[str, float] = {}
    if not isinstance(metrics, dict):
        return out
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if key in ("confusion", "support", "reasons") or isinstance(value, list):
            continue
        if isinstance(value, dict):
            out.update(flat_metrics(value, name + "."))
        elif isinstance(value, int | float):  # bool included
            out[name] = float(value)
    return out


METRIC_ORDER = ("accuracy", "f1", "recall", "loss", "n", "epoch")
"""Quality first, then sizes; anything else (timings, ...) last."""


def metric_priority(name: str) -> tuple[int, str]:
    words = set(re.split(r"[._]", name.lower()))
    words |= {w[:-1] for w in words if w.endswith("s")}  # epochs -> epoch
    return next((rank for rank, word in enumerate(METRIC_ORDER) if word in words), len(METRIC_ORDER)), name


def metrics_table(versions: list[dict[str, Any]]) -> pd.DataFrame:
    """Metrics side by side: one row per metric, one column per version (champion first)."""
    order = {"champion": 0, "challenger": 1, "passed": 1, "rejected": 2, "archived": 3}
    ordered = sorted(versions, key=lambda v: (order.get(v.get("status", ""), 9), str(v.get("created_at") or "")))
    cols = {f"{v['version']} ({v.get('status', '?')})": flat_metrics(v.get("metrics") or {}) for v in ordered}
    df = pd.DataFrame(cols)
    return df.loc[sorted(df.index, key=metric_priority)] if not df.empty else df


# -- page loaders -----------------------------------------------------------------------------------
@dataclass
class OverviewData:
    models: dict[str, Any]
    champion: dict[str, Any] | None
    promotions: list[Promotion]
    stats: pd.DataFrame
    checks: pd.DataFrame
    open_alerts: list[dict[str, Any]]
    since: datetime | None
    until: datetime
    bucket: str
    accuracy: pd.DataFrame = field(default_factory=pd.DataFrame)  # stats per accuracy_bucket
    accuracy_bucket: str = "hour"
    errors: dict[str, ApiError] = field(default_factory=dict)

    def estimated_accuracy(self) -> pd.DataFrame:
        """The label-free estimate over time, only where it is marked reliable: per stats bucket when the
        server fills it, else per drift check (an estimate whose assumption is broken is not plotted)."""
        est = self.accuracy.dropna(subset=["estimated_accuracy"]) if not self.accuracy.empty else self.accuracy
        if not est.empty:
            return est[["bucket", "estimated_accuracy"]].rename(columns={"bucket": "ts"})
        if self.checks.empty:
            return pd.DataFrame(columns=["ts", "estimated_accuracy"])
        rows = self.checks[self.checks["metric"] == "estimated_accuracy"]
        if "details" not in rows.columns:
            return pd.DataFrame(columns=["ts", "estimated_accuracy"])
        rows = rows[rows["details"].map(lambda d: estimate_of(0.0, d).reliable).astype(bool)]
        return rows[["ts", "value"]].rename(columns={"value": "estimated_accuracy"}).reset_index(drop=True)

    def latest_estimate(self) -> Estimate | None:
        """The latest label-free estimate with its interval and reliability, from the drift checks."""
        if self.checks.empty:
            return None
        rows = self.checks[self.checks["metric"] == "estimated_accuracy"]
        if rows.empty:
            return None
        last = rows.iloc[-1]
        return estimate_of(float(last["value"]), last.get("details"))


@dataclass(frozen=True)
class Estimate:
    """A label-free accuracy estimate as the dashboard may show it: never without interval and reliability."""

    value: float
    low: float | None
    high: float | None
    reliable: bool
    reasons: list[str]


def estimate_of(value: float, details: Any) -> Estimate:
    """Read interval and reliability from a check's details; an estimate recorded without them is unreliable."""
    if isinstance(details, str):
        try:
            details = json.loads(details)
        except ValueError:
            details = {}
    details = details if isinstance(details, dict) else {}
    low, high = (details.get("interval_95") or [None, None])[:2]
    reasons = list(details.get("unreliable_reasons") or [])
    reliable = details.get("reliable") is True and low is not None
    if not reliable and not reasons:
        reasons = ["recorded without an interval or a reliability check"]
    return Estimate(value, low, high, reliable, reasons)


def stats_frame(stats: dict[str, Any]) -> pd.DataFrame:
    """Rows of ``GET /v1/stats`` as a DataFrame with columns bucket, n, n_labelled, accuracy, estimated_accuracy."""
    rows = stats.get("items") if isinstance(stats, dict) else stats
    df = _frame(list(rows or []), ("bucket",))
    for col in ("bucket", "n", "n_labelled", "accuracy", "estimated_accuracy"):
        if col not in df.columns:
            df[col] = pd.Series(dtype="datetime64[ns]" if col == "bucket" else "float64")
    return df.sort_values("bucket").reset_index(drop=True)


def checks_frame(items: list[dict[str, Any]]) -> pd.DataFrame:
    df = _frame(items, ("ts", "window_start", "window_end"))
    if df.empty:
        return pd.DataFrame(columns=["id", "ts", "metric", "value", "threshold", "drifted", "details", "has_report"])
    return df.sort_values(["ts", "metric"]).reset_index(drop=True)


FATAL = ("unreachable", "unauthorized")
"""Errors that end a page; any other failed call only blanks its own section."""


def load_overview(api: Api, range_name: str = AUTO, now: datetime | None = None) -> OverviewData:
    """Models, stats per bucket (a second call for daily accuracy on long ranges), drift checks in range,
    open alerts; a failed call blanks only its own section. ``auto`` fits the range to the data."""
    now = now or utcnow()
    errors: dict[str, ApiError] = {}
    if range_name == AUTO:
        try:
            first = first_traffic(api)
        except ApiError as e:
            if e.kind in FATAL:
                raise
            errors["stats"], first = e, None
        since, bucket, acc_bucket = auto_range(first, now)
    else:
        since = since_for(range_name, now)
        bucket = bucket_for(range_name)
        acc_bucket = accuracy_bucket_for(range_name)

    def part(name: str, fn: Callable[[], Any], default: Any) -> Any:
        try:
            return fn()
        except ApiError as e:
            if e.kind in FATAL:
                raise
            errors[name] = e
            return default

    models = part("models", api.models, {"items": []})
    stats = stats_frame(part("stats", lambda: api.stats(bucket=bucket, since=since), {"items": []}))
    if bucket == "minute" and not stats.empty:  # the first hour's empty minutes are not worth showing
        since = stats["bucket"].min().to_pydatetime()
    accuracy = stats
    if acc_bucket != bucket:
        accuracy = stats_frame(part("stats", lambda: api.stats(bucket=acc_bucket, since=since), {"items": []}))
    checks = checks_frame(part("checks", lambda: api.checks(limit=5000, since=since), []))
    if since is not None and not checks.empty:  # a server without ?since= sends everything
        checks = checks[checks["ts"] >= pd.Timestamp(since)].reset_index(drop=True)
    alerts = part("alerts", lambda: api.alerts(status="open"), [])
    return OverviewData(models, champion_of(models), promotions_from(models), stats, checks, alerts, since, now,
                        bucket, accuracy, acc_bucket, errors)


@dataclass
class DriftData:
    checks: pd.DataFrame
    runs: pd.DataFrame  # one row per check run: id, ts, n_metrics, n_drifted, has_report
    promotions: list[Promotion] = field(default_factory=list)


def check_runs(checks: pd.DataFrame) -> pd.DataFrame:
    if checks.empty:
        return pd.DataFrame(columns=["id", "ts", "metrics", "drifted", "has_report", "reference"])
    g = checks.groupby("id", sort=False)
    runs = pd.DataFrame({
        "ts": g["ts"].max(),
        "metrics": g["metric"].count(),
        "drifted": g["drifted"].sum().astype(int),
        "has_report": g["has_report"].any() if "has_report" in checks.columns else False,
        "reference": g["reference"].first() if "reference" in checks.columns else "",
    }).reset_index()
    return runs.sort_values("ts", ascending=False).reset_index(drop=True)


def example_texts(api: Api, details: dict[str, Any], start: Any, end: Any, max_pages: int = 3) -> dict[str, str]:
    """Texts of a check's example ids (``farthest_ids``), read from its current window through
    ``GET /v1/predictions`` (at most ``max_pages`` pages of 1000; ids not found get no text)."""
    wanted = {str(i) for i in details.get("farthest_ids") or []}
    if not wanted or details.get("farthest_texts") or to_ts(start) is None or to_ts(end) is None:
        return {}
    params: dict[str, Any] = {"since": to_ts(start).isoformat(),
                              "until": (to_ts(end) + pd.Timedelta(microseconds=1)).isoformat(), "limit": 1000}
    found: dict[str, str] = {}
    for _ in range(max_pages):
        try:
            page = api.predictions(**params)
        except ApiError as e:
            if e.kind in FATAL:
                raise
            break
        found.update({str(r["id"]): r.get("text", "") for r in page.get("items", []) if str(r["id"]) in wanted})
        if len(found) == len(wanted) or not page.get("next_cursor"):
            break
        params["cursor"] = page["next_cursor"]
    return found


def load_drift(api: Api, check_id: int | None = None) -> tuple[DriftData, str | None, dict[str, str]]:
    """What the Drift page fetches: checks, promotions, and for one check (default: the latest) its
    Evidently report and the texts of its examples."""
    checks = checks_frame(api.checks(limit=2000))
    runs = check_runs(checks)
    promotions = promotions_from(api.models())
    if check_id is None and not runs.empty:
        check_id = int(runs["id"].iloc[0])
    report, texts = None, {}
    if check_id is not None:
        run = checks[checks["id"] == check_id]
        if not run.empty and bool(run["has_report"].any()):
            try:
                report = api.check_report(check_id)
            except ApiError as e:
                if e.kind != "not_found":
                    raise
        for r in run.itertuples():
            if isinstance(r.details, dict) and r.details.get("farthest_ids"):
                texts.update(example_texts(api, r.details, r.window_start, r.window_end))
    return DriftData(checks, runs, promotions), report, texts


@dataclass
class LabelData:
    items: list[dict[str, Any]]
    queue_size: int | None
    labelled_today: int | None
    labels: list[str]


def load_label(api: Api, strategy: str | None = None, limit: int = 20) -> LabelData:
    queue = api.label_queue(strategy=strategy, limit=limit)
    items = list(queue.get("items", []))
    size = queue.get("queue_size")
    labels = queue.get("labels") or []
    today = queue.get("labelled_today")
    return LabelData(items, None if size is None else int(size), None if today is None else int(today), list(labels))


@dataclass
class ModelsData:
    models: dict[str, Any]
    versions: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    run_detail: dict[str, Any] | None


def load_models(api: Api, run_id: int | None = None) -> ModelsData:
    models = api.models()
    runs = api.retrain_runs()
    if run_id is None and runs:
        run_id = int(runs[0]["id"])
    detail = api.retrain_run(run_id) if run_id is not None else None
    return ModelsData(models, list(models.get("items", [])), runs, detail)


def load_alerts(api: Api, status: str | None = None) -> list[dict[str, Any]]:
    return api.alerts(status=status)


PAGE_LOADERS: dict[str, Callable[[Api], Any]] = {
    "overview": lambda api: load_overview(api, AUTO),
    "drift": lambda api: load_drift(api),
    "label": lambda api: load_label(api),
    "models": lambda api: load_models(api),
    "alerts": lambda api: load_alerts(api),
}
