"""The ClickHouse sink, its client, its value encoders and RowBinary conversion, and the
type map.
"""
