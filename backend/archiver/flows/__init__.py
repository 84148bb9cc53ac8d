"""Prefect flows, tasks and hooks: orchestration of the packing, storage and SciCat layers."""
