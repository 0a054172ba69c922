"""Console users: roles, salted scrypt password hashes, and the one-time setup token of a first start.

No user exists until an operator makes one, with `dfnode user add` or with the setup token that
`dfnode serve` prints while the database has no admin: nothing works with a default password.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import delete, func, select

from core.errors import UserError
from node.db import Database, User

log = logging.getLogger(__name__)

Role = Literal["viewer", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "admin")
MIN_PASSWORD_LENGTH = 10
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # about 50 ms and 16 MiB per check


@dataclass(frozen=True)
class Account:
    """A signed-in or listed user, without the hash."""

    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def password_matches(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                                   dklen=len(digest) // 2)
    except ValueError:
        return False
    return hmac.compare_digest(candidate.hex(), digest)


def _check(name: str, password: str, role: str) -> None:
    if not name or len(name) > 64 or not name.replace(".", "").replace("-", "").replace("_", "").isalnum():
        raise UserError("user name: 1 to 64 letters, digits, '.', '-' or '_'")
    if role not in ROLES:
        raise UserError(f"role {role!r}: one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password: at least {MIN_PASSWORD_LENGTH} characters")


def add_user(db: Database, name: str, password: str, role: str, replace: bool = False) -> Account:
    """Add a user (or, with `replace`, set an existing user's password and role)."""
    _check(name, password, role)
    with db.write_lock, db.session() as s, s.begin():
        user = s.scalars(select(User).where(User.name == name)).first()
        if user is not None and not replace:
            raise UserError(f"user {name!r} exists (use --replace to set a new password)")
        if user is None:
            user = User(name=name, created_at=time.time())
            s.add(user)
        user.role, user.password_hash = role, hash_password(password)
    return Account(name, role)  # type: ignore[arg-type]


def remove_user(db: Database, name: str) -> None:
    with db.write_lock, db.session() as s, s.begin():
        if s.execute(delete(User).where(User.name == name)).rowcount == 0:  # type: ignore[attr-defined]
            raise UserError(f"no user {name!r}")


def list_users(db: Database) -> list[Account]:
    with db.session() as s:
        return [Account(u.name, u.role) for u in s.scalars(select(User).order_by(User.name))]  # type: ignore[arg-type]


@functools.cache
def _unknown_user_hash() -> str:
    """A hash to check against for a name with no user, so that an unknown name costs one scrypt too."""
    return hash_password(secrets.token_hex(8))


def authenticate(db: Database, name: str, password: str) -> Account | None:
    """The account when the password is right; None otherwise (the same work either way)."""
    with db.session() as s:
        user = s.scalars(select(User).where(User.name == name)).first()
    stored = user.password_hash if user is not None else _unknown_user_hash()
    if not password_matches(password, stored) or user is None:
        return None
    return Account(user.name, user.role)  # type: ignore[arg-type]


def current_account(db: Database, name: str) -> Account | None:
    """The user's account as the database has it now (removed users and changed roles count at once)."""
    with db.session() as s:
        user = s.scalars(select(User).where(User.name == name)).first()
    return Account(user.name, user.role) if user is not None else None  # type: ignore[arg-type]


def has_admin(db: Database) -> bool:
    with db.session() as s:
        return bool(s.scalar(select(func.count()).select_from(User).where(User.role == "admin")))


class SetupToken:
    """A random token that lets the first admin be made from the console; valid until an admin exists."""

    def __init__(self, db: Database):
        self.db = db
        self.value: str | None = None if has_admin(db) else secrets.token_urlsafe(18)

    @property
    def pending(self) -> bool:
        """Whether the token still works: no admin has been made, here or with `dfnode user add`. When
        the last admin was removed while the node runs, a new token is made and logged, so that the
        sign-in page leads to /setup again instead of to a console nobody can administer."""
        if has_admin(self.db):
            self.value = None
        elif self.value is None:
            self.value = secrets.token_urlsafe(18)
            log.warning("no console admin any more: open /setup with the new one-time setup token %s "
                        "(or run `dfnode user add NAME --role admin`)", self.value)
        return self.value is not None

    def redeem(self, token: str, name: str, password: str) -> Account:
        if self.value is None or has_admin(self.db):
            self.value = None
            raise UserError("the setup token has been used; sign in instead")
        if not hmac.compare_digest(token.strip(), self.value):
            raise UserError("wrong setup token (it is printed in the log of `dfnode serve`)")
        account = add_user(self.db, name, password, "admin")
        self.value = None
        return account
