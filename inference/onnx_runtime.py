"""ONNX Runtime for CPU inference: the network exported once per weights file, kept in a cache, and run
by onnxruntime (about twice as fast as eager PyTorch on a CPU; see bench/inference.py).

The export is float32 with a dynamic batch axis; the first load of a model writes it (seconds to a
minute), later loads reuse it. A cached file is named by the weights' hash and the input size, so new
weights never meet an old export.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from inference.localisation import activation_cells
from inference.model_card import ModelCard
from inference.pooling import MEAN

log = logging.getLogger(__name__)


def available() -> bool:
    """Whether onnxruntime can be imported here."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


EXPORT_FORMAT = 2  # 2: the logit and the activation map; bump when the exported graph changes


def export_path(cache_dir: Path, card: ModelCard) -> Path:
    pooling = "" if card.cell_pooling == MEAN else f"-{card.cell_pooling}"  # mean: the name it always had
    if card.design == "forensic":
        pooling = "-forensic"
    return cache_dir / f"{card.name}-{card.weights.sha256[:16]}-{card.input_size}px{pooling}-v{EXPORT_FORMAT}.onnx"


class _LogitAndCells(torch.nn.Module):
    """The network with a second output: its activation map (see `localisation.activation_maps`)."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.network.forward_features(image)  # type: ignore[operator]
        return self.network.forward_head(features), activation_cells(self.network, features)  # type: ignore[operator]


class _Cells(torch.nn.Module):
    """The forensic design's cell map alone: the image's logit is pooled from it, tile by tile."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network.cells(image)  # type: ignore[operator]


def export(network: torch.nn.Module, card: ModelCard, path: Path) -> Path:
    """Write the network as ONNX (float32, batch axis dynamic; the forensic design's height and width
    too) to `path`, atomically."""
    sample = torch.zeros(2, card.in_chans, card.input_size, card.input_size)
    forensic = card.design == "forensic"
    wrapped = (_Cells if forensic else _LogitAndCells)(network.float().eval()).eval()
    outputs = ["cells"] if forensic else ["logit", "cells"]
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "cells": {0: "batch", 1: "rows", 2: "columns"}} \
        if forensic else {"image": {0: "batch"}, "logit": {0: "batch"}, "cells": {0: "batch"}}
    # without gradients: tracing with them kept every activation for a backward pass (peak +750 MB
    # against +190 MB for a 256-px B4)
    with warnings.catch_warnings(), torch.no_grad():  # the exporter's notices are not the user's business
        warnings.simplefilter("ignore")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.exporting")
        torch.onnx.export(wrapped, (sample,), str(tmp), input_names=["image"], output_names=outputs,
                          dynamic_axes=axes, dynamo=False)
    os.replace(tmp, path)  # a reader sees the whole file or none
    return path


@functools.cache
def shared_arena() -> None:
    """One memory arena for every session of this process, registered on onnxruntime's environment once:
    with an arena per session, each model keeps the buffers of its largest batch (both 256-px models
    after batches of 1 to 8 images: 1,208 MB resident, against 773 MB with one arena and 562 MB with
    one arena and no memory patterns, at the same speed; the node runs one model at a time)."""
    import onnxruntime as ort

    memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, -1, -1, -1))  # onnxruntime's defaults


class OnnxRunner:
    """Runs the exported network: an NCHW float32 batch in, logits out."""

    def __init__(self, path: Path, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # threads sleep between operators instead of spinning: the model alone is about 4% slower, but the
        # thread preparing the next batch, and the node's receiving, get the cores (the whole path is
        # 5 to 15% faster; bench/inference.py)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # the memory arena stays on (without it inference is about 20% slower), one for all sessions, and
        # without memory patterns: a pattern is planned and kept per batch shape (the node's batches
        # are 1 to 8 images, plus the activation map's single image), 167 MB more for one 256-px model
        # at the same speed
        shared_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
        options.enable_mem_pattern = False
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _run(self, output: str, batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.float().numpy())  # ORT wants contiguous NCHW
        (values,) = self.session.run([output], {"image": array})
        return torch.from_numpy(values)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits, (N, 1)."""
        return self._run("logit", batch)

    def cells(self, batch: torch.Tensor) -> torch.Tensor:
        """Activation maps, (N, h, w): per-cell logits."""
        return self._run("cells", batch)


def onnx_runner(card: ModelCard, cache_dir: Path, threads: int, network: Callable[[], torch.nn.Module]
                ) -> OnnxRunner:
    """The runner for this card's weights; `network()` builds the PyTorch network to export when the
    cache has no usable copy (none yet, or one onnxruntime cannot open)."""
    path = export_path(cache_dir, card)
    if path.is_file():
        try:
            return OnnxRunner(path, threads)
        except Exception as exc:  # onnxruntime raises its own types for a damaged file
            log.warning("cached export %s cannot be opened (%s); exporting again", path, exc)
    log.info("exporting model %s (%s) to ONNX for onnxruntime: %s", card.name, card.version, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    export(network(), card, path)
    return OnnxRunner(path, threads)
