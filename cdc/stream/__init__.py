"""The source side: the replication connection and its feedback policy, the change source
(one slot as ordered transactions), slots, publications and which tables they may hold,
exported snapshots, the catalog, and following the schema as it changes.
"""
