"""HTTP basic auth for the API (`--api-auth user:pass[,user2:pass2]`), as A1111 does it."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from modules.credentials import parse_credentials as _parse

Credentials = list[tuple[str, str]]
# Module level, not inside auth_dependency: FastAPI resolves the (postponed) annotation below by
# name in this module's globals.
_BASIC = HTTPBasic(auto_error=False)


def parse_credentials(auth: str | Sequence[tuple[str, str]] | None) -> Credentials:
    """`"user:pass,user2:pass2"` (the flag's text) or webui.py's parsed pairs → [(user, password)]."""
    return _parse(auth, "--api-auth")


def _matches(given: HTTPBasicCredentials, credentials: Credentials) -> bool:
    # Every pair is compared, in constant time per pair, so the answer time says nothing about
    # which user exists or how much of a password was right.
    user, password = given.username.encode("utf-8"), given.password.encode("utf-8")
    ok = False
    for known_user, known_password in credentials:
        user_ok = secrets.compare_digest(user, known_user.encode("utf-8"))
        password_ok = secrets.compare_digest(password, known_password.encode("utf-8"))
        ok |= user_ok and password_ok
    return ok


def auth_dependency(credentials: Credentials) -> Callable[..., None]:
    """A FastAPI dependency that answers 401 with `WWW-Authenticate: Basic` unless a pair matches."""

    def check(given: Annotated[HTTPBasicCredentials | None, Depends(_BASIC)]) -> None:
        if given is None or not _matches(given, credentials):
            raise HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail="Incorrect username or password",
                                headers={"WWW-Authenticate": "Basic"})

    return check
