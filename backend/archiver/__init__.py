"""Archival orchestration: S3 landing zone -> verified tar datablocks on the LTS -> retrieval bucket."""
