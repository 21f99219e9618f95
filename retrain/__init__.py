"""tuneloop.retrain — learning: model loading, training, evaluation, the promotion gate, version directories.

Nothing here opens the DuckDB file or speaks HTTP; the service in ``tuneloop.monitor`` feeds it
DataFrames and Parquet snapshots and reads back version directories.
"""
