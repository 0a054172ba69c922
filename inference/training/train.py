"""`dfnode train`: the seed paper's method, done properly.

Preprocessing as the node does it, augmentation with benign degradations on both classes, a
60/20/20 split grouped by source, AdamW with a cosine schedule, early stopping on validation AUC,
the best checkpoint kept, AMP on a GPU, resumable from `run_dir/last.pt`. The threshold is set on
the validation split so that at most `max_benign_fpr` of benign-processed pristine images flag.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from inference.letterbox import fit_to_square
from inference.model import build_network, network_input, stack_images, torch_device
from inference.model_card import CardPreprocessing, ModelCard, read_card, write_card
from inference.preprocess import Preprocessing, to_unit_range
from inference.training.augment import augment
from inference.training.datasets import Sample, load_samples
from inference.training.evaluation import (
    Scorer,
    benign_scores,
    evaluate_scores,
    prepare_sample,
    score_samples,
)
from inference.training.manipulations import Tampered
from inference.training.metrics import roc_auc, threshold_for_fpr
from inference.training.online import OnlinePairs, online_pairs
from inference.training.plots import plot_confusion, plot_roc
from inference.training.splits import SPLIT_RULE, grouped_split
from inference.weights import load_verified_weights, save_weights

MEAN, STD = 0.5, 0.25


@dataclass
class TrainSpec:
    """Everything one training run needs; recorded in the model card."""

    model_name: str
    kind: str  # "xray" or "ct"
    data: Path
    weights_dir: Path
    run_dir: Path
    input_size: int = 160
    epochs: int = 30
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 1e-2
    patience: int = 5
    seed: int = 0
    max_minutes: float | None = None
    device: str = "auto"
    workers: int = 1
    exclude_families: tuple[str, ...] = ()
    max_benign_fpr: float = 0.02
    aggregation: str = "max"
    residual: bool = True  # the noise-residual input channel (inference.model.noise_residual)
    region_weight: float = 0.0  # weight of the auxiliary loss on where the manipulation is (synth boxes)
    online_pairs: int = 0  # pairs synthesised afresh each epoch, besides the files (inference.training.online)
    degrade_warmup: int = 0  # epochs over which the benign degradations' odds rise from 0 to full
    dropout: float = 0.0  # before the head, in training only
    drop_path: float = 0.0  # stochastic depth, in training only
    cell_pooling: str = "mean"  # the image's logit from the cell logits: "mean" or "top<k>" (inference.pooling)
    resume: bool = True
    init_from: Path | None = None  # a model card whose weights training starts from (fine-tuning)
    progress: bool = True
    command: str = ""
    data_description: str = ""
    extra: dict = field(default_factory=dict)

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.kind, self.input_size)  # type: ignore[arg-type]


class _TrainImages(torch.utils.data.Dataset):
    """Augmented training images: the files, then `online.count` freshly synthesised pairs (pristine,
    manipulated) per epoch. Items are looked up by (epoch, index), so the augmentation differs per epoch
    and is reproducible, also in loader processes that outlive an epoch."""

    def __init__(self, samples: list[Sample], prep: Preprocessing, seed: int, online: OnlinePairs | None = None,
                 degrade_warmup: int = 0):
        self.samples, self.prep, self.seed, self.online = samples, prep, seed, online
        self.degrade_warmup = degrade_warmup
        self._last_pair: tuple[tuple[int, int], tuple[np.ndarray, Tampered, str]] | None = None

    def __len__(self) -> int:
        return len(self.samples) + (2 * self.online.count if self.online else 0)

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Image, region mask, label, and the weight of the region loss (0 where the region is unknown)."""
        epoch, i = key
        if i < len(self.samples):
            sample = self.samples[i]
            image = prepare_sample(sample, self.prep)
        else:
            sample, values = self._online(epoch, *divmod(i - len(self.samples), 2))
            image = to_unit_range(values, self.prep, False)
        image, mask = augment(np.random.default_rng([self.seed, epoch, i]), image, sample.region_mask(image.shape),
                              self.degradation(epoch))
        size = self.prep.input_size
        region_known = sample.label == 0 or sample.box is not None
        return fit_to_square(image, size), fit_to_square(mask, size), float(sample.label), float(region_known)

    def degradation(self, epoch: int) -> float:
        """How much of the benign degradations' odds epoch `epoch` (from 0) uses: rising over the warm-up,
        so that the network first meets the manipulations' traces undisturbed."""
        return 1.0 if epoch >= self.degrade_warmup else epoch / self.degrade_warmup

    def _online(self, epoch: int, pair: int, label: int) -> tuple[Sample, np.ndarray]:
        """One image of an online pair; twins come one after the other, so the pair is made once."""
        assert self.online is not None
        key = (epoch, pair)
        if self._last_pair is None or self._last_pair[0] != key:
            self._last_pair = (key, self.online.pair(epoch, pair))
        pristine, tampered, family = self._last_pair[1]
        if label == 0:
            return Sample(Path("online"), 0, f"online-{pair}", "pristine"), pristine
        return Sample(Path("online"), 1, f"online-{pair}", family, tampered.box), tampered.image


class PairedBatches(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Batches that keep twins together: consecutive samples of one group (a synth manifest's pristine
    image and its manipulated copy) land in the same batch, so the batch itself shows what changed.
    Each item is (epoch, index): the epoch travels with the index to the loader processes."""

    def __init__(self, samples: list[Sample], batch_size: int, seed: int, online_pairs: int = 0):
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        self.units: list[list[int]] = []
        for i, sample in enumerate(samples):
            unit = self.units[-1] if self.units else None
            if unit is not None and len(unit) < 2 and samples[unit[0]].group == sample.group:
                unit.append(i)
            else:
                self.units.append([i])
        self.units += [[len(samples) + 2 * j, len(samples) + 2 * j + 1] for j in range(online_pairs)]

    def __iter__(self):  # type: ignore[no-untyped-def]
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.units))
        flat = [i for u in order for i in self.units[u]]
        for start in range(0, len(flat) - self.batch_size + 1, self.batch_size):
            yield [(self.epoch, i) for i in flat[start:start + self.batch_size]]

    def __len__(self) -> int:
        return sum(len(u) for u in self.units) // self.batch_size


def _collate(batch: list[tuple[np.ndarray, np.ndarray, float, float]]) -> tuple[torch.Tensor, ...]:
    """Stacked images, masks, labels and region weights; the network input is made on the device."""
    masks = torch.from_numpy(np.stack([b[1] for b in batch]))[:, None]
    return (stack_images([b[0] for b in batch]), masks, torch.tensor([b[2] for b in batch]),
            torch.tensor([b[3] for b in batch]))


def _region_loss(region_logits: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Where the manipulation is, per feature-map cell: the share of the cell inside the box."""
    height, width = region_logits.shape[-2:]
    target = torch.nn.functional.adaptive_avg_pool2d(masks, (height, width))
    per_cell = torch.nn.functional.binary_cross_entropy_with_logits(region_logits.float(), target, reduction="none")
    return (per_cell.mean(dim=(1, 2, 3)) * weights).sum() / weights.sum().clamp(min=1.0)


class _TrainingClock:
    """Minutes spent training, kept in the resumable state; with a time limit, the learning-rate
    schedule anneals by whichever ends first, the epochs or the minutes."""

    def __init__(self, state: dict[str, Any], max_minutes: float | None):
        self.state, self.max_minutes, self.since = state, max_minutes, time.monotonic()

    def start(self) -> None:
        self.since = time.monotonic()

    def update(self) -> None:
        now = time.monotonic()
        self.state["minutes"] = self.state.get("minutes", 0.0) + (now - self.since) / 60
        self.since = now

    def minutes(self) -> float:
        return self.state.get("minutes", 0.0) + (time.monotonic() - self.since) / 60

    def fraction_used(self) -> float:
        return 0.0 if self.max_minutes is None else self.minutes() / self.max_minutes

    def out_of_time(self) -> bool:
        return self.max_minutes is not None and self.minutes() > self.max_minutes


def training_loader(spec: TrainSpec, train_split: list[Sample], device: torch.device
                    ) -> tuple[torch.utils.data.DataLoader, PairedBatches]:
    """The loader of augmented training batches (files, then online pairs) and its sampler, whose
    `epoch` picks the augmentation and the online pairs of the next pass."""
    online = (online_pairs(train_split, spec.kind, spec.input_size, spec.seed, spec.online_pairs)
              if spec.online_pairs > 0 else None)
    dataset = _TrainImages(train_split, spec.preprocessing(), spec.seed, online, spec.degrade_warmup)
    batches = PairedBatches(train_split, spec.batch_size, spec.seed, spec.online_pairs if online else 0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=spec.workers,
                                         collate_fn=_collate, pin_memory=device.type == "cuda",
                                         persistent_workers=spec.workers > 0)
    return loader, batches


def select_samples(spec: TrainSpec) -> dict[str, list[Sample]]:
    """The grouped split, without the families this run holds out."""
    samples = [s for s in load_samples(spec.data) if s.manipulation not in spec.exclude_families]
    return grouped_split(samples, spec.seed)


def card_preprocessing(spec: TrainSpec) -> CardPreprocessing:
    """How this run makes the network's input, as its model card says it."""
    return CardPreprocessing(kind=spec.kind, normalization_mean=MEAN, normalization_std=STD,  # type: ignore[arg-type]
                             residual_channel=spec.residual)


def load_starting_weights(network: torch.nn.Module, spec: TrainSpec) -> dict[str, Any]:
    """Load the weights of the model card `spec.init_from` into `network` (checked against the card's
    SHA-256), refusing a card whose input the run would make differently. Returns what was loaded, for
    the new card."""
    assert spec.init_from is not None
    card = read_card(spec.init_from)
    ours = card_preprocessing(spec)
    theirs = card.preprocessing.model_dump()
    differ = [k for k, v in ours.model_dump().items() if theirs[k] != v and k not in ("photometric", "resize")]
    if differ:
        raise ValueError(f"{spec.init_from}: cannot start this training from it: its preprocessing differs in "
                         + ", ".join(f"{k} ({theirs[k]!r}, this run {getattr(ours, k)!r})" for k in differ))
    state = load_verified_weights(card.weights, spec.init_from.parent)
    network.load_state_dict({k: v.float() for k, v in state.items()})
    return {"card": str(spec.init_from), "name": card.name, "version": card.version,
            "input_size": card.input_size}


def train(spec: TrainSpec) -> dict:
    """Train, pick the threshold, measure on the test split, write weights, card, plots, metrics."""
    torch.manual_seed(spec.seed)
    device = torch_device(spec.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    splits = select_samples(spec)
    prep = spec.preprocessing()
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    network = build_network(in_chans=2 if spec.residual else 1, drop_rate=spec.dropout,
                            drop_path_rate=spec.drop_path, cell_pooling=spec.cell_pooling)
    network = network.to(device).to(memory_format=torch.channels_last)
    # training-only head: where the manipulation is, from the last feature map (not part of the model)
    region_head = torch.nn.Conv2d(network.num_features, 1, kernel_size=1).to(device)
    parameters = list(network.parameters()) + list(region_head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=spec.lr, weight_decay=spec.weight_decay)
    loader, batches = training_loader(spec, splits["train"], device)
    state: dict[str, Any] = {"epoch": 0, "best_auc": -1.0, "stale": 0, "history": [], "minutes": 0.0}
    clock = _TrainingClock(state, spec.max_minutes)
    total_steps = max(1, spec.epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(
            math.pi * min(max(step / total_steps, clock.fraction_used()), 1))))
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    scorer = Scorer(network, prep, MEAN, STD, device, spec.batch_size * 2, spec.residual, spec.workers)
    if spec.init_from is not None:
        state["started_from"] = load_starting_weights(network, spec)
    last = spec.run_dir / "last.pt"
    if spec.resume and last.is_file():
        checkpoint = torch.load(last, map_location=device, weights_only=False)
        network.load_state_dict(checkpoint["model"])
        region_head.load_state_dict(checkpoint["region_head"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state.update(checkpoint["state"])
    clock.start()
    val_labels = np.array([s.label for s in splits["val"]])
    while state["epoch"] < spec.epochs and state["stale"] < spec.patience:
        batches.epoch = state["epoch"]
        network.train()
        bar = tqdm(loader, desc=f"{spec.model_name} epoch {state['epoch'] + 1}/{spec.epochs}",
                   disable=not spec.progress)
        losses = []
        for images, masks, labels, weights in bar:
            images, masks, labels, weights = (t.to(device, non_blocking=True) for t in (images, masks, labels, weights))
            images = network_input(images, MEAN, STD, spec.residual)  # as the node does it, on the device
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                features = network.forward_features(images)
                logits = network.forward_head(features).reshape(-1)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
                if spec.region_weight > 0:
                    loss = loss + spec.region_weight * _region_loss(region_head(features), masks, weights)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", best_val_auc=f"{state['best_auc']:.3f}")
            if clock.out_of_time():  # validate what was learned so far, then stop
                break
        clock.update()
        val_auc = roc_auc(val_labels, score_samples(scorer, splits["val"], desc="validation",
                                                    progress=spec.progress))
        state["epoch"] += 1
        state["history"].append({"epoch": state["epoch"], "loss": float(np.mean(losses)) if losses else None,
                                 "val_auc": val_auc})
        if val_auc > state["best_auc"]:
            state["best_auc"], state["stale"] = val_auc, 0
            torch.save(network.state_dict(), spec.run_dir / "best.pt")
        else:
            state["stale"] += 1
        torch.save({"model": network.state_dict(), "region_head": region_head.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "state": state}, last)
        print(f"{spec.model_name}: epoch {state['epoch']} loss {state['history'][-1]['loss']:.4f} "
              f"val AUC {val_auc:.4f} (best {state['best_auc']:.4f})", flush=True)
        if clock.out_of_time():
            print(f"{spec.model_name}: stopping at the {spec.max_minutes} minute limit", flush=True)
            break
    network.load_state_dict(torch.load(spec.run_dir / "best.pt", map_location=device))
    return _finish(spec, network, scorer, splits, state)


def _finish(spec: TrainSpec, network: torch.nn.Module, scorer: Scorer, splits: dict[str, list[Sample]],
            state: dict) -> dict:
    """Threshold from validation, metrics on test, then weights, card, plots and metrics JSON."""
    # measure exactly what ships: the weights are stored in float16
    network.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                             for k, v in network.state_dict().items()})
    val_pristine = [s for s in splits["val"] if s.label == 0]
    val_benign = benign_scores(scorer, val_pristine, spec.seed + 1, spec.progress)
    clean = score_samples(scorer, val_pristine, desc="val pristine", progress=spec.progress)
    threshold = threshold_for_fpr(np.concatenate([clean, *val_benign.values()]), spec.max_benign_fpr / 2)
    test_scores = score_samples(scorer, splits["test"], desc="test", progress=spec.progress)
    test_benign = benign_scores(scorer, [s for s in splits["test"] if s.label == 0], spec.seed + 2, spec.progress)
    report = evaluate_scores(splits["test"], test_scores, threshold, test_benign)
    report["split"] = "test"
    report["split_sizes"] = {k: len(v) for k, v in splits.items()}
    report["best_val_auc"] = state["best_auc"]
    report["epochs_run"] = state["epoch"]
    weights = save_weights(network.state_dict(), spec.weights_dir, spec.model_name)
    card = ModelCard(
        name=spec.model_name, input_size=spec.input_size, in_chans=2 if spec.residual else 1,
        cell_pooling=spec.cell_pooling,
        preprocessing=card_preprocessing(spec),
        threshold=threshold, series_aggregation=spec.aggregation, weights=weights,  # type: ignore[arg-type]
        training={"command": spec.command, "data": spec.data_description or str(spec.data),
                  "split": f"60/20/20 grouped by source, {SPLIT_RULE}, seed {spec.seed}",
                  "excluded_families": list(spec.exclude_families),
                  "spec": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(spec).items()
                           if k not in ("command", "data_description", "progress")},
                  "history": state["history"],
                  "started_from": state.get("started_from"),
                  "threshold_rule": f"lowest with <= {spec.max_benign_fpr / 2:.1%} of clean and "
                                    "benign-processed validation pristine images at or above it"},
        metrics=report,
    )
    write_card(card, spec.weights_dir / f"{spec.model_name}.json")
    labels = np.array([s.label for s in splits["test"]])
    plot_roc(labels, test_scores, f"{spec.model_name}: ROC, test split", spec.run_dir / f"{spec.model_name}.roc.png")
    plot_confusion(report["confusion"], f"{spec.model_name}: test, threshold {threshold:.2f}",
                   spec.run_dir / f"{spec.model_name}.confusion.png")
    (spec.run_dir / f"{spec.model_name}.metrics.json").write_text(json.dumps(report, indent=2))
    return report
