"""The metrics exporter: archive SLIs from Prefect's history, the LTS and the retrieval bucket (docs/monitoring.md)."""
