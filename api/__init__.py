"""The coaching API: scorecards written to the director schema only (`api.app` is the app)."""
