"""The console command: every subcommand has help; predict prints a table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from node.cli import main
from tests.conftest import node_config
from tests.helpers import real_file

REPO = Path(__file__).resolve().parent.parent

SUBCOMMANDS = ["serve", "check-config", "status", "audit", "predict", "samples", "train", "synth", "evaluate"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command: str) -> None:
    result = subprocess.run([sys.executable, "-m", "node.cli", command, "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0
    assert "usage: dfnode" in result.stdout


def test_predict_scores_dicom_and_png(tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    import yaml
    from PIL import Image

    config = node_config(tmp_path / "var", model_dir)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    png = tmp_path / "knee.png"
    Image.fromarray((np.random.default_rng(0).random((100, 80)) * 4000).astype(np.uint16)).save(png)
    colour = real_file("SC_rgb.dcm")
    args = ["predict", "--config", str(path), str(real_file("RG3_UNCR.dcm")), str(real_file("eCT_Supplemental.dcm")),
            str(colour)]
    assert main(args) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["file", "model", "frame"]
    rg3 = next(line for line in lines if line.startswith("RG3_UNCR.dcm"))
    assert " knee " in rg3 and "%" in rg3
    assert sum(line.startswith("eCT_Supplemental.dcm") for line in lines) == 2  # one row per frame
    assert "not evaluated" in next(line for line in lines if line.startswith("SC_rgb.dcm"))
    assert main(["predict", "--config", str(path), "--model", "knee", str(png)]) == 0
    assert "knee.png" in capsys.readouterr().out
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert main(["predict", "--config", str(path), str(real_file("RG3_UNCR.dcm")), str(text)]) == 1
    captured = capsys.readouterr()
    assert "notes.txt" in captured.out and "not a DICOM file" in captured.out and "force" not in captured.out
    assert "1 of 2 file(s) could not be read" in captured.err


def test_samples_are_studies_the_shipped_routes_take(tmp_path: Path) -> None:
    from node.config import load_config
    from node.routing import SeriesTags, route_for

    assert main(["samples", "--out", str(tmp_path / "samples"), "--slices", "3", "--size", "128"]) == 0
    routes = load_config(REPO / "config.yaml").routes
    radiograph = pydicom.dcmread(tmp_path / "samples" / "radiograph" / "radiograph.dcm")
    ct = sorted((tmp_path / "samples" / "ct").glob("*.dcm"))
    assert len(ct) == 3 and radiograph.Modality == "CR"
    taken = {route.name if (route := route_for(routes, SeriesTags.from_dataset(
        pydicom.dcmread(p, stop_before_pixels=True), "PACS"))) else None
        for p in [tmp_path / "samples" / "radiograph" / "radiograph.dcm", ct[0]]}
    assert taken == {"knee-radiograph", "lung-ct"}
