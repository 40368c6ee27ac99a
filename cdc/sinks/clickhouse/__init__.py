"""The ClickHouse sink, its client, its value encoders (`values`, with the checks of
`limits` and the array literals of `arrays`) and RowBinary conversion, and the type map.
"""
