"""The local stack, the demo and the incident it replays (not needed in production)."""
