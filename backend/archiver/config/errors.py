from collections.abc import Callable, Sequence

from pydantic import ValidationError

from archiver.errors import ArchiverError


class ConfigError(ArchiverError):
    """A configuration problem the operator has to fix; the message says where and what."""


def explain(error: ValidationError, source: str, expected_keys: Callable[[Sequence], list[str]]) -> ConfigError:
    """One line per problem: source, [section] key, and what was expected."""
    lines = []
    for problem in error.errors():
        loc = problem["loc"]
        where = f"[{loc[0]}]" + "".join(f" {part}" for part in loc[1:])
        if problem["type"] == "extra_forbidden":
            what = "unknown key; expected one of " + ", ".join(expected_keys(loc[:-1]))
        elif problem["type"] == "missing":
            what = "required value is missing"
        else:
            what = f"{problem['msg']}, got {problem['input']!r}"
        lines.append(f"{source}: {where}: {what}")
    return ConfigError("\n".join(lines))
