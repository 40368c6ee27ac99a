"""Copying tables at a snapshot: the backfill job, its chunks and their state, and reading
COPY output fast.
"""
