"""The `filter` query parameter of SciCat's list endpoints (`GET /api/v3/datablocks`), as the development
server reads it. Facts from scicat-backend-next (check them against the SciCat you run):

- The parameter is JSON `{"where", "fields", "limits": {"limit", "skip", "order"}}`, parsed by SciCat's
  FilterPipe with a bare `JSON.parse`: a malformed one throws outside any HttpException, so NestJS answers
  500 `{"statusCode": 500, "message": "Internal server error"}` (SciCat issue #2172; the fix, PR #2175, went
  into the v4 FilterValidationPipe only).
- `parseLimitFilters`: `limit` and `skip` count only when truthy (no `limits`, or `limit: 0`: 100 items, skip
  0); `order` is `"field:asc"` or `"field:desc"`, any other form sorts nothing (Mongo's natural order).
  There is no upper bound on `limit`.
- `fields` is a Mongo projection: a list of names, or an object whose true-valued keys are taken; `_id` is
  always kept; an empty one keeps every field.
- `where` is a Mongo query after loopback operators are renamed (`inq` -> `$in`, ...).

Anything SciCat's answer to is not known or this server does not model (a `limit` that is not a number, a
`where` operator besides equality and `inq`/`$in`) is refused with a 400 naming it: stricter than SciCat,
never laxer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from archiver.errors import ArchiverError

DEFAULT_LIMIT = 100  # parseLimitFilters' default
ORDER_DIRECTIONS = ("asc", "desc")
FILTER_KEYS = ("where", "include", "fields", "limits")


class FilterRefused(ArchiverError):
    """SciCat would answer `status` with `body`."""

    def __init__(self, status: int, body: dict):
        self.status = status
        self.body = body
        super().__init__(body.get("message"))


def _internal_error() -> FilterRefused:
    return FilterRefused(500, {"statusCode": 500, "message": "Internal server error"})


def _refused(message: str) -> FilterRefused:
    return FilterRefused(400, {"statusCode": 400, "message": message, "error": "Bad Request"})


@dataclass(frozen=True)
class ListFilter:
    where: dict[str, Any] = field(default_factory=dict)
    fields: tuple[str, ...] = ()
    limit: int = DEFAULT_LIMIT
    skip: int = 0
    order: tuple[str, str] | None = None  # (field, "asc" | "desc")


def parse_filter(text: str | None) -> ListFilter:
    """The filter SciCat would apply to `?filter=text`; raises FilterRefused with SciCat's answer."""
    if text is None or text == "":
        return ListFilter()
    try:
        value = json.loads(text)
    except ValueError:
        raise _internal_error() from None
    if value is None:
        return ListFilter()
    if not isinstance(value, dict):
        raise _refused(f"filter must be a JSON object, got {text!r}")
    unknown = [key for key in value if key not in FILTER_KEYS]
    if unknown:
        raise _refused(f"filter keys {unknown} are not SciCat's ({', '.join(FILTER_KEYS)})")
    limits = value.get("limits") or {}
    if not isinstance(limits, dict):
        raise _refused(f"limits must be an object with limit, skip, order; got {limits!r}")
    return ListFilter(
        where=_where(value.get("where")),
        fields=_fields(value.get("fields")),
        limit=_count(limits, "limit") or DEFAULT_LIMIT,
        skip=_count(limits, "skip"),
        order=_order(limits.get("order")),
    )


def _count(limits: dict, name: str) -> int:
    value = limits.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _refused(f"limits.{name} must be a non-negative integer, got {value!r}")
    return value


def _order(value: Any) -> tuple[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _refused(f"limits.order must be a string 'field:asc' or 'field:desc', got {value!r}")
    name, _, direction = value.partition(":")
    return (name, direction) if direction in ORDER_DIRECTIONS else None


def _fields(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, dict):
        value = [name for name, keep in value.items() if keep]
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise _refused(f"fields must be a list of field names, got {value!r}")
    return tuple(value)


def _where(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _refused(f"where must be an object, got {value!r}")
    for name, condition in value.items():
        if isinstance(condition, dict) and set(condition) - {"inq", "$in"}:
            raise _refused(f"where.{name}: the development server models equality and inq only, got {condition!r}")
    return value


def matches(document: dict, where: dict[str, Any]) -> bool:
    for name, condition in where.items():
        if isinstance(condition, dict):
            if not any(document.get(name) in values for values in condition.values()):
                return False
        elif document.get(name) != condition:
            return False
    return True


def _mongo_order(value: Any) -> tuple:
    """Mongo's sort order across types: missing and null first, then numbers, strings, the rest."""
    if value is None:
        return (0,)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, json.dumps(value, sort_keys=True))


def apply(documents: list[dict], chosen: ListFilter) -> list[dict]:
    """One page of `documents` (in insertion order, as Mongo's natural order) as SciCat would answer it."""
    found = [d for d in documents if matches(d, chosen.where)]
    if chosen.order is not None:
        name, direction = chosen.order
        found.sort(key=lambda d: _mongo_order(d.get(name)), reverse=direction == "desc")
    page = found[chosen.skip : chosen.skip + chosen.limit]
    if not chosen.fields:
        return page
    kept = ("_id", *chosen.fields)
    return [{name: d[name] for name in kept if name in d} for d in page]
