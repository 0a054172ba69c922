"""The running node: loads the models, starts the Storage SCP, the evaluator and the deliverer.

`Node` is what tests start in-process; `run_forever` is `dfnode serve`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from pydicom.uid import generate_uid
from pynetdicom.association import Association

from core.durable import name_partial_files
from core.errors import ConfigError, ModelLoadError
from core.events import AuditEventName
from inference.letterbox import compiled_box_means_built
from inference.model import Classifier, load_classifier, torch_threads_for
from node.audit import Audit
from node.clean_stop import CleanStopMark
from node.config import Config, Role
from node.db import Database
from node.delivery import Deliverer
from node.evaluation import Evaluator
from node.heap import freeze_start_up_objects
from node.ingest import Ingest
from node.metrics import Metrics
from node.network import TlsContexts, peer_rules, receiver_settings
from node.ports import check_ports_free
from node.predict import Models
from node.priority import EVALUATION_NICENESS, at_lower_priority, lower_this_thread
from node.retention import Retention
from node.spool_budget import SpoolBudget
from node.spool_recovery import index_spooled_instances
from node.users import SetupToken
from node.web.app import ConsoleContext, build_app
from node.web.server import ConsoleServer
from scp.admission import PeerPolicy
from scp.server import NodeAssociationServer
from scp.spool import remove_partial_files
from scp.storage_scp import TlsListener, start_storage_scp

log = logging.getLogger(__name__)


MIN_TRUSTED_AUC = 0.9


def weak_model_warnings(classifiers: dict[str, Classifier]) -> list[str]:
    """Models whose card reports a test ROC AUC below MIN_TRUSTED_AUC (or none): their verdicts
    carry little information, and an admin must know before a radiologist relies on them."""
    warnings = []
    for name, classifier in classifiers.items():
        auc = classifier.card.metrics.get("roc_auc")
        if not isinstance(auc, int | float) or auc < MIN_TRUSTED_AUC:
            shown = f"{auc:.3f}" if isinstance(auc, int | float) else "not recorded"
            warnings.append(f"model {name!r}: test ROC AUC {shown} is below {MIN_TRUSTED_AUC}; its verdicts are "
                            "not reliable (see the model card and the README's 'Models')")
    return warnings


def load_models(config: Config) -> dict[str, Classifier]:
    """Every routed model, verified against its card; `ModelLoadError` names the file at fault."""
    if config.inference.threads:
        torch.set_num_threads(config.inference.threads)
    inference = config.inference
    classifiers = {name: load_classifier(ref.card, inference.device, inference.batch_size, inference.backend,
                                         config.storage.model_cache_dir, inference.threads)
                   for name, ref in config.routed_models().items()}
    torch.set_num_threads(torch_threads_for(list(classifiers.values()), inference.threads))
    for warning in weak_model_warnings(classifiers):
        log.warning(warning)
    return classifiers


def check_models(config: Config) -> tuple[list[tuple[str, str]], list[str]]:
    """Problems loading the routed models, as (key path, message) like config problems, and warnings."""
    problems, loaded = [], {}
    for name, ref in config.routed_models().items():
        try:
            loaded[name] = load_classifier(ref.card)
        except ModelLoadError as exc:
            problems.append((f"models.{name}.card", str(exc)))
    return problems, weak_model_warnings(loaded)


def _device_uid(data_dir: Path) -> str:
    """The node's Device Observer UID, made once and kept with its data."""
    path = data_dir / "device-uid"
    if path.is_file():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    path.write_text(uid + "\n")
    return uid


class _Loop(threading.Thread):
    """Runs `step` until stopped, then waits `period()` seconds or until `wake` is set; `niceness` lowers
    the thread's CPU priority (and that of the threads it starts)."""

    def __init__(self, name: str, step: Callable[[], int], wake: threading.Event, stop: threading.Event,
                 period: Callable[[], float], niceness: int = 0):
        super().__init__(name=name, daemon=True)
        self.step, self.wake, self.stop_event, self.period, self.niceness = step, wake, stop, period, niceness

    def run(self) -> None:
        lower_this_thread(self.niceness)
        while not self.stop_event.is_set():
            try:
                self.step()
            except Exception:  # keep serving; the cause is in the log
                log.exception("%s loop failed; continuing", self.name)
            self.wake.wait(self.period())
            self.wake.clear()


class Node:
    """One running node. `start()` returns once it listens; `stop()` shuts it down."""

    def __init__(self, config: Config, classifiers: dict[str, Classifier] | None = None):
        self.config = config
        self.tls = TlsContexts(config)  # a TLS file that cannot be loaded stops the start here
        # loaded on a nicer thread: the inference libraries' thread pools inherit its priority
        evaluates = config.node.runs(Role.EVALUATOR)
        if classifiers is None:
            classifiers = at_lower_priority(lambda: load_models(config)) if evaluates else {}
        self.classifiers = classifiers
        self.db = Database(config.storage.database)
        self.stop_event = threading.Event()
        self.evaluate_wake = threading.Event()
        self.deliver_wake = threading.Event()
        self.retention_wake = threading.Event()
        self.metrics = Metrics(self.db)
        self.audit = Audit(self.db, on_event=self.metrics.count_event)
        self.budget = SpoolBudget(config.storage, self.db)
        self.ingest = Ingest(config, self.db, self.budget, self.audit, self.evaluate_wake)
        self.retention = Retention(config, self.db, self.budget, self.audit)
        self.clean_stop = CleanStopMark(config.storage.data_dir, config.node.name)
        self.evaluator = Evaluator(config, self.db, self.audit, self.classifiers,
                                   _device_uid(config.storage.data_dir), self.metrics)
        self.deliverer = Deliverer(config, self.db, self.audit, self.tls.client)
        self.servers: list[NodeAssociationServer] = []
        self.threads: list[_Loop] = []
        self.console: ConsoleServer | None = None

    def _listening_port(self, tls: bool) -> int:
        server = next(s for s in self.servers if (s.ssl_context is not None) == tls)
        return int(server.server_address[1])

    @property
    def port(self) -> int:
        """The plain listener's port."""
        return self._listening_port(tls=False)

    @property
    def tls_port(self) -> int:
        """The TLS listener's port."""
        return self._listening_port(tls=True)

    def _evaluate_step(self) -> int:
        done = self.evaluator.run_once()
        if done:
            self.deliver_wake.set()
        return done

    def start(self, port: int | None = None, tls_port: int | None = None, console_port: int | None = None) -> Node:
        """Listen (on `port`, `tls_port` and `console_port` when given, 0 for any free port; else as
        configured) and run."""
        node = self.config.node
        name_partial_files(node.name)
        for folder in (self.config.storage.spool_dir, self.config.storage.reports_dir):
            removed = remove_partial_files(folder)
            if removed:
                log.warning("removed %d partial file(s) in %s left by an interrupted run", removed, folder)
        if node.runs(Role.RECEIVER):
            if self.clean_stop.take():
                log.info("the last stop of %s was clean: nothing to index from the spool", node.name)
            else:
                index_spooled_instances(self.config.storage.spool_dir, self.db, self.ingest)
        if self.config.console.enabled:  # first: a port in use stops the start before anything runs
            self.console = self._start_console(self.config.console.port if console_port is None else console_port)
        if node.runs(Role.RECEIVER):
            self._start_receiving(port, tls_port)
        sending, storage = self.config.sending, self.config.storage
        self.threads = []
        if node.runs(Role.EVALUATOR):
            self.evaluator.start()
            self.threads.append(_Loop("evaluator", self._evaluate_step, self.evaluate_wake, self.stop_event,
                                      self.evaluator.seconds_to_next_due, niceness=EVALUATION_NICENESS))
        if node.runs(Role.DELIVERER):
            self.deliverer.claims.release_own()
            self.threads.append(_Loop("deliverer", self.deliverer.run_once, self.deliver_wake, self.stop_event,
                                      lambda: sending.poll_seconds))
        if node.runs(Role.RECEIVER):
            self.threads.append(_Loop("retention", self.retention.run_once, self.retention_wake, self.stop_event,
                                      lambda: storage.retention_check_seconds))
        for thread in self.threads:
            thread.start()
        self.audit.record(AuditEventName.NODE_STARTED, called_ae=self.config.node.ae_title,
                          detail=f"{self.listening()}; models: {self.models()}")
        return self

    def _start_receiving(self, port: int | None, tls_port: int | None) -> None:
        """The Storage SCP's listeners; a failure leaves no console behind."""
        policy = PeerPolicy.from_rules(self.config.node.ae_title, peer_rules(self.config))
        plain_port = (self.config.node.port if port is None else port) if self.config.tls.plain_listener else None
        tls = None
        if self.tls.server is not None:
            assert self.config.tls.port is not None  # a server context exists only with a TLS port
            tls = TlsListener(self.config.tls.port if tls_port is None else tls_port, self.tls.server,
                              self.config.tls.handshake_timeout_seconds)
        try:
            self.servers = start_storage_scp(receiver_settings(self.config), policy, self.ingest, self.audit,
                                             plain_port, tls)
        except Exception:  # a port in use, or any other failure: the console started first must not stay behind
            if self.console is not None:
                self.console.stop()
                self.console = None
            raise

    def _start_console(self, port: int) -> ConsoleServer:
        settings = self.config.console
        setup = SetupToken(self.db)
        context = ConsoleContext(self.config, self.db, self.audit, self.metrics, Models(self.config, self.classifiers),
                                 setup, self.deliver_wake.set, lambda: self.evaluator.evaluating,
                                 self.evaluator.early.scored_count)
        try:
            console = ConsoleServer(build_app(context), settings.bind_address, port).start()
        except OSError as exc:
            raise ConfigError("console", [("console.port", f"cannot listen on {settings.bind_address}:{port}: "
                                                           f"{exc.strerror or exc} (choose another port, or set "
                                                           "console.enabled: false)")]) from exc
        if setup.value is not None:
            log.warning("no console admin yet: open %ssetup with the one-time setup token %s "
                        "(or run `dfnode user add NAME --role admin`)", console.address, setup.value)
        return console

    def listening(self) -> str:
        """Where the node listens, for the log: `port 11112, port 2762 (TLS), console http://127.0.0.1:8080/`."""
        where = [f"port {s.server_address[1]}{' (TLS)' if s.ssl_context else ''}" for s in self.servers]
        if self.console is not None:
            where.append(f"console {self.console.address}")
        return ", ".join(where) or f"no listener (roles: {', '.join(self.config.node.roles)})"

    def models(self) -> str:
        """The loaded models and their versions, for the log."""
        return ", ".join(f"{n} ({c.version}, {c.backend})" for n, c in self.classifiers.items()) or "none"

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let open associations finish (up to `node.drain_seconds`, then abort them),
        let the workers finish their step, close the database; a receiver that leaves nothing unindexed
        marks the stop clean (`node.clean_stop`)."""
        receiving, all_finished = bool(self.servers), True
        if self.servers:
            all_finished = self._drain(self.servers)
            self.servers = []
        if self.console is not None:
            self.console.stop()
            self.console = None
        self.stop_event.set()
        for wake in (self.evaluate_wake, self.deliver_wake, self.retention_wake):
            wake.set()
        for thread in self.threads:
            thread.join(timeout)
        self.evaluator.close()
        self.audit.record(AuditEventName.NODE_STOPPED, called_ae=self.config.node.ae_title)
        self.db.close()
        if receiving and all_finished and not self.ingest.has_unindexed():
            self.clean_stop.leave()


    def _drain(self, servers: list[NodeAssociationServer]) -> bool:
        """Let the open associations finish; whether all did (none had to be aborted)."""
        for server in servers:
            server.shutdown()  # the listening socket closes; open associations go on in their threads

        def still_open() -> list[Association]:
            return [assoc for server in servers for assoc in server.active_associations]

        deadline = time.monotonic() + self.config.node.drain_seconds
        open_associations = still_open()
        if open_associations:
            log.info("waiting up to %.0fs for %d open association(s) to finish", self.config.node.drain_seconds,
                     len(open_associations))
        while open_associations and time.monotonic() < deadline:
            time.sleep(0.05)
            open_associations = still_open()
        for assoc in open_associations:
            log.warning("aborting association with %s after %.0fs: it did not finish",
                        assoc.requestor.ae_title, self.config.node.drain_seconds)
            assoc.abort()
        return not open_associations


def run_forever(config: Config) -> int:
    """`dfnode serve`: run until SIGINT or SIGTERM."""
    check_ports_free(config)  # before the models load, and before a setup token is logged
    node = Node(config).start()
    log.debug("%d objects of start-up left out of garbage collection", freeze_start_up_objects())
    log.info("dfnode ready: AE %s on %s, models: %s, data under %s", config.node.ae_title, node.listening(),
             node.models(), config.storage.data_dir)
    if not compiled_box_means_built():
        log.warning("inference._clipped_box was not compiled at install (no C compiler?): radiographs are "
                    "prepared in numpy, about 3 ms slower each; reinstall with a C compiler for the fast route")
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    log.info("stopping: no new associations; finishing the open ones")
    node.stop()
    log.info("stopped")
    return 0
