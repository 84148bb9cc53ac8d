"""Keys of the artifacts the flows make. Prefect's Artifacts page lists keyed artifacts only, each key with its
versions across runs: a dataset's datablock tables of every job it was archived by are found under one key.

Prefect allows lowercase letters, digits and dashes in a key."""

from __future__ import annotations

import hashlib
import re


def artifact_key(kind: str, name: str) -> str:
    """`<kind>-<name>` in the characters Prefect allows, then a short digest of `name` that keeps apart two
    names differing only in the characters replaced (a PID's case, its slash)."""
    readable = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{kind}-{readable}-{digest}" if readable else f"{kind}-{digest}"
