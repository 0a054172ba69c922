"""Real peers nobody on this project wrote: DCMTK's echoscu, storescu and storescp."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from node.service import Node
from tests.conftest import node_config
from tests.helpers import (
    copy_with_new_uids,
    ct_series,
    dciodvfy_errors,
    free_port,
    real_file,
    require_tool,
    run_tool,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.dcmtk




@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    tool = require_tool("storescp")
    port, out = free_port(), tmp_path / "storescp"
    out.mkdir()
    with (tmp_path / "storescp.log").open("w") as log:
        proc = subprocess.Popen([tool, "-aet", "PACS", "-od", str(out), "+xa", str(port)], stdout=log,
                                stderr=subprocess.STDOUT)
        echoscu = require_tool("echoscu")
        wait_for(lambda: run_tool(echoscu, "-aec", "PACS", "127.0.0.1", str(port)).returncode == 0, timeout=20)
        yield port, out
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def dcmtk_node(tmp_path: Path, model_dir: Path, classifiers, storescp: tuple[int, Path]) -> Iterator[Node]:
    node = Node(node_config(tmp_path / "var", model_dir, storescp[0]), classifiers).start(port=0)
    yield node
    node.stop()


def test_echoscu(dcmtk_node: Node) -> None:
    result = run_tool(require_tool("echoscu"), "-aet", "PACS", "-aec", "DFNODE", "127.0.0.1", str(dcmtk_node.port))
    assert result.returncode == 0, result.stderr
    rejected = run_tool(require_tool("echoscu"), "-aet", "STRANGER", "-aec", "DFNODE", "127.0.0.1",
                        str(dcmtk_node.port))
    assert rejected.returncode != 0 and "Rejected" in rejected.stderr + rejected.stdout


def test_storescu_to_node_and_storescp_receives_the_sr(dcmtk_node: Node, storescp: tuple[int, Path],
                                                       tmp_path: Path) -> None:
    ct = ct_series(tmp_path / "ct", slices=6)
    radiograph = copy_with_new_uids(real_file("RG3_J2KR.dcm"), tmp_path / "rg")
    files = [*ct, radiograph]
    for option, batch in (("-xe", ct), ("-xv", [radiograph])):  # -xv: JPEG 2000 lossless, as stored
        result = storescu(dcmtk_node.port, batch, option)
        assert result.returncode == 0, result.stderr
    received = wait_for(lambda: len(list(storescp[1].glob("SR*"))) >= 2 and list(storescp[1].glob("SR*")),
                        timeout=90)
    studies = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files}
    for path in received:
        sr = pydicom.dcmread(path)
        assert sr.StudyInstanceUID in studies
        assert sr.SeriesDescription.startswith("DEEPFAKE SCREEN: ")
        assert dciodvfy_errors(path) == []
        dump = run_tool(require_tool("dsrdump"), str(path))
        assert dump.returncode == 0 and "Manipulation score" in dump.stdout
        assert "Error" not in dump.stderr


@pytest.mark.parametrize(("source_name", "encoder", "option"), [
    ("CT_small.dcm", ["dcmcjpeg"], "-xs"),  # JPEG lossless
    ("image_dfl.dcm", ["dcmcjpeg", "+eb"], "-xy"),  # JPEG baseline (8 bit)
    ("CT_small.dcm", ["dcmcjpls"], "-xt"),  # JPEG-LS lossless
    ("CT_small.dcm", ["dcmcrle"], "-xr"),  # RLE
    ("CT_small.dcm", None, "-xd"),  # deflate, made by storescu on the fly
])
def test_storescu_proposing_a_compressed_syntax_is_accepted(dcmtk_node: Node, tmp_path: Path, source_name: str,
                                                            encoder: list[str] | None, option: str) -> None:
    """A PACS that proposes a compressed transfer syntax must find it accepted and the data stored as sent."""
    source = copy_with_new_uids(real_file(source_name), tmp_path)
    if encoder is not None:
        encoded = tmp_path / "encoded.dcm"
        conv = run_tool(require_tool(encoder[0]), *encoder[1:], str(source), str(encoded))
        assert conv.returncode == 0, conv.stderr
        source = encoded
    result = storescu(dcmtk_node.port, [source], "-d", option)
    assert result.returncode == 0, result.stderr + result.stdout
    stored = list(dcmtk_node.config.storage.spool_dir.rglob("*.dcm"))
    assert len(stored) == 1
    sent_syntax = pydicom.dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID
    expected = "1.2.840.10008.1.2.1.99" if option == "-xd" else sent_syntax
    meta = pydicom.dcmread(stored[0], stop_before_pixels=True).file_meta
    assert meta.TransferSyntaxUID == expected
    assert meta.MediaStorageSOPInstanceUID == pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
    check = run_tool(require_tool("dcmftest"), str(stored[0]))  # DCMTK: is it a Part 10 file?
    assert check.returncode == 0 and check.stdout.startswith("yes:"), check.stdout + check.stderr
