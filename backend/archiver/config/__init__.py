"""Typed settings, concurrency limits and secrets, and seeding them into Prefect."""
