"""The `tuneloop demo` scenario: a real drifting tweet stream through the whole loop.

``data`` builds the topic-split corpus and the stream, ``plan`` holds the scenario's knobs and
settings, ``models`` trains and caches v1 and the oracle, ``scenario`` runs the loop through the
public API, and ``report`` measures it. :func:`run_demo` is the entry point the CLI calls.
"""

from tuneloop.monitor.demo.plan import DemoPlan, demo_settings
from tuneloop.monitor.demo.report import loop_report
from tuneloop.monitor.demo.scenario import run_demo

__all__ = ["DemoPlan", "demo_settings", "loop_report", "run_demo"]
