"""``python -m tuneloop.monitor.cli``."""

import sys

from tuneloop.monitor.cli import run

sys.exit(run())
