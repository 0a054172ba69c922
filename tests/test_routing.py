"""Routing: first match wins; blank BodyPartExamined falls back to descriptions, then to "unknown"."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from node.config import load_config
from node.routing import SeriesTags, route_for

REPO = Path(__file__).resolve().parents[1]
ROUTES = load_config(REPO / "config.yaml").routes


def _tags(modality: str, body_part: str = "", study: str = "", series: str = "", calling: str = "PACS") -> SeriesTags:
    ds = Dataset()
    ds.Modality, ds.BodyPartExamined, ds.StudyDescription, ds.SeriesDescription = modality, body_part, study, series
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    return SeriesTags.from_dataset(ds, calling)


@pytest.mark.parametrize(("tags", "expected"), [
    (_tags("CR", "KNEE"), "knee-radiograph"),
    (_tags("DX", "", "XR KNEE 2 VIEWS"), "knee-radiograph"),
    (_tags("DR", "", "", ""), "knee-radiograph"),  # unknown body part
    (_tags("CR", "CHEST"), None),
    (_tags("DX", "", "CHEST PA"), None),
    (_tags("CT", "CHEST"), "lung-ct"),
    (_tags("CT", "", "CT THORAX W/O"), "lung-ct"),
    (_tags("CT", "", "", "Axial 1mm"), "lung-ct"),  # unknown body part
    (_tags("CT", "HEAD"), None),
    (_tags("CT", "", "CT ABDOMEN PELVIS"), None),
    (_tags("MR", "KNEE"), None),
])
def test_default_routes(tags: SeriesTags, expected: str | None) -> None:
    route = route_for(ROUTES, tags)
    assert (route.name if route else None) == expected


def test_calling_ae_and_sop_class_filters() -> None:
    from node.config import parse_config

    config = parse_config({
        "models": {"m": {"card": "m.json"}},
        "routes": [{"name": "only-ward", "model": "m", "match": {"calling_ae_titles": ["WARD"],
                                                                "sop_classes": ["1.2.840.10008.5.1.4.1.1.1"]}}],
    })
    assert route_for(config.routes, _tags("CR", calling="WARD")).name == "only-ward"
    assert route_for(config.routes, _tags("CR", calling="PACS")) is None
