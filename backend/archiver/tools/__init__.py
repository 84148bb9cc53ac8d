"""Operator tools: one-shots that set a deployment up (`archiver config`: seeding Prefect and S3)."""
