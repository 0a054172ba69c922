"""Who may associate: the called AE title, the calling AE title and its address, and the user identity
it presents. Decided on the A-ASSOCIATE-RQ, before any data is read."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
from dataclasses import dataclass, field

from scp import statuses
from scp.settings import Credentials, PeerRules

log = logging.getLogger(__name__)

USERNAME, USERNAME_AND_PASSCODE = 1, 2  # user identity types, PS3.8 D.3.3.7


@dataclass(frozen=True)
class Identity:
    """The user identity sub-item of an A-ASSOCIATE-RQ."""

    kind: int
    primary: bytes
    secondary: bytes = b""
    positive_response_requested: bool = False


@dataclass(frozen=True)
class Refusal:
    """An A-ASSOCIATE-RJ's (result, source, reason) and why, for the audit trail."""

    reason: tuple[int, int, int]
    detail: str


def peer_address(address: str) -> str:
    """The peer's address as the policy and the audit trail know it: "::ffff:10.0.0.5" is "10.0.0.5"."""
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    mapped = getattr(parsed, "ipv4_mapped", None)
    return str(mapped) if mapped is not None else address


def _addresses(host: str) -> set[str]:
    """The IP addresses a configured host name stands for (resolved once, at start-up)."""
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)} | {host}
    except OSError:
        log.warning("peer host %s does not resolve; only the literal name will match", host)
        return {host}


def _same(expected: str, given: bytes) -> bool:
    return hmac.compare_digest(expected.encode(), given)


@dataclass
class PeerPolicy:
    """The node's AE title, and (optionally) only known peers from known hosts, with their credentials."""

    node_ae: str
    require_known_peers: bool
    allowed: dict[str, set[str]] = field(default_factory=dict)  # AE title -> addresses
    credentials: dict[str, Credentials] = field(default_factory=dict)  # AE title -> what it must present

    @classmethod
    def from_rules(cls, node_ae: str, rules: PeerRules) -> PeerPolicy:
        allowed: dict[str, set[str]] = {}
        credentials: dict[str, Credentials] = {}
        for peer in rules.peers:
            allowed.setdefault(peer.ae_title, set()).update(_addresses(peer.host))
            if peer.credentials is not None:
                credentials[peer.ae_title] = peer.credentials
        return cls(node_ae, rules.require_known_peers, allowed, credentials)

    def refusal(self, calling: str, called: str, address: str, identity: Identity | None) -> Refusal | None:
        """Why an association must be rejected, or None if it may proceed."""
        if called != self.node_ae:
            return Refusal(statuses.REJECT_CALLED_AE_NOT_RECOGNISED, f"called AE {called!r} is not {self.node_ae!r}")
        if self.require_known_peers:
            if calling not in self.allowed:
                return Refusal(statuses.REJECT_CALLING_AE_NOT_RECOGNISED, f"calling AE {calling!r} is not a known peer")
            if address not in self.allowed[calling]:
                return Refusal(statuses.REJECT_NO_REASON, f"calling AE {calling!r} is not allowed from {address}")
        expected = self.credentials.get(calling)
        if expected is not None and not _identity_matches(expected, identity):
            return Refusal(statuses.REJECT_USER_IDENTITY,
                           f"calling AE {calling!r} did not present the user identity configured for it")
        return None


def _identity_matches(expected: Credentials, identity: Identity | None) -> bool:
    if identity is None or identity.kind not in (USERNAME, USERNAME_AND_PASSCODE):
        return False
    if not _same(expected.username, identity.primary):
        return False
    if expected.password is None:
        return True
    return identity.kind == USERNAME_AND_PASSCODE and _same(expected.password, identity.secondary)
