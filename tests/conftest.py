"""Shared fixtures: tiny random-weight models, configs on temporary folders, a running node."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.config import Config, parse_config
from node.service import Node
from tests.helpers import Receiver, dciodvfy_errors
from tests.models import TEST_INPUT_SIZE, write_test_model
from tests.postgres import PostgresServer, skip_or_fail

__all__ = ["TEST_INPUT_SIZE", "write_test_model"]

pytest_plugins = ["tests.exit_guard"]


@pytest.fixture(autouse=True)
def torch_threads_restored() -> Iterator[None]:
    """Loading a node's models may set torch's thread count for the process; the next test gets it back."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    write_test_model(folder, "knee", "xray")
    write_test_model(folder, "lung", "ct")
    return folder


@pytest.fixture(scope="session")
def classifiers(model_dir: Path):
    from inference.model import load_classifier

    return {name: load_classifier(model_dir / f"{name}.json") for name in ("knee", "lung")}


def node_config(data_dir: Path, model_dir: Path, receiver_port: int = 11113, **overrides) -> Config:
    """The shipped config's shape, on temporary folders, with short stable times and backoff."""
    return parse_config(node_config_raw(data_dir, model_dir, receiver_port, **overrides), "test-config")


def node_config_raw(data_dir: Path, model_dir: Path, receiver_port: int = 11113, **overrides) -> dict:
    """`node_config` as the YAML document it comes from (for a `dfnode serve` process)."""
    raw: dict = {
        "node": {"ae_title": "DFNODE", "bind_address": "127.0.0.1", "port": 11112},
        "storage": {"data_dir": str(data_dir)},
        "peers": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": receiver_port}],
        "models": {"knee": {"card": str(model_dir / "knee.json")}, "lung": {"card": str(model_dir / "lung.json")}},
        "routes": [
            {"name": "knee-radiograph", "model": "knee", "series_stable_seconds": 0.5, "destinations": ["pacs"],
             "match": {"modalities": ["CR", "DX", "DR"], "body_parts": ["KNEE", "LEG", "EXTREMITY"],
                       "description_keywords": ["knee"], "include_unknown_body_part": True}},
            {"name": "lung-ct", "model": "lung", "series_stable_seconds": 1.0, "destinations": ["pacs"],
             "match": {"modalities": ["CT"], "body_parts": ["CHEST", "LUNG", "THORAX"],
                       "description_keywords": ["chest", "lung"], "include_unknown_body_part": True}},
        ],
        "sending": {"initial_backoff_seconds": 0.2, "max_backoff_seconds": 1.0, "timeout_seconds": 10,
                    "poll_seconds": 0.1},
        "console": {"enabled": False},  # tests/test_console.py turns it on, on a free port
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            raw[section] = {**raw.get(section, {}), **values}
        else:
            raw[section] = values
    return raw


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    """The PACS's receiving side; every SR and key image it got must pass dciodvfy without errors."""
    r = Receiver().start()
    yield r
    r.stop()
    for n, ds in enumerate(r.received):
        path = tmp_path / f"received-{ds.Modality}-{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], path


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for the session, in a folder of its own under /tmp (its user must reach it)."""
    reason = PostgresServer.available()
    if reason is not None:
        skip_or_fail(reason)
    folder = Path(tempfile.mkdtemp(prefix="dfnode-postgres-"))
    server = PostgresServer(folder).start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """The node's database: None for the default SQLite file, or a new PostgreSQL database's URL."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_server").new_database()


def on_database(url: str | None) -> dict:
    """The `storage` override that puts a node's index in `url` (none: the default SQLite file)."""
    return {"storage": {"database_url": url}} if url else {}


@pytest.fixture
def running_node(tmp_path: Path, model_dir: Path, receiver: Receiver, classifiers,
                 database_url: str | None) -> Iterator[Node]:
    """A node on loopback sending to `receiver`, on SQLite and, as a second run, on PostgreSQL."""
    config = node_config(tmp_path / "var", model_dir, receiver.port, **on_database(database_url))
    node = Node(config, classifiers).start(port=0)
    yield node
    node.stop()
