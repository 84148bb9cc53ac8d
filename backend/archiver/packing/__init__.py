"""Datablocks: planning, streaming tar writing with checksums, verification, retrieval."""
