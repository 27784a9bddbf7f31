"""`user:password[,user2:password2]` login lists (--gradio-auth, --api-auth), parsed in one place."""

from __future__ import annotations

from collections.abc import Sequence

from modules.errors import UserError


def parse_credentials(value: str | Sequence[tuple[str, str]] | None, flag: str = "auth") -> list[tuple[str, str]]:
    """The flag's text → [(user, password)]; already-parsed pairs pass through.

    Only the first ':' separates, so a password may contain ':'; empty entries are skipped.
    """
    if value is None:
        return []
    if not isinstance(value, str):
        return [(str(user), str(password)) for user, password in value]
    pairs = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry:
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            raise UserError(f"{flag} entry {entry!r} must look like user:password (several separated by commas).")
        pairs.append((user, password))
    return pairs
