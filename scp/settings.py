"""What the network side needs to know, as its own small objects: `node/` fills them from the config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ReceiverSettings:
    """The Storage SCP: who it is, where it listens, how much it takes."""

    ae_title: str
    bind_address: str
    max_associations: int
    network_timeout: float  # seconds: for the A-ASSOCIATE-RQ after connecting, then between messages
    max_pdu_size: int  # 0: no limit
    spool_dir: Path  # datasets arrive into partial files here, on the spool's filesystem
    accept_any_storage_class: bool = False  # private and unknown SOP classes too


@dataclass(frozen=True)
class Credentials:
    """The user identity a peer must present (DICOM user identity negotiation, PS3.7 D.3.3.7)."""

    username: str
    password: str | None = None  # None: a username alone (type 1) is enough


@dataclass(frozen=True)
class KnownPeer:
    """A peer that may send: its AE title, the hosts it may connect from, and its credentials."""

    ae_title: str
    host: str
    credentials: Credentials | None = None


@dataclass(frozen=True)
class PeerRules:
    """Who may associate: any AE title from anywhere, or only the known peers from their hosts."""

    require_known_peers: bool
    peers: tuple[KnownPeer, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class TlsFiles:
    """DICOM TLS: the node's certificate and key, the CAs it trusts, and how strictly."""

    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    require_client_certificate: bool = False
    verify_peer_hostname: bool = True
