"""The configuration: the shipped file runs as is; every problem is reported with its key path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from core.errors import ConfigError
from node.cli import main
from node.config import InferenceSettings, load_config

REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_is_valid_and_matches_the_design() -> None:
    config = load_config(REPO / "config.yaml")
    assert config.node.ae_title == "DFNODE" and config.node.port == 11112
    assert config.storage.data_dir == REPO / "var"
    assert config.security.require_known_peers
    pacs = config.peer("pacs")
    assert (pacs.ae_title, pacs.host, pacs.port) == ("PACS", "127.0.0.1", 11113)
    assert set(config.routed_models()) == {"knee", "lung"}
    assert config.models["knee"].card == REPO / "weights" / "knee.json"


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_every_problem_is_reported_with_its_key_path(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["node"]["port"] = 70000
    raw["node"]["colour"] = "blue"
    raw["routes"][0]["model"] = "elbow"
    raw["routes"][1]["destinations"] = ["nowhere"]
    raw["peers"][0]["ae_title"] = "A" * 17
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, raw))
    paths = {p for p, _ in info.value.problems}
    assert {"node.port", "node.colour", "peers.0.ae_title"} <= paths
    # cross-section problems are found once the sections themselves are valid
    raw["node"]["port"], raw["peers"][0]["ae_title"] = 11112, "PACS"
    del raw["node"]["colour"]
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, raw))
    assert {p for p, _ in info.value.problems} == {"routes.0.model", "routes.1.destinations.0"}


def test_an_unknown_key_is_named_with_the_nearest_valid_one(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["node"]["ae_titel"] = "X"
    raw["peers"][0]["usrname"] = "modality"
    raw["models"]["knee"]["crd"] = "x.json"
    raw["routes"][0]["match"]["modality"] = ["CT"]
    raw["routs"] = []
    raw["storage"]["zzz"] = 1
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, raw))
    problems = dict(info.value.problems)
    assert problems["node.ae_titel"] == "unknown key; did you mean 'ae_title'?"
    assert problems["peers.0.usrname"] == "unknown key; did you mean 'username'?"
    assert problems["models.knee.crd"] == "unknown key; did you mean 'card'?"
    assert problems["routes.0.match.modality"] == "unknown key; did you mean 'modalities'?"
    assert problems["routs"] == "unknown key; did you mean 'routes'?"
    assert problems["storage.zzz"].startswith("unknown key (valid here: data_dir, ")


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, {"storage": {"data_dir": "data"}, "models": {"m": {"card": "w/m.json"}}}))
    assert config.storage.data_dir == tmp_path / "data"
    assert config.models["m"].card == tmp_path / "w" / "m.json"


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path, {"node": {"port": "eleven"}, "routes": [{"name": "r", "model": "x"}]})
    assert main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "node.port" in err and "invalid configuration" in err
    assert main(["check-config", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_check_config_accepts_the_shipped_config_with_its_weights(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(REPO / "config.yaml")]) == 0
    assert "OK" in capsys.readouterr().out


def test_destinations_need_a_way_to_receive(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["peers"][0]["dicomweb_url"] = "ftp://pacs/dicom-web"
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, raw))
    assert [p for p, _ in info.value.problems] == ["peers.0.dicomweb_url"]
    del raw["peers"][0]["port"], raw["peers"][0]["dicomweb_url"]
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, raw))
    assert {p for p, _ in info.value.problems} == {"routes.0.destinations.0", "routes.1.destinations.0"}
    assert "neither a port nor a dicomweb_url" in str(info.value)
    raw["peers"][0]["dicomweb_url"] = "http://127.0.0.1:8042/dicom-web/"
    assert load_config(_write(tmp_path, raw)).peer("pacs").dicomweb_url == "http://127.0.0.1:8042/dicom-web"
    assert load_config(_write(tmp_path, raw)).reports.key_image


def test_preparing_threads_default_to_one_on_a_cpu_and_the_spare_cores_on_a_gpu() -> None:
    assert InferenceSettings().preparing_thread_count() == 1
    assert InferenceSettings(device="cuda").preparing_thread_count() == max(1, (os.cpu_count() or 2) - 1)
    assert InferenceSettings(device="cuda", preparing_threads=3).preparing_thread_count() == 3
    with pytest.raises(ValueError, match="preparing_threads"):
        InferenceSettings(preparing_threads=-1)
