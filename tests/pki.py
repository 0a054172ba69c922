"""A throwaway certificate authority for TLS tests, made with the `openssl` command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.helpers import require_tool, run_tool

_LEAF_EXTENSIONS = """basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
subjectAltName=DNS:localhost,IP:127.0.0.1
"""


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key (PEM files)."""

    certificate: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # the trusted CA's certificate
    node: Identity  # dfnode's certificate
    peer: Identity  # the PACS's certificate
    stranger: Identity  # signed by a CA nobody trusts


def _openssl(*args: str) -> None:
    result = run_tool(require_tool("openssl"), *args)
    assert result.returncode == 0, result.stderr


def _ca(folder: Path, name: str) -> Identity:
    identity = Identity(folder / f"{name}.pem", folder / f"{name}.key")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", str(identity.key), "-out", str(identity.certificate),
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return identity


def _leaf(folder: Path, name: str, ca: Identity) -> Identity:
    identity = Identity(folder / f"{name}.pem", folder / f"{name}.key")
    request, extensions = folder / f"{name}.csr", folder / f"{name}.ext"
    extensions.write_text(_LEAF_EXTENSIONS)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(identity.key),
             "-out", str(request))
    _openssl("x509", "-req", "-in", str(request), "-CA", str(ca.certificate), "-CAkey", str(ca.key),
             "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(identity.certificate))
    return identity


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca, other_ca = _ca(folder, "hospital-ca"), _ca(folder, "other-ca")
    return Pki(ca.certificate, _leaf(folder, "dfnode", ca), _leaf(folder, "pacs", ca),
               _leaf(folder, "stranger", other_ca))
