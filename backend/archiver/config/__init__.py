"""Typed settings, concurrency limits, secrets and the deployments' names (seeded by `tools/seeding.py`)."""
