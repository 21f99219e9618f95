"""tuneloop dashboard entry point: ``streamlit run dashboard/app.py`` (or ``tuneloop dashboard``).

Connects to the server (see :mod:`tuneloop.dashboard.ui`), then runs the chosen page from
``views/``. Everything shown comes from the server's HTTP API.
"""

from pathlib import Path

import streamlit as st

from tuneloop.dashboard import ui
from tuneloop.dashboard.api import ApiError

VIEWS = Path(__file__).resolve().parent / "views"

st.set_page_config(page_title="tuneloop", page_icon=":material/autorenew:", layout="wide")

session = ui.connect()
pages = st.navigation([
    st.Page(VIEWS / "overview.py", title="Overview", icon=":material/monitoring:", default=True),
    st.Page(VIEWS / "drift.py", title="Drift", icon=":material/ssid_chart:"),
    st.Page(VIEWS / "label.py", title="Label", icon=":material/label:"),
    st.Page(VIEWS / "models.py", title="Models & retraining", icon=":material/model_training:"),
    st.Page(VIEWS / "alerts.py", title="Alerts", icon=":material/notifications:"),
    st.Page(VIEWS / "new_model.py", title="New model", icon=":material/add_circle:", url_path="new-model"),
])
with st.sidebar:
    st.markdown("### :material/autorenew: tuneloop")
ui.sidebar(session)
if session.error is None and not session.allows("label"):
    session.error = ApiError("forbidden", f"the dashboard's token ('{session.name}') has role '{session.role}'; "
                                "reading the dashboard needs role 'label' (labelling, acknowledging) or 'admin' "
                                "(retraining, promoting)", 403)
if session.error is not None:
    st.title(pages.title)
    ui.show_api_error(session.error, session)
    st.stop()
pages.run()
