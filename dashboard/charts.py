"""Plotly figures for the dashboard. Every time chart marks promotions with a vertical line,
so a change in traffic, accuracy or drift can be read against the model that caused it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tuneloop.dashboard.data import Promotion

PROMOTION_COLOR = "#7c3aed"
COLORS = {"traffic": "#2563eb", "labelled": "#059669", "estimated": "#d97706", "drift": "#2563eb",
          "threshold": "#dc2626"}
LAYOUT = dict(template="plotly_white", height=320, margin=dict(l=10, r=10, t=70, b=10),
              legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
              title=dict(y=0.97, yanchor="top"),
              hovermode="x unified")


def add_promotions(fig: go.Figure, promotions: Sequence[Promotion], x_range: tuple | None = None) -> go.Figure:
    """A dashed vertical line at each promotion inside ``x_range`` on every x axis, labelled on the first."""
    axes = sorted(k for k in fig.layout.to_plotly_json() if k.startswith("xaxis")) or ["xaxis"]
    for p in promotions:
        if x_range is not None and not (pd.Timestamp(x_range[0]) <= p.at <= pd.Timestamp(x_range[1])):
            continue
        for i, axis in enumerate(axes):
            suffix = axis[5:]
            yaxis = f"y{suffix} domain"
            fig.add_shape(type="line", xref=f"x{suffix}", yref=yaxis, x0=p.at, x1=p.at, y0=0, y1=1,
                          line=dict(color=PROMOTION_COLOR, width=1.5, dash="dash"))
            if i == 0:
                fig.add_annotation(x=p.at, xref=f"x{suffix}", y=1, yref=yaxis, yanchor="top", xanchor="left",
                                   text=f" {p.version}", hovertext=f"{p.version} promoted {p.at:%Y-%m-%d %H:%M} UTC",
                                   showarrow=False,
                                   font=dict(color=PROMOTION_COLOR, size=11), bgcolor="rgba(255,255,255,0.7)")
    return fig


def time_range(since: object | None, until: object | None, *frames: pd.DataFrame, col: str = "bucket") -> tuple | None:
    """The x range to show: the selected range when given, else the data's own span."""
    if since is not None:
        return pd.Timestamp(since), pd.Timestamp(until) if until is not None else pd.Timestamp.now()
    return _span(*frames, col=col)


def _span(*frames: pd.DataFrame, col: str = "bucket") -> tuple | None:
    values = [f[col] for f in frames if col in f.columns and not f.empty]
    if not values:
        return None
    s = pd.concat(values)
    return s.min(), s.max()


VERSION_COLORS = ["#2563eb", "#0891b2", "#7c3aed", "#db2777", "#ea580c", "#65a30d"]


def traffic_by_version(stats: pd.DataFrame) -> pd.DataFrame:
    """Long table bucket, model_version, n from the stats' per-version breakdown (or the totals)."""
    if stats.empty:
        return pd.DataFrame(columns=["bucket", "model_version", "n"])
    if "by_model_version" not in stats.columns:
        return stats.assign(model_version="all")[["bucket", "model_version", "n"]]
    rows = [{"bucket": r.bucket, "model_version": v.get("model_version") or "external", "n": v.get("n", 0)}
            for r in stats.itertuples() for v in (r.by_model_version or [])]
    return pd.DataFrame(rows, columns=["bucket", "model_version", "n"])


def traffic_figure(stats: pd.DataFrame, promotions: Sequence[Promotion], bucket: str = "hour",
                   x_range: tuple | None = None) -> go.Figure:
    """Predictions per bucket, stacked by the model version that served them."""
    fig = go.Figure()
    long = traffic_by_version(stats)
    for i, (version, part) in enumerate(long.groupby("model_version", sort=True)):
        fig.add_bar(x=part["bucket"], y=part["n"], name=str(version), marker_color=VERSION_COLORS[i % 6],
                    hovertemplate=f"{version}: %{{y:,}} predictions<extra></extra>")
    fig.update_layout(**LAYOUT, barmode="stack", bargap=0.1, legend_traceorder="normal")
    fig.update_layout(title_text=f"Traffic: predictions per {bucket} (UTC), by model version")
    fig.update_yaxes(title_text=f"predictions / {bucket}", rangemode="tozero")
    fig.update_xaxes(range=list(x_range) if x_range else None)
    return add_promotions(fig, promotions, x_range or _span(stats))


def accuracy_figure(accuracy: pd.DataFrame, estimated: pd.DataFrame, promotions: Sequence[Promotion],
                    x_range: tuple | None = None, bucket: str = "hour") -> go.Figure:
    """Labelled accuracy per bucket (where feedback exists) next to the label-free estimate."""
    fig = go.Figure()
    labelled = accuracy.dropna(subset=["accuracy"]) if not accuracy.empty else accuracy
    if not labelled.empty:
        fig.add_scatter(x=labelled["bucket"], y=labelled["accuracy"], mode="lines+markers",
                        name=f"labelled (per {bucket})", line=dict(color=COLORS["labelled"], width=2),
                        customdata=labelled["n_labelled"],
                        hovertemplate="labelled: %{y:.1%} (n=%{customdata})<extra></extra>")
    if not estimated.empty:
        fig.add_scatter(x=estimated["ts"], y=estimated["estimated_accuracy"], mode="lines+markers",
                        name="estimated, label-free", marker=dict(size=5),
                        line=dict(color=COLORS["estimated"], width=2, dash="dot"),
                        hovertemplate="estimated: %{y:.1%}<extra></extra>")
    fig.update_layout(**LAYOUT)
    fig.update_layout(title_text="Accuracy by time of prediction: labelled vs label-free estimate")
    fig.update_yaxes(title_text="accuracy", tickformat=".0%", range=[0, 1.05])
    fig.update_xaxes(range=list(x_range) if x_range else None)
    return add_promotions(fig, promotions, x_range or _span(accuracy))


def drift_figure(checks: pd.DataFrame, promotions: Sequence[Promotion], x_range: tuple | None = None) -> go.Figure:
    """One panel per check metric (two columns): its value per check, the threshold dashed, breaches in red."""
    metrics = sorted(checks["metric"].unique()) if not checks.empty else []
    cols = 2 if len(metrics) > 1 else 1
    rows = max(math.ceil(len(metrics) / cols), 1)
    fig = make_subplots(rows=rows, cols=cols, shared_xaxes="all", subplot_titles=metrics or [""],
                        vertical_spacing=min(0.3 / rows, 0.12), horizontal_spacing=0.08)
    for i, metric in enumerate(metrics):
        row, col = i // cols + 1, i % cols + 1
        df = checks[checks["metric"] == metric].sort_values("ts")
        fig.add_scatter(x=df["ts"], y=df["value"], mode="lines+markers", name=metric, row=row, col=col,
                        line=dict(color=COLORS["drift"], width=2), marker=dict(size=5), showlegend=False,
                        hovertemplate=f"{metric}: %{{y:.4g}}<extra></extra>")
        if df["threshold"].notna().any():
            fig.add_scatter(x=df["ts"], y=df["threshold"], mode="lines", name="threshold", row=row, col=col,
                            line=dict(color=COLORS["threshold"], width=1.5, dash="dash", shape="hv"),
                            showlegend=i == 0, legendgroup="threshold",
                            hovertemplate="threshold: %{y:.4g}<extra></extra>")
        hot = df[df["drifted"].astype(bool)]
        if not hot.empty:
            fig.add_scatter(x=hot["ts"], y=hot["value"], mode="markers", name="drifted", row=row, col=col,
                            marker=dict(color=COLORS["threshold"], size=9, symbol="x"), showlegend=i == 0,
                            legendgroup="drifted", hovertemplate="drifted<extra></extra>")
    fig.update_layout(**{**LAYOUT, "height": 130 + 170 * rows, "hovermode": "closest",
                         "legend": dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1)},
                      title_text="Drift score per check (dashed red: threshold; ✕: drifted)")
    if x_range:
        fig.update_xaxes(range=list(x_range))
    fig.update_annotations(font_size=12)
    return add_promotions(fig, promotions, x_range or _span(checks, col="ts"))


def version_metrics_figure(table: pd.DataFrame, metrics: Sequence[str]) -> go.Figure:
    """Grouped bars: the chosen metrics for each version."""
    fig = go.Figure()
    for metric in metrics:
        if metric in table.index:
            row = table.loc[metric]
            fig.add_bar(x=list(row.index), y=list(row.values), name=metric,
                        hovertemplate=f"{metric}: %{{y:.3f}}<extra></extra>")
    fig.update_layout(**{**LAYOUT, "hovermode": "closest"}, barmode="group", title_text="Metrics per version")
    fig.update_yaxes(rangemode="tozero")
    return fig
