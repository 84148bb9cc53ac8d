"""Who a SciCat token belongs to and which groups SciCat puts them in.

SciCat (scicat-backend-next, src/users/users.controller.ts) answers `GET users/my/self` with the user
(ReturnedUserDto: id, username, email, authStrategy) and `GET users/my/identity` with the user's
UserIdentity, whose `profile.accessGroups` are the groups its frontend shows and its access rules
(`currentGroups`) use; a user without an identity record gets an empty answer (no groups). Both need a
valid token: 401 otherwise."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from archiver.config.settings import ScicatSection
from archiver.errors import UserError
from archiver.scicat.client import ScicatError, _excerpt, _prefix_url


class UnknownTokenError(UserError):
    """SciCat does not know the token (expired, revoked, or never issued)."""


@dataclass(frozen=True)
class ScicatUser:
    username: str
    groups: frozenset[str]


def _get(http: httpx.Client, url: str, token: str, call: str) -> httpx.Response:
    try:
        response = http.get(url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    except httpx.HTTPError as e:
        raise ScicatError(call, "the caller's token", f"no answer from {url}: {e.__class__.__name__}: {e}") from e
    if response.status_code in (401, 403):
        raise UnknownTokenError(f"SciCat refused the token (HTTP {response.status_code})")
    if not response.is_success:
        raise ScicatError(
            call,
            "the caller's token",
            f"HTTP {response.status_code}: {_excerpt(response)}",
            response.status_code,
            _excerpt(response),
        )
    return response


def user_of_token(settings: ScicatSection, token: str, timeout_s: float = 15) -> ScicatUser:
    """The user and groups of a SciCat token; UnknownTokenError when SciCat refuses it."""
    api = _prefix_url(settings.endpoint, settings.api_prefix)
    with httpx.Client(timeout=timeout_s) as http:
        user = _get(http, api + "users/my/self", token, "who am I").json() or {}
        identity_answer = _get(http, api + "users/my/identity", token, "my identity")
        identity = identity_answer.json() if identity_answer.content else None
    username = user.get("username") if isinstance(user, dict) else None
    if not isinstance(username, str) or not username:
        raise ScicatError("who am I", "the caller's token", "the answer names no username")
    profile = (identity or {}).get("profile") or {} if isinstance(identity, dict) else {}
    groups = profile.get("accessGroups") or []
    return ScicatUser(username, frozenset(g for g in groups if isinstance(g, str)))
