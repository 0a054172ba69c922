"""The config's sections turned into what `scp/` takes: receiver settings, peer rules, TLS contexts."""

from __future__ import annotations

import ssl

from core.errors import ConfigError
from node.config import Config, TlsSettings
from scp.settings import Credentials, KnownPeer, PeerRules, ReceiverSettings, TlsFiles
from scp.tls import client_context, server_context


def receiver_settings(config: Config) -> ReceiverSettings:
    node = config.node
    return ReceiverSettings(node.ae_title, node.bind_address, node.max_associations, node.network_timeout_seconds,
                            node.max_pdu_size, config.storage.spool_dir, config.storage.accept_any_storage_class)


def peer_rules(config: Config) -> PeerRules:
    """The peers that may send, with the credentials each must present."""
    return PeerRules(config.security.require_known_peers, tuple(
        KnownPeer(peer.ae_title, peer.host,
                  Credentials(peer.username, peer.password) if peer.username is not None else None)
        for peer in config.peers if peer.may_send))


def tls_files(tls: TlsSettings) -> TlsFiles:
    return TlsFiles(tls.certificate, tls.private_key, tls.ca_certificates, tls.require_client_certificate,
                    tls.verify_peer_hostname)


class TlsContexts:
    """The contexts a configuration needs: `server` when it has a TLS listener, `client` when a peer has
    `tls: true`. Raises `ConfigError` listing every file that cannot be loaded."""

    def __init__(self, config: Config):
        problems: list[tuple[str, str]] = []
        self.server: ssl.SSLContext | None = None
        self.client: ssl.SSLContext | None = None
        files = tls_files(config.tls)
        if config.tls.port is not None:
            self.server, found = server_context(files)
            problems += found
        if any(peer.tls for peer in config.peers):
            self.client, found = client_context(files)
            problems += [p for p in found if p not in problems]
        if problems:
            raise ConfigError("tls", problems)
