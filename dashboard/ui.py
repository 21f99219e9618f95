"""Shared Streamlit pieces: the connection (server URL, token, role), banners, formatting.

Connection settings come from the same config as the server (``TUNELOOP_CONFIG`` names the
TOML file, ``TUNELOOP_DASHBOARD__SERVER_URL`` / ``TUNELOOP_DASHBOARD__TOKEN`` override) and can
be changed for this browser session in the sidebar. Every server failure is shown as a banner
that says what to do; the pages never show a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pandas as pd
import streamlit as st

from tuneloop.dashboard.api import Api, ApiError, role_allows
from tuneloop.monitor.config import ConfigError, Settings, load_settings

T = TypeVar("T")
STATE = "_tuneloop"


@dataclass
class Session:
    api: Api
    settings: Settings
    name: str | None = None
    role: str | None = None
    error: ApiError | None = None

    def allows(self, needed: str) -> bool:
        """Whether the token's role covers ``needed``; an unknown role is let through (the server decides)."""
        return self.role is None or role_allows(self.role, needed)

    def why_not(self, needed: str) -> str | None:
        """The explanation shown on a disabled control, or None when it is allowed."""
        if self.allows(needed):
            return None
        return (f"Needs a token with role '{needed}'; this dashboard's token "
                f"('{self.name}') has role '{self.role}'. Create one with "
                f"`tuneloop token create --role {needed}` and set TUNELOOP_DASHBOARD__TOKEN.")


@st.cache_resource(show_spinner=False)
def _settings(config_path: str | None, env: tuple[tuple[str, str], ...]) -> Settings:
    return load_settings(config_path or None)  # ``env`` only keys the cache: settings read os.environ


def settings() -> Settings:
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("TUNELOOP_")))
    try:
        return _settings(os.environ.get("TUNELOOP_CONFIG") or None, env)
    except ConfigError as e:
        st.error(f"**Configuration error** — {e}")
        st.stop()
        raise  # unreachable: st.stop() ends the run


def connect() -> Session:
    """Build (or reuse) this browser session's API client and check who the token is."""
    s = settings()
    state = st.session_state.setdefault(STATE, {})
    url = state.get("server_url") or s.server_url
    token = state.get("token") if state.get("token") is not None else s.dashboard.token
    project = state.get("project") or "default"
    key = (url, token, project)
    api: Api | None = state.get("api")
    if api is None or state.get("api_key") != key:
        if api is not None:
            api.close()
        api = Api(url, token, project)
        state["api"], state["api_key"] = api, key
    session = Session(api, s)
    try:
        who = api.whoami()
        session.name, session.role = who.get("name"), who.get("role")
    except ApiError as e:
        if e.kind == "not_found":  # an older server without /v1/whoami: the server still enforces roles
            session.name = "dashboard"
        else:
            session.error = e
    st.session_state["_tuneloop_session"] = session
    return session


def current() -> Session:
    session = st.session_state.get("_tuneloop_session")
    if session is None:  # a page run on its own (tests): connect now
        session = connect()
    return session


def show_api_error(e: ApiError, session: Session | None = None) -> None:
    """A banner that says what went wrong and what to do next."""
    url = session.api.base_url if session else "the configured URL"
    if e.kind == "unreachable":
        st.error(
            f"**Server unreachable** — {e.message}.\n\n"
            "Start it with `tuneloop serve` (or `tuneloop up` for server and dashboard together), or point the "
            "dashboard at the right server: `dashboard.server_url` in the config, `TUNELOOP_DASHBOARD__SERVER_URL`, "
            "or *Connection* in the sidebar.",
            icon=":material/cloud_off:",
        )
    elif e.kind == "unauthorized":
        st.error(
            f"**Not authorised** — the server at {url} rejected the dashboard's token: {e.message}.\n\n"
            "Create a token with `tuneloop token create --role label` (or `--role admin` to retrain and "
            "promote) and set `dashboard.token` / `TUNELOOP_DASHBOARD__TOKEN`, or paste it under *Connection* "
            "in the sidebar.",
            icon=":material/lock:",
        )
    elif e.kind == "forbidden":
        st.error(
            f"**Role too low** — {e.message}.\n\nUse a token with the role named above "
            "(`tuneloop token create --role label|admin`).",
            icon=":material/block:",
        )
    else:
        where = f" to {e.path}" if e.path else ""
        st.error(f"**The server answered {e.status or 'an error'}{where}** — {e.message}", icon=":material/error:")


def call(fn: Callable[[], T], what: str = "") -> T | None:
    """Run an API call; on failure show the banner and return None."""
    try:
        return fn()
    except ApiError as e:
        if what and e.kind not in ("unreachable", "unauthorized", "forbidden"):
            e = ApiError(e.kind, f"{what}: {e.message}", e.status, e.path)
        show_api_error(e, st.session_state.get("_tuneloop_session"))
        return None


def sidebar(session: Session) -> None:
    """Who and where we are, and a form to change the connection for this browser session."""
    with st.sidebar:
        if session.error is None:
            who = f"**{session.name}** · role `{session.role}`" if session.role else "connected"
            st.caption(f":green[●] {session.api.base_url}  \n{who}  \nproject `{session.api.project}`")
        else:
            st.caption(f":red[●] {session.api.base_url}  \n{session.error.kind}")
        with st.expander("Connection", icon=":material/settings_ethernet:"):
            state = st.session_state.setdefault(STATE, {})
            with st.form("connection", border=False):
                url = st.text_input("Server URL", value=session.api.base_url)
                token = st.text_input("Token", value="", type="password",
                                      placeholder="unchanged" if session.api.token else "paste a token")
                project = st.text_input("Project", value=session.api.project)
                if st.form_submit_button("Connect", width="stretch"):
                    state["server_url"] = url.strip()
                    if token.strip():
                        state["token"] = token.strip()
                    state["project"] = project.strip() or "default"
                    st.rerun()


# -- formatting -----------------------------------------------------------------------------------
def ago(ts: Any, now: pd.Timestamp | None = None) -> str:
    """'5 min ago', '3 h ago', '2 d ago' for a naive-UTC timestamp."""
    if ts is None or (isinstance(ts, float) and ts != ts) or ts == "":
        return "—"
    t = pd.Timestamp(ts)
    if t.tzinfo is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    now = now or pd.Timestamp.now(tz="UTC").tz_localize(None)
    s = (now - t).total_seconds()
    if s < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{int(s // size)} {unit} ago"
    return f"{int(s)} s ago"


def fmt_ts(ts: Any) -> str:
    if ts is None or ts == "" or (isinstance(ts, float) and ts != ts):
        return "—"
    t = pd.Timestamp(ts)
    return t.strftime("%Y-%m-%d %H:%M UTC")


def pct(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and x != x) else f"{float(x):.1%}"


STATUS_COLORS = {
    "drifted": "#dc2626", "ok": "#059669", "champion": "#059669", "challenger": "#2563eb", "passed": "#2563eb",
    "rejected": "#dc2626", "archived": "#6b7280", "running": "#d97706", "queued": "#d97706", "promoted": "#059669",
    "failed": "#dc2626", "cancelled": "#6b7280", "critical": "#dc2626", "warning": "#d97706",
}


def status_style(value: Any) -> str:
    """Pandas Styler rule: colour a status cell (drifted, champion, failed, ...)."""
    color = STATUS_COLORS.get(str(value))
    return f"color: {color}; font-weight: 600" if color else ""


def refresh_every(session: Session) -> float | None:
    """Auto-refresh interval for fragments (None disables it)."""
    return float(session.settings.dashboard.refresh_seconds) or None
