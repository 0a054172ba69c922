"""Scoring single files outside the PACS workflow, routed as the node would route them: `dfnode predict`
and the console's upload check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError
from pydicom.errors import InvalidDicomError

from core.errors import ConfigError, NotEvaluable
from inference.model import Classifier, load_classifier
from inference.pixels import read_image
from inference.preprocess import png_in_modality_units, prepare_dataset, prepare_values
from inference.scoring import Verdict, verdict_for
from node.config import Config
from node.routing import SeriesTags, route_for
from node.tables import format_table


class Models:
    """The configured models, each loaded once on first use (or given, already loaded)."""

    def __init__(self, config: Config, loaded: dict[str, Classifier] | None = None):
        self.config = config
        self.loaded: dict[str, Classifier] = dict(loaded or {})

    def get(self, name: str) -> Classifier:
        if name not in self.config.models:
            known = ", ".join(sorted(self.config.models))
            raise ConfigError("predict", [("--model", f"unknown model {name!r} (models: {known})")])
        if name not in self.loaded:
            self.loaded[name] = load_classifier(self.config.models[name].card)
        return self.loaded[name]


@dataclass(frozen=True)
class CheckedImage:
    """One image (or frame) of a checked file: its score and what the model saw."""

    frame: int | None
    score: float
    pixels: np.ndarray  # the prepared model input
    source_shape: tuple[int, int]


@dataclass(frozen=True)
class FileCheck:
    """A file scored outside the PACS workflow; `problem` says why it was not."""

    name: str
    classifier: Classifier | None
    images: list[CheckedImage]
    problem: str | None = None
    readable: bool = True  # False: the file itself could not be read (as opposed to an image not evaluable)

    @property
    def most_suspicious(self) -> CheckedImage | None:
        return max(self.images, key=lambda i: i.score) if self.images else None

    @property
    def verdict(self) -> Verdict:
        top = self.most_suspicious
        if top is None or self.classifier is None:
            return Verdict.NOT_EVALUATED
        return verdict_for(top.score, self.classifier.card.threshold)


PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _unreadable(exc: Exception) -> str:
    """Why a file cannot be read, in a user's words (never a library's advice)."""
    if isinstance(exc, InvalidDicomError):
        return "not a DICOM file (no DICM prefix after the preamble)"
    if isinstance(exc, UnidentifiedImageError):
        return "not a PNG or JPEG image"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "a folder, not a file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return getattr(exc, "strerror", None) or "the file cannot be read"


def check_file(path: Path, models: Models, model: str | None = None) -> FileCheck:
    """Score a DICOM, PNG or JPEG file with `model`, or for DICOM with the model its route names."""
    try:
        if path.suffix.lower() in PICTURE_SUFFIXES:
            if model is None:
                return FileCheck(path.name, None, [], "a model must be chosen for PNG/JPEG")
            classifier = models.get(model)
            prep = classifier.card.preprocessing_spec()
            values = png_in_modality_units(path, prep.kind)
            prepared: list[tuple[int | None, np.ndarray, tuple[int, ...]]] = [
                (None, prepare_values(values, prep), values.shape)]
        else:
            ds = read_image(path)
            name = model
            if name is None:
                route = route_for(models.config.routes, SeriesTags.from_dataset(ds, ""))
                if route is None:
                    return FileCheck(path.name, None, [], "no route matches")
                name = route.model
            classifier = models.get(name)
            prepared = [(f.frame_number, f.pixels, f.source_shape)
                        for f in prepare_dataset(ds, classifier.card.preprocessing_spec())]
    except NotEvaluable as exc:
        return FileCheck(path.name, None, [], str(exc))
    except (InvalidDicomError, OSError, UnidentifiedImageError) as exc:
        return FileCheck(path.name, None, [], f"cannot read: {_unreadable(exc)}", readable=False)
    scores = classifier.scores([p for _, p, _ in prepared])
    return FileCheck(path.name, classifier, [CheckedImage(frame, float(score), pixels, (int(shape[0]), int(shape[1])))
                                             for (frame, pixels, shape), score in zip(prepared, scores, strict=True)])


def _rows_for(check: FileCheck, model: str | None) -> list[list[str]]:
    if check.classifier is None:
        return [[check.name, model or "-", "-", "-", "-", f"not evaluated: {check.problem}"]]
    threshold = check.classifier.card.threshold
    return [[check.name, check.classifier.name, str(image.frame or ""), f"{image.score * 100:.1f}%",
             f"{threshold * 100:.1f}%", verdict_for(image.score, threshold).value] for image in check.images]


def predict_files(config: Config, paths: list[Path], model: str | None = None) -> tuple[str, int]:
    """The table of scores, and how many of the files could not be read."""
    models = Models(config)
    checks = [check_file(path, models, model) for path in paths]
    rows = [row for check in checks for row in _rows_for(check, model)]
    return (format_table(["file", "model", "frame", "score", "threshold", "verdict"], rows),
            sum(not check.readable for check in checks))
