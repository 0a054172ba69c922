"""`dfnode predict`: score DICOM or PNG files offline, routed as the node would route them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from inference.model import Classifier, load_classifier
from inference.preprocess import png_in_modality_units, prepare_dataset, prepare_values
from inference.scoring import verdict_for
from node.config import Config
from node.errors import ConfigError, NotEvaluable
from node.routing import SeriesTags, route_for
from node.tables import format_table


class _Models:
    """Loads each model once, on first use."""

    def __init__(self, config: Config):
        self.config = config
        self.loaded: dict[str, Classifier] = {}

    def get(self, name: str) -> Classifier:
        if name not in self.config.models:
            known = ", ".join(sorted(self.config.models))
            raise ConfigError("predict", [("--model", f"unknown model {name!r} (models: {known})")])
        if name not in self.loaded:
            self.loaded[name] = load_classifier(self.config.models[name].card)
        return self.loaded[name]


def _rows_for(path: Path, models: _Models, model: str | None) -> list[list[str]]:
    try:
        if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            if model is None:
                return [[path.name, "-", "-", "-", "-", "not evaluated: --model is needed for PNG/JPEG"]]
            classifier = models.get(model)
            prep = classifier.card.preprocessing_spec()
            values = png_in_modality_units(path, prep.kind)
            images: list[tuple[int | None, np.ndarray]] = [(None, prepare_values(values, prep))]
        else:
            ds = dcmread(path)
            name = model
            if name is None:
                route = route_for(models.config.routes, SeriesTags.from_dataset(ds, ""))
                if route is None:
                    return [[path.name, "-", "-", "-", "-", "not evaluated: no route matches"]]
                name = route.model
            classifier = models.get(name)
            images = [(f.frame_number, f.pixels) for f in prepare_dataset(ds, classifier.card.preprocessing_spec())]
    except NotEvaluable as exc:
        return [[path.name, model or "-", "-", "-", "-", f"not evaluated: {exc}"]]
    except (InvalidDicomError, OSError) as exc:
        return [[path.name, model or "-", "-", "-", "-", f"not evaluated: cannot read ({exc})"]]
    scores = classifier.scores([p for _, p in images])
    return [[path.name, classifier.name, str(frame or ""), f"{score * 100:.1f}%",
             f"{classifier.card.threshold * 100:.1f}%", verdict_for(float(score), classifier.card.threshold).value]
            for (frame, _), score in zip(images, scores, strict=True)]


def predict_files(config: Config, paths: list[Path], model: str | None = None) -> str:
    models = _Models(config)
    rows = [row for path in paths for row in _rows_for(path, models, model)]
    return format_table(["file", "model", "frame", "score", "threshold", "verdict"], rows)
