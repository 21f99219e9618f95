"""Label quality on the Label page, and the New model page's role check (Streamlit AppTest, real server)."""

from __future__ import annotations

from test_dashboard import APP, dashboard, env, no_exceptions, texts  # noqa: F401

from tuneloop.dashboard.views import label  # noqa: F401  (the page under test imports cleanly)


def test_label_page_shows_labels_to_review_on_request(dashboard):  # noqa: F811
    at = dashboard("label").run()
    at.switch_page("views/label.py").run()
    no_exceptions(at)
    assert "to review" not in texts(at)  # nothing is computed until asked
    at.toggle(key="label_quality_on").set_value(True).run(timeout=300)
    no_exceptions(at)
    assert "label(s) to review" in texts(at)


def test_new_model_page_needs_the_admin_role(dashboard):  # noqa: F811
    at = dashboard("label").run()
    at.switch_page("views/new_model.py").run()
    no_exceptions(at)
    assert "role 'admin'" in texts(at)
    at = dashboard("admin").run()
    at.switch_page("views/new_model.py").run()
    no_exceptions(at)
    assert "Upload a labelled file" in " ".join(h.value for h in at.subheader)
