"""A tiny keyboard component: number keys, ``s`` and ``u`` on the Label page reach Python.

It is an ``st.components.v2`` component (it runs in the app page, not an iframe), so a key
press anywhere on the page counts, except while typing in an input. Each press triggers a
rerun; ``on_press`` runs first (as a widget callback), so the page then draws the new state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import streamlit as st

_JS = (Path(__file__).resolve().parent / "keyboard.js").read_text(encoding="utf-8")
_component = st.components.v2.component("tuneloop_keyboard", js=_JS)


def listen(keys: list[str], item: str | None, on_press: Callable[[dict[str, Any]], None],
           key: str = "label_keys") -> None:
    """Mount the listener for ``keys``; ``on_press({"key": "1", "item": <id shown when pressed>})`` per press."""

    def callback() -> None:
        state = st.session_state.get(key)
        press = state.get("key") if isinstance(state, Mapping) else getattr(state, "key", None)
        if isinstance(press, dict):
            on_press(press)

    _component(key=key, data={"keys": keys, "item": item}, on_key_change=callback, height=0, width="stretch")
