"""Orthanc as the PACS: started by the test on loopback ports, driven over its REST API."""

from __future__ import annotations

import io
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import requests
from pydicom.dataset import Dataset

from tests.helpers import free_port, require_tool, wait_for

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

# What a PACS does with a node like dfnode: forward every image it receives, but not the node's
# own results (SR and the Secondary Capture key image), or they would loop.
FORWARD_ON_ARRIVAL = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality']
  if modality ~= 'SR' and modality ~= 'OT' then
    SendToModality(instanceId, 'dfnode')
  end
end
"""


@dataclass
class Orthanc:
    process: subprocess.Popen[bytes]
    http_port: int
    dicom_port: int
    log: Path
    ae_title: str = "ORTHANC"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> Any:
        response = requests.get(self.url + path, timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        response = requests.post(self.url + path, data=raw if raw is not None else json.dumps(body or {}),
                                 timeout=120)
        response.raise_for_status()
        return response.json() if response.content else None

    def register_dfnode(self, port: int, ae_title: str = "DFNODE") -> None:
        """Name dfnode as DICOM modality `dfnode`, as an admin would in Orthanc's configuration."""
        response = requests.put(f"{self.url}/modalities/dfnode", timeout=30,
                                data=json.dumps({"AET": ae_title, "Host": "127.0.0.1", "Port": port}))
        response.raise_for_status()

    def upload(self, paths: list[Path]) -> str:
        """POST the files to /instances; returns the Orthanc ID of their study."""
        studies = {self.post("/instances", raw=p.read_bytes())["ParentStudy"] for p in paths}
        assert len(studies) == 1, studies
        return studies.pop()

    def series_of(self, study_id: str) -> dict[str, list[Dataset]]:
        """The study's instances as datasets, by modality."""
        out: dict[str, list[Dataset]] = {}
        for series in self.get(f"/studies/{study_id}/series"):
            modality = series["MainDicomTags"].get("Modality", "")
            for instance_id in series["Instances"]:
                raw = requests.get(f"{self.url}/instances/{instance_id}/file", timeout=30).content
                out.setdefault(modality, []).append(pydicom.dcmread(io.BytesIO(raw)))
        return out

    def wait_for_results(self, study_id: str, key_image: bool = True, timeout: float = 120) -> dict[str, Any]:
        """Wait until dfnode's SR (and key image) are in the study; returns the series by modality."""
        def arrived() -> dict[str, Any] | None:
            modalities = {s["MainDicomTags"].get("Modality") for s in self.get(f"/studies/{study_id}/series")}
            wanted = {"SR", "OT"} if key_image else {"SR"}
            return self.series_of(study_id) if wanted <= modalities else None
        return wait_for(arrived, timeout=timeout)  # type: ignore[return-value]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_orthanc(folder: Path, lua: str | None = None) -> Orthanc:
    """Orthanc with its DICOMweb plugin, started and answering (`register_dfnode` names the node)."""
    binary = require_tool("Orthanc")
    if not DICOMWEB_PLUGIN.is_file():
        require_tool("orthanc-dicomweb-plugin-is-missing")  # fails under CI=true, skips elsewhere
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config: dict[str, Any] = {
        "Name": "dfnode-test-pacs", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "DicomAet": "ORTHANC", "DicomPort": dicom_port, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "StableAge": 1, "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalitiesInDatabase": True,
    }
    if lua is not None:
        script = folder / "forward.lua"
        script.write_text(lua)
        config["LuaScripts"] = [str(script)]
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = folder / "orthanc.log"
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=out, stderr=subprocess.STDOUT)
    orthanc = Orthanc(process, http_port, dicom_port, log)

    def answering() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"Orthanc exited: {log.read_text()[-2000:]}")
        try:
            return bool(orthanc.get("/system"))
        except requests.RequestException:
            return False
    wait_for(answering, timeout=30)
    return orthanc
