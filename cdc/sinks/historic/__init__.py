"""The historic sink: versioned upserts into a Postgres schema, and their SQL."""
