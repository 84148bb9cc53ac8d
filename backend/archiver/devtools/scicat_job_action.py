"""The development server's stand-in for SciCat v4's `url` job action: an HTTP call when a job is created.

Like SciCat: the URL, each header and the body are Handlebars templates over `{"job": <the stored job>}`;
the job is saved before the call, and only a non-2xx answer (or no answer) counts as failure. Like
`fetch`, a string body without a configured Content-Type goes out as `text/plain;charset=UTF-8`.
Templates support the few forms our job configuration needs: `{{{jsonify job}}}` (the job as indented
JSON), `{{{job.field}}}` (raw) and `{{job.field}}` (HTML-escaped, as Handlebars does).
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from typing import Any

import httpx

DEFAULT_BODY = "{{{jsonify job}}}"
_EXPRESSION = re.compile(r"\{\{\{\s*(.*?)\s*\}\}\}|\{\{\s*(.*?)\s*\}\}")
_PATH = re.compile(r"^job(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class JobAction:
    url: str  # template, e.g. http://archiver-api:8000/jobs
    method: str = "POST"  # SciCat's own default is GET; ours posts, as the archiver API expects
    headers: dict[str, str] = field(default_factory=dict)  # name -> template
    secret_headers: dict[str, str] = field(default_factory=dict, repr=False)  # name -> value, sent as is, never logged
    body: str | None = DEFAULT_BODY  # template; None: no body
    timeout_s: float = 30.0

    def __post_init__(self):
        if self.method not in ("GET", "POST", "PUT", "DELETE"):
            raise ValueError(f"job action method {self.method!r}: SciCat's url action takes GET, POST, PUT or DELETE")
        for template in (self.url, self.body or "", *self.headers.values()):
            check_template(template)

    async def perform(self, job: dict) -> dict:
        """Make the call for `job`; the outcome for the request log: `url`, `method`, `status` and `answer`, or
        `error`."""
        context = {"job": job}
        url = render(self.url, context)
        headers = {name: render(value, context) for name, value in self.headers.items()} | self.secret_headers
        body = render(self.body, context) if self.body is not None else None
        if body is not None and not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "text/plain;charset=UTF-8"
        outcome: dict[str, Any] = {"url": url, "method": self.method}
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as http:
                response = await http.request(
                    self.method, url, headers=headers, content=body.encode() if body is not None else None
                )
        except httpx.HTTPError as e:
            outcome["error"] = f"{e.__class__.__name__}: {e}"
            return outcome
        outcome["status"] = response.status_code
        outcome["answer"] = response.text[:1000]
        if not response.is_success:
            outcome["error"] = f"answered HTTP {response.status_code}"
        return outcome


def check_template(template: str) -> None:
    """ValueError naming the first expression this small Handlebars stand-in cannot render."""
    for match in _EXPRESSION.finditer(template):
        expression = match[1] if match[1] is not None else match[2]
        if not (_PATH.match(expression) or expression == "jsonify job"):
            raise ValueError(
                f"template expression {{{{{expression}}}}} in {template!r} is not supported: "
                "use {{{jsonify job}}}, {{job.field}} or {{{job.field}}}"
            )


def render(template: str, context: dict) -> str:
    def value(match: re.Match) -> str:
        raw = match[1] is not None
        expression = match[1] if raw else match[2]
        if expression == "jsonify job":
            text = json.dumps(context["job"], indent=3)
        else:
            text = _text(_lookup(context, expression.split(".")))
        return text if raw else html.escape(text).replace("`", "&#x60;").replace("=", "&#x3D;")

    return _EXPRESSION.sub(value, template)


def _lookup(context: Any, path: list[str]) -> Any:
    for name in path:
        context = context.get(name) if isinstance(context, dict) else None
    return context


def _text(value: Any) -> str:
    """A value as Handlebars prints it: nothing for a missing one, JavaScript's spelling of the others."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "[object Object]"
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return str(value)
