"""tuneloop.dashboard — the Streamlit app; it only talks to the server over HTTP."""
