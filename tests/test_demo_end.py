"""The demo waits for a verdict while a retrain run is listed as queued, even before the server's runner
has picked it up: ending in that gap would drop the verdict of a retry after a rejection."""

from tuneloop.monitor.demo.plan import DemoPlan
from tuneloop.monitor.demo.report import Timeline
from tuneloop.monitor.demo.scenario import _loop_can_still_close


def test_a_listed_queued_run_keeps_the_demo_waiting(running_server):
    server = running_server(retrain={"enabled": False})
    timeline = Timeline()
    timeline.labels_spent = 300
    timeline.labels_at_run = {1: 300}  # the last run saw every label of the spent budget
    with server.client() as api:
        assert not _loop_can_still_close(api, DemoPlan(label_budget=300), timeline)
        server.store.runs.add_queued("default", "policy: retry after a rejection", lambda run_id: ("", ""))
        assert _loop_can_still_close(api, DemoPlan(label_budget=300), timeline)
        timeline.labels_spent = 250  # budget not spent: labels still come
        assert _loop_can_still_close(api, DemoPlan(label_budget=300), timeline)
