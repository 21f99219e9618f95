"""A backup that runs out of space reports a full disk (StoreFull, HTTP 507) and leaves the store usable."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys

from tuneloop.monitor.storage import Store

SCRIPT = """
import sys
from tuneloop.monitor.operations import backup
from tuneloop.monitor.storage import Store, StoreFull
store = Store(sys.argv[1])
try:
    backup(store, sys.argv[2])
    print("written")
except StoreFull as e:
    print("StoreFull:", e)
except Exception as e:
    print("other:", type(e).__name__, e)
print("rows after:", store.query("SELECT count(*) AS n FROM predictions")["n"][0])
store.append_predictions([{"id": "after", "text": "still writable", "label": "neutral"}])
print("write after: ok")
"""

LIMIT = 400_000


def _limit_file_size() -> None:  # in the child: EFBIG instead of SIGXFSZ beyond LIMIT bytes per file
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))


def test_a_backup_that_fills_the_disk_says_so_and_leaves_nothing_behind(tmp_path):
    db = tmp_path / "store" / "t.duckdb"
    with Store(db) as store:  # random text: the Parquet export cannot compress below the limit
        store.append_predictions([{"id": str(i), "text": os.urandom(320).hex(), "label": "neutral"}
                                  for i in range(2000)])
    dest = tmp_path / "backups" / "b1"
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(db), str(dest)], capture_output=True, text=True,
                         timeout=300, preexec_fn=_limit_file_size)
    assert "StoreFull:" in out.stdout and "disk is full" in out.stdout, out.stdout + out.stderr
    assert "rows after: 2000" in out.stdout and "write after: ok" in out.stdout, out.stdout + out.stderr
    assert not dest.exists() and not list(dest.parent.iterdir())  # no half-written backup or temp directory
