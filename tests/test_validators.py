"""dfnode's SR checked by validators nobody on this project wrote: pixelmed's DicomSRValidator for
TID 1500, and dcmjs reading it the way OHIF's SR extension does."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pydicom
import pytest

from inference.model import load_classifier
from inference.scoring import score_files
from sr.key_image import build_key_image
from sr.report import ReportIdentity, build_report, report_uids
from sr.uids import ObjectIdentity
from tests.conftest import write_test_model
from tests.helpers import IN_CI, copy_with_new_uids, ct_series, dciodvfy_errors, real_file, require_tool, run_tool

pytestmark = pytest.mark.interop

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
# Java 17 limits XPath expression sizes; pixelmed's compiled SR templates exceed the defaults
JAXP_LIMITS = ["-Djdk.xml.xpathExprGrpLimit=0", "-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathTotalOpLimit=0"]
READ_SR = Path(__file__).parent / "js" / "read_sr.mjs"
# pixelmed decides for the whole Imaging Measurements container whether its groups are TID 1410: when
# exactly one group has an Image Region, it checks every group against TID 1410, TID 1501 groups
# included. The standard allows both kinds side by side (TID 1500 row 6); these two messages, on the
# TID 1501 groups only, are that heuristic and nothing else.
PIXELMED_CONTAINER_HEURISTIC = re.compile(
    r'^Error: Template 1410 PlanarROIMeasurements/\[Row 1\] CONTAINER \(125007,DCM,"Measurement Group"\)/'
    r'\[Row (5\] SCOORD \(111030|7\] IMAGE \(121214),DCM,"[A-Za-z ]+"\): within 1\.8\.(\d+): .*'
    r"Missing conditional content item$")


def _produce(tmp_path: Path, kind: str, threshold: float) -> tuple[Path, Path, list[Path]]:
    """The SR and key image the node's evaluator writes for one series (knee radiograph or CT)."""
    model = "knee" if kind == "xray" else "lung"
    classifier = load_classifier(write_test_model(tmp_path / "models", model, kind, threshold=threshold))
    files = ([copy_with_new_uids(real_file("RG3_UNCR.dcm"), tmp_path / "in")] if kind == "xray"
             else ct_series(tmp_path / "ct", slices=6))
    result, headers = score_files(classifier, files)
    series_uid = str(headers[0].SeriesInstanceUID)
    sr_series, sr_uid = report_uids(series_uid, 1)
    sr = build_report(headers, result, ReportIdentity("2.25.1", "DFNODE", "dfnode", sr_series, sr_uid, 1))
    assert result.focus is not None
    source = pydicom.dcmread(next(f for f, h in zip(files, headers, strict=True)
                                  if h.SOPInstanceUID == result.focus.sop_instance_uid))
    key = build_key_image(source, result.focus, result.verdict, result.score, classifier.card.preprocessing_spec(),
                          ObjectIdentity.derived(series_uid, 1, "key"))
    sr_path, key_path = tmp_path / "sr.dcm", tmp_path / "key.dcm"
    sr.save_as(sr_path, enforce_file_format=True)
    key.save_as(key_path, enforce_file_format=True)
    return sr_path, key_path, files


CASES = [("xray", 0.01), ("xray", 0.99), ("ct", 0.01), ("ct", 0.99)]  # suspected with a region, and not


def _region_group_numbers(sr_path: Path) -> set[str]:
    """Positions (1.8.N) of the groups with an Image Region in the Imaging Measurements container."""
    groups = json.loads(_read_with_dcmjs(sr_path))["groups"]
    return {str(n) for n, g in enumerate(groups, start=1) if g["regions"]}


def _pixelmed_errors(path: Path) -> list[str]:
    java = require_tool("java")
    if not PIXELMED_JAR.is_file():
        if IN_CI:
            pytest.fail(f"{PIXELMED_JAR} missing (.ci/run installs libpixelmed-java)")
        pytest.skip("libpixelmed-java not installed")
    result = subprocess.run([java, *JAXP_LIMITS, "-cp", str(PIXELMED_JAR), "com.pixelmed.validate.DicomSRValidator",
                             str(path)], capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert "Found Root Template TID_1500 (MeasurementReport)" in output, output[-3000:]
    return [line for line in output.splitlines() if line.startswith("Error")]


def _read_with_dcmjs(path: Path) -> str:
    node = require_tool("node")
    if not (READ_SR.parent / "node_modules" / "dcmjs").is_dir():
        if IN_CI:
            pytest.fail("dcmjs missing (.ci/run runs npm ci in tests/js)")
        pytest.skip("dcmjs not installed (npm ci in tests/js)")
    result = run_tool(node, str(READ_SR), str(path))
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(("kind", "threshold"), CASES)
def test_pixelmed_finds_no_errors(tmp_path: Path, kind: str, threshold: float) -> None:
    sr_path, key_path, _ = _produce(tmp_path, kind, threshold)
    errors = _pixelmed_errors(sr_path)
    regions = _region_group_numbers(sr_path)
    if regions:  # only the container heuristic, and only on groups without a region
        flagged = {m.group(2) for m in map(PIXELMED_CONTAINER_HEURISTIC.match, errors) if m}
        assert len(flagged) > 0 and not flagged & regions
        errors = [e for e in errors if not PIXELMED_CONTAINER_HEURISTIC.match(e)]
    assert errors == []
    assert dciodvfy_errors(sr_path) == [] and dciodvfy_errors(key_path) == []


@pytest.mark.parametrize(("kind", "threshold"), CASES)
def test_dcmjs_reads_groups_scores_and_region(tmp_path: Path, kind: str, threshold: float) -> None:
    sr_path, _, files = _produce(tmp_path, kind, threshold)
    parsed = json.loads(_read_with_dcmjs(sr_path))
    sr = pydicom.dcmread(sr_path)
    assert parsed["seriesDescription"] == sr.SeriesDescription
    groups = parsed["groups"]
    image_groups = [g for g in groups if not g["regions"]]
    assert len(image_groups) == len(files) + 1 and image_groups[-1]["trackingIdentifier"] == "series"
    for group in groups:
        assert group["scoreName"] == "Manipulation score" and 0 <= group["score"] <= 100
        assert group["suspected"] in ("Yes", "No")
    suspected = sr.SeriesDescription.endswith(": SUSPECTED")
    regions = [r for g in groups for r in g["regions"]]
    assert len(regions) == (1 if suspected else 0)
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    for region in regions:
        assert region["graphicType"] == "POLYLINE" and region["sopInstanceUID"] in uids
        assert len(region["points"]) == 10 and region["points"][:2] == region["points"][-2:]


@pytest.mark.parametrize(("kind", "threshold"), CASES)
def test_dsrdump_renders_without_constraint_violations(tmp_path: Path, kind: str, threshold: float) -> None:
    sr_path, _, _ = _produce(tmp_path, kind, threshold)
    dump = run_tool(require_tool("dsrdump"), "+Pt", str(sr_path))  # relationship constraints are checked
    assert dump.returncode == 0 and dump.stderr == "", dump.stderr
    assert "# TID 1500 (DCMR)" in dump.stdout and "Manipulation score" in dump.stdout
    has_region = '"Image Region")=(POLYLINE' in dump.stdout
    assert has_region == ("DEEPFAKE SCREEN: SUSPECTED" in dump.stdout)
    assert ("# TID 1410 (DCMR)" in dump.stdout) == has_region
