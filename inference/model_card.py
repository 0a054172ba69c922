"""Model cards: `weights/<model>.json`, the description a model is loaded and judged by."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import ModelLoadError
from inference.pooling import MEAN, POOLING_PATTERN
from inference.preprocess import Preprocessing


class CardPreprocessing(BaseModel):
    """How DICOM pixels become model input (see `inference.preprocess`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["xray", "ct"]
    window_center: float = -600.0
    window_width: float = 1500.0
    percentile_low: float = 0.5
    percentile_high: float = 99.5
    photometric: str = "MONOCHROME1 inverted; bright means dense"
    resize: str = ("box-averaged by a whole factor to at least twice the input, then bilinear (antialiased); "
                   "aspect-preserving, zero-padded to a square")
    normalization_mean: float = 0.5
    normalization_std: float = 0.25
    residual_channel: bool = False  # a second input channel: the noise residual (inference.model)


class CardForensic(BaseModel):
    """The forensic design (`inference.forensic`): how it reads an image at its own pixel scale."""

    model_config = ConfigDict(extra="forbid")

    front: str = ("full resolution: 4 fixed SRM high-pass kernels and 4 constrained (Bayar) 5x5 kernels on the "
                  "image over its noise level, truncated at 3, with the content channel; two 3x3 stride-1 layers, "
                  "one 3x3 stride-2 layer to 32 channels for the B4")
    scale: str = "native: the image's own pixel scale, never resized"
    cell_stride: int = Field(64, description="source pixels per cell of the map")
    top_k: int = Field(2, ge=1, description="the image's logit: the mean of the k hottest cells")
    tile_size: int = Field(512, ge=64, description="a large image is scored in tiles of this side...")
    tile_halo: int = Field(128, ge=0, description="...each with this much context around it")
    training_crop: int = Field(192, description="the side of the twin crops it learned on")


class CardWeights(BaseModel):
    """The weights: one safetensors file or an index of shards, and their checksums."""

    model_config = ConfigDict(extra="forbid")

    file: str
    dtype: str = "float16"
    sha256: str = Field(description="SHA-256 of the weight files' bytes, concatenated in index order")
    files: dict[str, str] = Field(default_factory=dict, description="SHA-256 of each file")


class ModelCard(BaseModel):
    """Everything the node and a reader need to know about one trained model."""

    model_config = ConfigDict(extra="forbid")

    name: str
    architecture: Literal["efficientnet_b4"] = "efficientnet_b4"
    design: Literal["letterbox", "forensic"] = Field(
        "letterbox", description="letterbox: the whole image resized to input_size (cards before the forensic "
                                 "design); forensic: a full-resolution front before the B4, at native scale")
    forensic: CardForensic | None = None
    input_size: int = Field(ge=32, le=1024)
    in_chans: int = 1
    cell_pooling: str = Field(MEAN, pattern=POOLING_PATTERN,
                              description="how the per-cell logits make the image's logit (inference.pooling)")
    preprocessing: CardPreprocessing
    threshold: float = Field(0.5, gt=0, lt=1)
    series_aggregation: Literal["max", "mean"] = "max"
    weights: CardWeights
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _forensic_needs_its_section(self) -> ModelCard:
        if (self.design == "forensic") != (self.forensic is not None):
            raise ValueError("a forensic design needs its 'forensic' section, and only it has one")
        return self

    @property
    def version(self) -> str:
        """The weights' SHA-256 prefix: the version the SR reports."""
        return self.weights.sha256[:12]

    def preprocessing_spec(self) -> Preprocessing:
        p = self.preprocessing
        return Preprocessing(p.kind, self.input_size, p.window_center, p.window_width,
                             p.percentile_low, p.percentile_high, native=self.design == "forensic")


def read_card(path: Path) -> ModelCard:
    """Load and validate a model card; `ModelLoadError` names the file and the fault."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: model card is missing") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: model card cannot be read: {exc}") from None
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as exc:
        faults = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ModelLoadError(f"{path}: invalid model card: {faults}") from None


def write_card(card: ModelCard, path: Path) -> None:
    path.write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
