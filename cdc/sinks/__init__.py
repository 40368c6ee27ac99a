"""Targets of the change stream: the historic Postgres schema and ClickHouse."""
