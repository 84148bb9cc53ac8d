"""Typed settings, concurrency limits, secrets and the deployments' names; `tools/seeding.py` seeds them into Prefect."""
