"""The end of a forensic training run: the threshold, the test metrics on whole native images, the
float16 weights and the model card that records all of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from inference.forensic import ForensicNet
from inference.forensic_classifier import ForensicClassifier
from inference.model_card import CardForensic, CardPreprocessing, ModelCard, write_card
from inference.training.augment import NATIVE_BENIGN, benign_degrade
from inference.training.crops import CURRICULUM, Source, SourceSplit
from inference.training.datasets import load_samples
from inference.training.forensic_train import GAN_FILE, ForensicSpec, Run, _spec_record
from inference.training.metrics import threshold_for_fpr
from inference.training.native_sets import measure, score_image
from inference.training.plots import plot_confusion, plot_roc
from inference.weights import save_weights

MAX_BENIGN_FPR = 0.02


@dataclass(frozen=True)
class Provenance:
    """How the run was made, for the card: the exact commands and what the data was."""

    command: str
    test_command: str
    data: str


def as_float16(network: ForensicNet) -> ForensicNet:
    """The network with its weights rounded to float16 and back: exactly what ships."""
    network.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                             for k, v in network.state_dict().items()})
    return network.eval()


def draft_card(spec: ForensicSpec, weights: Any, threshold: float = 0.5) -> ModelCard:
    return ModelCard(name=spec.model_name, design="forensic", input_size=spec.crop, in_chans=2,
                     forensic=CardForensic(top_k=spec.top_k, training_crop=spec.crop),
                     preprocessing=CardPreprocessing(kind=spec.kind,  # type: ignore[arg-type]
                                                     resize="none: the image's own pixel scale"),
                     threshold=threshold, weights=weights)


def node_scoring(card: ModelCard, network: ForensicNet, cache_dir: Path, threads: int = 0) -> ForensicClassifier:
    """The weights as the node runs them on a CPU: exported to onnxruntime where it is installed (the
    export cached in `cache_dir`), else the PyTorch network itself."""
    from inference.model import resolve_backend
    from inference.onnx_runtime import onnx_runner

    if resolve_backend("auto", "cpu") == "torch":
        return ForensicClassifier(card, network, torch.device("cpu"))
    runner = onnx_runner(card, cache_dir, threads, lambda: network)
    return ForensicClassifier(card, None, torch.device("cpu"), runner=runner)


def validation_threshold(classifier: ForensicClassifier, sources: list[Source], seed: int,
                         progress: bool = True) -> float:
    """The lowest threshold with at most 1% of the validation pristine images, clean and after each benign
    degradation, at or above it."""
    scores = []
    for i, source in enumerate(tqdm(sources, desc="threshold", disable=not progress)):
        image = source.unit(source.values)
        scores.append(score_image(classifier, image).score)
        for name in NATIVE_BENIGN:
            degraded = benign_degrade(np.random.default_rng([seed, i, NATIVE_BENIGN.index(name)]), image, name)
            scores.append(score_image(classifier, degraded).score)
    return threshold_for_fpr(np.array(scores), MAX_BENIGN_FPR / 2)


def finish(run: Run, val_sources: list[Source], test_manifest: Path, provenance: Provenance) -> dict[str, Any]:
    """Threshold, test metrics, weights and card (in `spec.weights_dir`), ROC and confusion plots."""
    spec = run.spec
    network = as_float16(run.shipped())
    weights = save_weights(network.state_dict(), spec.weights_dir, spec.model_name)
    classifier = node_scoring(draft_card(spec, weights), network, spec.run_dir / "model-cache", spec.threads)
    threshold = validation_threshold(classifier, val_sources, spec.seed + 1, spec.progress)
    classifier.card = draft_card(spec, weights, threshold)
    samples = load_samples(test_manifest)
    report, scores = measure(classifier, samples, threshold, spec.seed + 2, spec.progress)
    report["split"] = f"test: {test_manifest.parent} ({provenance.test_command})"
    report["held_out_families"] = {family: report["auc_by_manipulation"].get(family)
                                   for family in spec.exclude_families}
    card = draft_card(spec, weights, threshold).model_copy(update={
        "training": {"command": provenance.command, "data": provenance.data,
                     "test_data": provenance.test_command,
                     "split": "sources grouped: phantoms by stream index (training, validation, test never share "
                              "one), each packaged real image in one split",
                     "excluded_families": list(spec.exclude_families),
                     "curriculum": [{"name": level.name, "min_trace": level.min_trace, "degrade": level.degrade}
                                    for level in CURRICULUM],
                     "spec": _spec_record(spec), "history": run.state["history"],
                     "minutes": round(run.state["minutes"], 1), "steps": run.state["step"],
                     "threshold_rule": f"lowest with <= {MAX_BENIGN_FPR / 2:.0%} of clean and benign-processed "
                                       "validation pristine images at or above it"},
        "metrics": report})
    write_card(card, spec.weights_dir / f"{spec.model_name}.json")
    plot_roc(np.array([s.label for s in samples]), scores, f"{spec.model_name}: ROC, native test images",
             spec.run_dir / f"{spec.model_name}.roc.png")
    plot_confusion(report["confusion"], f"{spec.model_name}: test, threshold {threshold:.2f}",
                   spec.run_dir / f"{spec.model_name}.confusion.png")
    return report



def test_set(kind: str, seed: int, count: int, out_dir: Path, progress: bool = True,
             pristine: Path | None = None, gan: Path | None = None, only: tuple[str, ...] = ()) -> Path:
    """Write (or find) the native test set of `count` test-stream phantoms and the real test images; with
    the `gan` file of a run (its synthesis GAN), the `gan` family too; with `only`, just those families
    (a held-out family's own test set)."""
    from inference.training.crops import test_sources
    from inference.training.forensic_train import load_gan
    from inference.training.gan import GAN_FAMILY
    from inference.training.manipulations import families_for
    from inference.training.native_sets import write_native_set

    families = [*families_for(kind), *([GAN_FAMILY] if gan is not None else [])]
    unknown = [f for f in only if f not in families]
    if unknown:
        raise ValueError(f"no {', '.join(unknown)} family for {kind} (it has {', '.join(families)}"
                         + ("; gan needs --gan" if GAN_FAMILY in unknown else "") + ")")
    families = [f for f in families if f in only] if only else families
    manifest = out_dir / "manifest.csv"
    if manifest.is_file():
        return manifest
    return write_native_set(kind, test_sources(kind, seed, count, pristine=pristine), families, seed, out_dir,
                            progress, load_gan(gan) if gan is not None else None)


def probe(spec: ForensicSpec) -> tuple[Run, SourceSplit]:
    """Train and validate, nothing else (the learning gate, and the first part of `train_model`)."""
    from inference.training.crops import split_sources
    from inference.training.forensic_train import train_forensic

    sources = split_sources(spec.kind, spec.seed, spec.train_sources, spec.val_sources, spec.crop,
                            pristine=spec.pristine)
    return train_forensic(spec, sources.train, sources.val), sources


def train_model(spec: ForensicSpec, test_count: int, command: str) -> dict[str, Any] | None:
    """A whole run: sources, training (resuming where a run stopped), the test set, the card; None when the
    run was stopped before its budget was spent (it resumes from where it stopped)."""
    run, sources = probe(spec)
    if run.stopped:
        return None
    name = {"xray": "knee", "ct": "lung"}[spec.kind]
    test_dir = spec.run_dir / "test-set"
    own = f" --pristine {spec.pristine}" if spec.pristine else ""
    gan = spec.state_dir / GAN_FILE if (spec.state_dir / GAN_FILE).is_file() else None
    own += f" --gan {gan}" if gan is not None else ""
    test_command = (f"dfnode synth --native --kind {name} --count {test_count} --seed {spec.seed}{own} "
                    f"--out {test_dir}")
    manifest = test_set(spec.kind, spec.seed, test_count, test_dir, spec.progress, spec.pristine, gan)
    reals = sorted({s.group for s in sources.train if s.group.startswith("real")})
    sizes = "1,000-2,400 px radiographs" if spec.kind == "xray" else "512 px CT slices"
    users = sum(s.group.startswith("user-") for s in sources.train)
    data = (f"twin crops made while training from {spec.train_sources} native phantoms ({sizes}), the "
            f"packaged real images of the training split: {', '.join(reals) or 'none'}"
            + (f", and {users} pristine images from {spec.pristine}" if spec.pristine else ""))
    return finish(run, sources.val, manifest, Provenance(command, test_command, data))

