"""The node's configuration: one pydantic model, loaded and validated once, then passed down.

Unknown keys are errors. Relative paths are relative to the config file's folder.
`load_config` raises `ConfigError` listing every problem with its key path.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import typing
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import ConfigError

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

Port = Annotated[int, Field(ge=1, le=65535)]


def _check_ae_title(value: str) -> str:
    value = value.strip()
    if not _AE_TITLE.match(value):
        raise ValueError("an AE title is 1 to 16 printable ASCII characters, no backslash")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Role(StrEnum):
    """What one node process does; several processes sharing one database and spool divide the work."""

    ALL = "all"
    RECEIVER = "receiver"  # the Storage SCP, the index, retention
    EVALUATOR = "evaluator"  # the models: claims due series, writes the reports
    DELIVERER = "deliverer"  # claims deliveries and sends the reports


class NodeSettings(_Strict):
    """The node's own application entity."""

    ae_title: str = "DFNODE"
    bind_address: str = "0.0.0.0"
    port: Port = 11112
    max_associations: int = Field(10, ge=1, le=200)
    network_timeout_seconds: float = Field(60, gt=0)
    max_pdu_size: int = Field(0, ge=0, description="0: no limit, the fastest on receive")
    drain_seconds: float = Field(30, ge=0, description="on stop, how long open associations may finish")
    name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=100,
                      pattern=r"^[A-Za-z0-9._-]+$",
                      description="this process's name in a deployment sharing one database: the holder of the "
                                  "leases it takes (each process needs its own; a restart under the same name "
                                  "takes back what it held)")
    roles: list[Role] = Field(default_factory=lambda: [Role.ALL], min_length=1,
                              description="what this process does: all, or receiver, evaluator, deliverer")
    lease_seconds: float = Field(30.0, ge=1, description="how long a claim on a series or a delivery lasts "
                                                         "without being extended (it is, every third of it)")

    _ae = field_validator("ae_title")(_check_ae_title)

    def runs(self, role: Role) -> bool:
        return Role.ALL in self.roles or role in self.roles


class StorageSettings(_Strict):
    """Where the spool, the reports and the database live."""

    data_dir: Path = Path("var")
    max_spool_bytes: int = Field(0, ge=0, description="cap on received instances kept; 0: no cap")
    min_free_bytes: int = Field(256 * 1024 * 1024, ge=0,
                                description="refuse instances (0xA700) when the disk would have less free")
    retention_hours: float = Field(24.0, ge=0, description="keep received instances this long after their "
                                                           "report was delivered to every destination")
    retention_check_seconds: float = Field(60.0, gt=0, description="how often retention looks for expired files")
    accept_any_storage_class: bool = Field(False, description="also store instances of private and unknown "
                                                              "SOP classes (never evaluated, kept like the rest)")

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    database_url: str | None = Field(None, description="the database (SQLAlchemy URL): none for the SQLite file "
                                                       "under data_dir; postgresql+psycopg://USER@HOST/NAME for "
                                                       "several nodes sharing one")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith("postgresql://"):  # SQLAlchemy's default driver for it is not installed
            value = "postgresql+psycopg://" + value.removeprefix("postgresql://")
        if not value.startswith(("sqlite:///", "postgresql+psycopg://")):
            raise ValueError("the node keeps its index in SQLite (sqlite:///PATH) or PostgreSQL "
                             "(postgresql+psycopg://USER:PASSWORD@HOST:PORT/NAME)")
        return value

    @property
    def database(self) -> str:
        """The database's SQLAlchemy URL: `database_url`, or the SQLite file under `data_dir`."""
        return self.database_url or f"sqlite:///{self.data_dir / 'dfnode.sqlite'}"

    @property
    def model_cache_dir(self) -> Path:
        """Models exported for onnxruntime, named by their weights' hash."""
        return self.data_dir / "model-cache"


class SecuritySettings(_Strict):
    """Who may open associations with the node."""

    require_known_peers: bool = True


class TlsSettings(_Strict):
    """DICOM TLS: a TLS listener beside (or instead of) the plain one, and the files for TLS to peers
    that have `tls: true`. Certificates and keys are PEM files."""

    port: Port | None = Field(None, description="listen with TLS here (2762 is DICOM's TLS port); none: no "
                                                "TLS listener")
    plain_listener: bool = Field(True, description="also listen without TLS on node.port")
    certificate: Path | None = Field(None, description="the node's certificate (chain), shown to peers")
    private_key: Path | None = None
    ca_certificates: Path | None = Field(None, description="the CAs whose certificates the node trusts")
    require_client_certificate: bool = Field(False, description="refuse TLS peers without a certificate "
                                                                "from ca_certificates")
    verify_peer_hostname: bool = Field(True, description="when sending, the peer's certificate must name "
                                                         "its host")
    handshake_timeout_seconds: float = Field(10.0, gt=0, description="a TLS client that has not finished "
                                                                     "its handshake by then is dropped")


class Peer(_Strict):
    """A remote application entity: may send studies, may receive results, or both."""

    name: str = Field(min_length=1)
    ae_title: str
    host: str = Field(min_length=1)
    port: Port | None = None
    may_send: bool = True
    dicomweb_url: str | None = Field(None, description="STOW-RS root (http[s]://host:port/dicom-web): "
                                                        "results go there instead of by C-STORE")
    tls: bool = Field(False, description="send to this peer over DICOM TLS (`port` is its TLS port)")
    max_associations: int = Field(1, ge=1, le=16, description="associations the node opens to this peer at "
                                                               "once when sending")
    username: str | None = Field(None, min_length=1, description="the user identity this peer must present "
                                                                 "when it associates; none: any or none")
    password: str | None = Field(None, min_length=1, description="and its passcode; none: the username is enough")

    @field_validator("dicomweb_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("a DICOMweb URL starts with http:// or https:// and names a host")
        return value.rstrip("/") if value else value

    _ae = field_validator("ae_title")(_check_ae_title)

    @model_validator(mode="after")
    def _password_needs_username(self) -> Peer:
        if self.password is not None and self.username is None:
            raise ValueError("a password is checked only with its username: set username too")
        return self


class ModelRef(_Strict):
    """A model the routes may use: its card, which names the weights file."""

    card: Path


class RouteMatch(_Strict):
    """What a series must look like for the route to take it. Every given field must match."""

    modalities: list[str] = Field(default_factory=list)
    body_parts: list[str] = Field(default_factory=list)
    description_keywords: list[str] = Field(default_factory=list)
    include_unknown_body_part: bool = False
    sop_classes: list[str] = Field(default_factory=list)
    calling_ae_titles: list[str] = Field(default_factory=list)

    @field_validator("modalities", "body_parts")
    @classmethod
    def _upper(cls, values: list[str]) -> list[str]:
        return [v.strip().upper() for v in values]

    @field_validator("description_keywords")
    @classmethod
    def _lower(cls, values: list[str]) -> list[str]:
        return [v.strip().lower() for v in values if v.strip()]

    @field_validator("sop_classes")
    @classmethod
    def _uids(cls, values: list[str]) -> list[str]:
        for v in values:
            if not _UID.match(v):
                raise ValueError(f"{v!r} is not a UID")
        return values


class Route(_Strict):
    """A routing rule: series that match go to `model`, and the SR goes to `destinations`."""

    name: str = Field(min_length=1)
    match: RouteMatch = Field(default_factory=RouteMatch)
    model: str
    series_stable_seconds: float = Field(5.0, ge=0)
    destinations: list[str] = Field(default_factory=list)
    # CT: score every n-th slice and the neighbours of suspicious ones (1: every slice)
    slice_stride: int = Field(1, ge=1, le=16)
    early_scoring_seconds: float | None = Field(
        1.0, ge=0, description="once nothing has arrived for this long, score what the series has while it "
                               "waits to be stable (every-slice routes); none: score only at the stable time")


class SendingSettings(_Strict):
    """C-STORE SCU behaviour: retries with exponential backoff."""

    max_attempts: int = Field(12, ge=1)
    initial_backoff_seconds: float = Field(2.0, gt=0)
    max_backoff_seconds: float = Field(300.0, gt=0)
    timeout_seconds: float = Field(30.0, gt=0)
    poll_seconds: float = Field(0.5, gt=0)
    batch_size: int = Field(50, ge=1, description="reports sent to one peer over one association, at most")


class ReportSettings(_Strict):
    """What is sent back for each evaluated series besides the SR."""

    key_image: bool = Field(True, description="also send a Secondary Capture key image with the verdict "
                                              "burned in and the suspicious region outlined")


class LoggingSettings(_Strict):
    """What `dfnode serve` writes to stderr."""

    format: Literal["text", "json"] = Field("text", description="json: one object per line, audit fields as keys")
    level: Literal["debug", "info", "warning", "error"] = "info"


class ConsoleSettings(_Strict):
    """The web console that `dfnode serve` serves: studies, queue, peers, an upload check, /metrics."""

    enabled: bool = True
    bind_address: str = Field("127.0.0.1", description="loopback by default; a reverse proxy adds TLS")
    port: int = Field(8080, ge=0, le=65535)
    max_upload_megabytes: float = Field(64.0, gt=0)
    session_hours: float = Field(12.0, gt=0)


class InferenceSettings(_Strict):
    """How the models run."""

    batch_size: int = Field(8, ge=1, le=256)
    threads: int = Field(0, ge=0, description="torch intra-op threads; 0: all cores")
    device: str = "cpu"
    backend: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto", description="auto: onnxruntime on a CPU when installed (about 2x eager PyTorch), else torch")
    preparing_threads: int = Field(0, ge=0, le=64, description="threads (or processes) reading and preparing "
                                   "images ahead of the model; 0: one on a CPU, all cores but one on a GPU")
    preparing_in: Literal["threads", "processes"] = Field(
        "threads", description="processes: a GPU node's reading and preparing runs on every core, not under "
                               "one Python lock (each process about 60 MB)")

    def preparing_thread_count(self) -> int:
        """`preparing_threads`, with 0 resolved: on a CPU the model needs the cores; a GPU waits on them."""
        if self.preparing_threads:
            return self.preparing_threads
        return 1 if self.device == "cpu" else max(1, (os.cpu_count() or 2) - 1)


class Config(_Strict):
    """The whole configuration of one node."""

    node: NodeSettings = Field(default_factory=NodeSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    peers: list[Peer] = Field(default_factory=list)
    models: dict[str, ModelRef] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)
    sending: SendingSettings = Field(default_factory=SendingSettings)
    reports: ReportSettings = Field(default_factory=ReportSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)

    def peer(self, name: str) -> Peer:
        """The peer called `name` (validated to exist for every route destination)."""
        return next(p for p in self.peers if p.name == name)

    def route(self, name: str) -> Route | None:
        return next((r for r in self.routes if r.name == name), None)

    def routed_models(self) -> dict[str, ModelRef]:
        """The models some route uses: the node refuses to start if one cannot be loaded."""
        used = {r.model for r in self.routes}
        return {name: ref for name, ref in self.models.items() if name in used}

    def with_roles(self, roles: list[str]) -> Config:
        """The same config for a process with other roles (`dfnode serve --role`)."""
        return self.model_copy(update={"node": self.node.model_copy(update={"roles": [Role(r) for r in roles]})})


def _cross_check(config: Config) -> list[tuple[str, str]]:
    """Rules that span sections: names that must exist, names that must be unique."""
    problems: list[tuple[str, str]] = []
    peer_names = [p.name for p in config.peers]
    for i, name in enumerate(peer_names):
        if name in peer_names[:i]:
            problems.append((f"peers.{i}.name", f"duplicate peer name {name!r}"))
    route_names = [r.name for r in config.routes]
    for i, route in enumerate(config.routes):
        if route.name in route_names[:i]:
            problems.append((f"routes.{i}.name", f"duplicate route name {route.name!r}"))
        if route.model not in config.models:
            known = ", ".join(sorted(config.models)) or "none"
            problems.append((f"routes.{i}.model", f"unknown model {route.model!r} (models: {known})"))
        for j, dest in enumerate(route.destinations):
            peer = next((p for p in config.peers if p.name == dest), None)
            if peer is None:
                problems.append((f"routes.{i}.destinations.{j}", f"unknown peer {dest!r}"))
            elif peer.port is None and peer.dicomweb_url is None:
                problems.append((f"routes.{i}.destinations.{j}",
                                 f"peer {dest!r} has neither a port nor a dicomweb_url to send to"))
    problems += _tls_cross_check(config)
    if config.sending.initial_backoff_seconds > config.sending.max_backoff_seconds:
        problems.append(("sending.initial_backoff_seconds", "is larger than max_backoff_seconds"))
    return problems


def _tls_cross_check(config: Config) -> list[tuple[str, str]]:
    """The files each TLS use needs (whether they load is checked when the contexts are built)."""
    tls, problems = config.tls, []
    if tls.port is not None:
        for key in ("certificate", "private_key"):
            if getattr(tls, key) is None:
                problems.append((f"tls.{key}", "is needed for the TLS listener (tls.port)"))
        if tls.port == config.node.port and tls.plain_listener:
            problems.append(("tls.port", "is node.port, where the plain listener is; use another port or set "
                                         "tls.plain_listener to false"))
    elif not tls.plain_listener:
        problems.append(("tls.plain_listener", "is false but tls.port is not set: the node would not listen"))
    if tls.require_client_certificate and tls.ca_certificates is None:
        problems.append(("tls.ca_certificates", "is needed to check client certificates"))
    if (tls.certificate is None) != (tls.private_key is None):
        problems.append(("tls.private_key" if tls.private_key is None else "tls.certificate",
                         "certificate and private_key go together"))
    for i, peer in enumerate(config.peers):
        if peer.tls and peer.dicomweb_url is not None:
            problems.append((f"peers.{i}.tls", "applies to DICOM associations; a dicomweb_url says its own "
                                               "scheme (https://)"))
    return problems


def _resolve_paths(config: Config, base: Path) -> Config:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    def resolve_optional(p: Path | None) -> Path | None:
        return None if p is None else resolve(p)

    storage = config.storage.model_copy(update={"data_dir": resolve(config.storage.data_dir)})
    models = {n: m.model_copy(update={"card": resolve(m.card)}) for n, m in config.models.items()}
    tls = config.tls.model_copy(update={k: resolve_optional(getattr(config.tls, k))
                                        for k in ("certificate", "private_key", "ca_certificates")})
    return config.model_copy(update={"storage": storage, "models": models, "tls": tls})


def _section_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys valid in the section at `loc` (list indices and the names in a mapping of sections skipped)."""
    model: Any = Config
    for part in loc:
        field = model.model_fields.get(str(part)) if not isinstance(part, int) else None
        if field is None:
            continue  # a list index, or a name in a mapping (models: {knee: ...}): the same section follows
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        candidates += [a for c in candidates for a in typing.get_args(c)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def _message(err: Any) -> str:
    """pydantic's message, in the user's words where it has a better one."""
    if err["type"] == "missing":
        return "required, and missing"
    if err["type"] != "extra_forbidden":
        return str(err["msg"])
    *section, key = err["loc"]
    valid = _section_keys(tuple(section))
    nearest = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    if nearest:
        return f"unknown key; did you mean {nearest[0]!r}?"
    return "unknown key" + (f" (valid here: {', '.join(valid)})" if valid else "")


def parse_config(raw: Any, source: str = "config", base_dir: Path | None = None) -> Config:
    """Validate a parsed YAML document; raise `ConfigError` with every problem found."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [("(top)", "the configuration must be a mapping")])
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems = [(".".join(str(p) for p in err["loc"]) or "(top)", _message(err)) for err in exc.errors()]
        raise ConfigError(source, problems) from None
    problems = _cross_check(config)
    if problems:
        raise ConfigError(source, problems)
    return _resolve_paths(config, base_dir or Path.cwd())


def load_config(path: Path | str) -> Config:
    """Read, validate and resolve a config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [("(file)", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [("(file)", f"not valid YAML: {exc}")]) from None
    return parse_config(raw, str(path), path.resolve().parent)
