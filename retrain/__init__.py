"""tuneloop.retrain — learning: model loading, training, evaluation, the promotion gate, version directories.

Nothing here opens the DuckDB file or speaks HTTP; the service in ``tuneloop.monitor`` feeds it
DataFrames and Parquet snapshots and reads back version directories.
"""

import os as _os

# Waiting OpenMP threads spin by default and burn the few cores a CPU box has (tiny training
# measured 171 s spinning vs 10.8 s passive on a busy 2-core machine). The one place this is set:
# every module of this package imports torch after this file runs, and an explicit setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
