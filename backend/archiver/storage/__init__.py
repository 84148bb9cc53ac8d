"""Adapters to the storage the archiver moves data between: S3 buckets and the LTS filesystem."""
