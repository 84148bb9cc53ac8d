"""Who may upload what: the caller's SciCat token (or a service account's) and the dataset's owner group.

SciCat lets a user change a dataset when its `ownerGroup` is one of the user's groups
(casl-ability.factory.ts: DatasetUpdateOwner on `ownerGroup in currentGroups`); `accessGroups` only grant
reading. The upload API applies exactly that rule. Admin groups are not known here: an administrator
uploads into a dataset through its owner group or a service account."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException

from archiver.config.errors import ConfigError
from archiver.config.secrets import read_secret, secret_path, secret_spec
from archiver.scicat.client import ScicatError
from archiver.scicat.identity import UnknownTokenError, user_of_token

log = logging.getLogger("archiver.api.uploads")

SERVICE_ACCOUNTS_SPEC = secret_spec("ARCHIVER_UPLOAD_ACCOUNTS_FILE")


@dataclass(frozen=True)
class Caller:
    name: str
    groups: frozenset[str]
    service_account: bool = False


@dataclass(frozen=True)
class ServiceAccount:
    name: str
    token: str
    groups: frozenset[str]

    def __repr__(self) -> str:
        return f"ServiceAccount({self.name!r}, token=***, groups={sorted(self.groups)})"


def parse_service_accounts(text: str, source: str) -> list[ServiceAccount]:
    """One account a line, `name:token:group,group`; blank lines and `#` comments skipped."""
    accounts = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        token, _, groups = rest.partition(":")
        if not name or len(token) < 16:
            raise ConfigError(
                f"{source} line {number}: expected 'name:token:group,group' with a token of at least "
                "16 characters (the line is not shown: it holds a token)"
            )
        accounts.append(ServiceAccount(name, token, frozenset(g.strip() for g in groups.split(",") if g.strip())))
    return accounts


def load_service_accounts(secrets_dir: Path) -> list[ServiceAccount]:
    """The service accounts of ARCHIVER_UPLOAD_ACCOUNTS_FILE; none when the file does not exist."""
    path = secret_path(SERVICE_ACCOUNTS_SPEC, secrets_dir)
    if not path.exists():
        return []
    return parse_service_accounts(read_secret(SERVICE_ACCOUNTS_SPEC, secrets_dir), str(path))


def bearer_token(authorization: str | None) -> str:
    kind, _, token = (authorization or "").partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise HTTPException(
            401, "send your SciCat token as 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
        )
    return token.strip()


def identify(authorization: str | None, accounts: list[ServiceAccount], scicat_settings) -> Caller:
    """The caller behind the Authorization header: a service account, else whoever SciCat says owns the token."""
    token = bearer_token(authorization)
    for account in accounts:
        if hmac.compare_digest(account.token.encode(), token.encode("utf-8", "surrogateescape")):
            return Caller(account.name, account.groups, service_account=True)
    try:
        user = user_of_token(scicat_settings, token)
    except UnknownTokenError:
        raise HTTPException(
            401,
            "SciCat does not know this token (expired or not issued by it); log in to SciCat "
            "again and send the new token",
            {"WWW-Authenticate": "Bearer"},
        ) from None
    except ScicatError as e:
        raise HTTPException(502, f"SciCat could not tell who the caller is: {e}") from None
    return Caller(user.username, user.groups)


def require_write(caller: Caller, pid: str, owner_group: str | None) -> None:
    """403 unless the caller is in the dataset's owner group."""
    if not owner_group or owner_group not in caller.groups:
        log.warning(
            "refused upload access to dataset %s for %s (not in its owner group %r)", pid, caller.name, owner_group
        )
        raise HTTPException(
            403,
            f"{caller.name!r} may not write dataset {pid!r}: SciCat lets only members of its owner group "
            f"{owner_group!r} change it, and SciCat does not list {caller.name!r} in that group",
        )
