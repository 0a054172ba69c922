"""Training the forensic design (`inference.forensic`) on twin crops at native pixel scale, on a CPU.

The recipe, in the order a run meets it:
1. the front first, with a small probe network behind it instead of the B4 (`front_minutes`): it
   learns to read the noise residual quickly, and the B4 then starts from a front that sees;
2. the whole network (front, B4 with its residual blocks starting as identities, the cell head), with
   linear warm-up and a cosine decay over the run's budget of minutes, AdamW, an exponential moving
   average of the weights (timm's ModelEmaV3: what ships);
3. a curriculum (`crops.CURRICULUM`): strong traces without degradations first, moving on when the
   paired validation AUC at the level reaches `advance_auc`, or when the level has had its share of the
   budget;
4. the loss: the image logit (top-k cells) against the label, every cell against the share of it the
   manipulated box covers, and a margin between each tampered crop and its pristine twin, which sit
   in the same batch.

Every `checkpoint_minutes` the run writes `last.pt` (everything) in its run folder and a resumable
state that can be committed in `resume_dir` (the averaged weights in float16 shards and the
curriculum's place, `resume.json`): a run resumes from `last.pt`, or on a new machine from the
committed state, with a fresh optimiser after a short warm-up.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from timm.utils import ModelEmaV3
from tqdm import tqdm

from inference.forensic import ForensicNet, pooled
from inference.training.crops import CURRICULUM, Level, Source, Twins, make_twins
from inference.training.gan import GAN_FAMILY, GanSynthesiser, generator_for
from inference.training.manipulations import families_for
from inference.training.metrics import roc_auc
from inference.training.synth import CPU_GAN_SIZE, SynthSpec, train_synthesis_gan
from inference.weights import load_verified_weights, save_weights

RESUME_STATE = "resume.json"
MOST_MINUTES_A_STEP = 1.0  # a step with its validation and checkpoint takes far less


@dataclass
class ForensicSpec:
    """One training run of the forensic design; recorded in the model card."""

    model_name: str
    kind: str  # "xray" or "ct"
    run_dir: Path  # last.pt, plots, the test set
    weights_dir: Path
    resume_dir: Path | None = None  # the committable state (float16 weights, resume.json); default run_dir
    pristine: Path | None = None  # a folder of the user's pristine images, sources beside the phantoms
    minutes: float = 360.0  # the whole run's budget, over every resume
    front_minutes: float = 6.0
    crop: int = 192
    batch_pairs: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 100
    top_k: int = 2
    cell_weight: float = 1.0
    margin_weight: float = 0.5
    ema_decay: float = 0.998
    advance_auc: float = 0.9
    level_share: float = 0.3  # most of the budget one level (but the last) may take
    train_sources: int = 48
    val_sources: int = 8  # phantoms: validation crops, and whole images for the threshold
    val_pairs: int = 96
    validate_minutes: float = 3.0
    checkpoint_minutes: float = 15.0
    exclude_families: tuple[str, ...] = ()
    gan_steps: int = 1500  # the synthesis GAN of the `gan` family: trained once, kept in the state folder
    gan_sources: int = 512
    seed: int = 0
    threads: int = 0
    progress: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.resume_dir or self.run_dir

    def families(self) -> list[str]:
        """The families this run trains on: the kind's local ones and whole-image synthesis (`gan`)."""
        whole = [GAN_FAMILY] if self.gan_steps > 0 else []
        return [f for f in [*families_for(self.kind), *whole] if f not in self.exclude_families]


class ProbeHead(torch.nn.Module):
    """A small network behind the front while it learns first: strided convolutions to the cell grid."""

    def __init__(self, width: int = 48):
        super().__init__()
        layers: list[torch.nn.Module] = []
        channels = 32
        for _ in range(5):  # the front's stride 2, times 32
            layers += [torch.nn.Conv2d(channels, width, 3, 2, 1), torch.nn.BatchNorm2d(width), torch.nn.ReLU(True)]
            channels = width
        self.body = torch.nn.Sequential(*layers, torch.nn.Conv2d(width, 1, 1))

    def forward(self, front: torch.Tensor) -> torch.Tensor:
        return self.body(front)[:, 0]


@dataclass
class Batch:
    inputs: torch.Tensor  # (2B, 2, C, C): pristine, tampered, pristine, ...
    coverage: torch.Tensor  # (2B, h, w)
    labels: torch.Tensor  # (2B,)


def to_batch(twins: list[Twins]) -> Batch:
    inputs = np.stack([x for t in twins for x in (t.pristine, t.tampered)])
    coverage = np.stack([c for t in twins for c in (np.zeros_like(t.coverage), t.coverage)])
    labels = np.tile([0.0, 1.0], len(twins))
    return Batch(torch.from_numpy(inputs).contiguous(memory_format=torch.channels_last),
                 torch.from_numpy(coverage.astype(np.float32)), torch.from_numpy(labels.astype(np.float32)))


def losses(cells: torch.Tensor, batch: Batch, spec: ForensicSpec) -> torch.Tensor:
    """The image, cell and pair-margin losses of one batch's cell logits, weighted and summed."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    image = pooled(cells, spec.top_k)[:, 0]
    image_loss = bce(image, batch.labels)
    cell_loss = bce(cells, batch.coverage[:, :cells.shape[1], :cells.shape[2]])
    gap = image[1::2] - image[0::2]
    margin_loss = torch.relu(2.0 - gap).mean()
    return image_loss + spec.cell_weight * cell_loss + spec.margin_weight * margin_loss


class Pairs:
    """Twin crops drawn from a split's sources, family by family in turn, deterministic per step."""

    def __init__(self, sources: list[Source], spec: ForensicSpec, stream: int, gan: GanSynthesiser | None):
        self.sources, self.spec, self.stream, self.gan = sources, spec, stream, gan

    def draw(self, step: int, count: int, level: Level) -> list[Twins]:
        rng = np.random.default_rng([self.spec.seed, self.stream, step])
        families = self.spec.families()
        out = []
        for i in range(count):
            source, donor = (self.sources[int(j)] for j in rng.integers(len(self.sources), size=2))
            out.append(make_twins(rng, self.spec.kind, source, donor, families[(step * count + i) % len(families)],
                                  level, self.spec.crop, self.gan))
        return out


def validate(modules: list[torch.nn.Module], cells_of: Callable[[torch.Tensor], torch.Tensor], pairs: list[Twins],
             spec: ForensicSpec) -> dict[str, float]:
    """Paired AUC of the image logits, and how often the hottest cell of a tampered crop lies in its box
    against how often a cell chosen at random would. `modules` are put in eval mode meanwhile."""
    for module in modules:
        module.eval()
    scores, hits, chance = [], [], []
    with torch.inference_mode():
        for start in range(0, len(pairs), 8):
            batch = to_batch(pairs[start:start + 8])
            cells = cells_of(batch.inputs)
            scores.append(pooled(cells, spec.top_k)[:, 0].numpy())
            for cell_map, coverage in zip(cells[1::2], batch.coverage[1::2], strict=True):
                inside = coverage[:cell_map.shape[0], :cell_map.shape[1]] > 0
                hits.append(bool(inside.flatten()[int(cell_map.flatten().argmax())]))
                chance.append(float(inside.float().mean()))
    for module in modules:
        module.train()
    labels = np.tile([0, 1], len(pairs))
    flat = np.concatenate(scores)
    figures = {"paired_auc": roc_auc(labels, flat), "argmax_in_box": float(np.mean(hits)),
               "chance_in_box": float(np.mean(chance))}
    for family in sorted({t.family for t in pairs}):  # each family's tampered crops against every pristine one
        mine = np.array([t.family == family for t in pairs])
        figures[f"auc_{family}"] = roc_auc(np.r_[np.zeros(len(pairs)), np.ones(mine.sum())],
                                           np.r_[flat[0::2], flat[1::2][mine]])
    return figures


class Run:
    """A training run's network, optimiser, averaged weights and state, and how they are saved."""

    def __init__(self, spec: ForensicSpec):
        self.spec = spec
        torch.manual_seed(spec.seed)
        self.network = ForensicNet(top_k=spec.top_k).to(memory_format=torch.channels_last)
        self.probe = ProbeHead()
        self.state: dict[str, Any] = {"phase": "front", "level": 0, "level_minutes": 0.0, "step": 0,
                                      "minutes": 0.0, "history": []}
        self.optimizer = self._optimizer("front")
        self.ema: ModelEmaV3 | None = None
        self.stopped = False  # by a signal, before the budget was spent

    def _optimizer(self, phase: str) -> torch.optim.Optimizer:
        modules: list[torch.nn.Module] = [self.network.front, self.probe] if phase == "front" else [self.network]
        params = [p for m in modules for p in m.parameters()]
        return torch.optim.AdamW(params, lr=self.spec.lr, weight_decay=self.spec.weight_decay)

    def start_whole(self) -> None:
        """Leave the front phase: the B4 behind the front, a new optimiser, the weights' average."""
        self.state["phase"] = "whole"
        self.state["whole_from_step"] = self.state["step"]
        self.optimizer = self._optimizer("whole")
        self.ema = ModelEmaV3(self.network, decay=self.spec.ema_decay, use_warmup=True)

    def cells(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.state["phase"] == "front":
            return self.probe(self.network.front(inputs)).float()
        return self.network.cells(inputs)

    def shipped(self) -> ForensicNet:
        """The network that ships: the averaged weights once the whole network trains."""
        return self.ema.module if self.ema is not None else self.network  # type: ignore[return-value]

    def learning_rate(self) -> float:
        spec, state = self.spec, self.state
        since = state["step"] - state.get("whole_from_step", 0)
        warm = min(1.0, (since + 1) / spec.warmup_steps)
        used = min(1.0, state["minutes"] / spec.minutes)
        return spec.lr * warm * 0.5 * (1 + math.cos(math.pi * used))

    def save(self) -> None:
        """`last.pt` and the committable state (float16 weights, resume.json)."""
        run_dir = self.spec.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"network": self.network.state_dict(), "probe": self.probe.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "ema": self.ema.module.state_dict() if self.ema is not None else None,
                    "state": self.state}, run_dir / "last.pt.tmp")
        (run_dir / "last.pt.tmp").replace(run_dir / "last.pt")
        state_dir = self.spec.state_dir
        weights = save_weights(self.shipped().state_dict(), state_dir, "network")
        (state_dir / RESUME_STATE).write_text(json.dumps({"state": self.state, "weights": weights.model_dump(),
                                                        "spec": _spec_record(self.spec)}, indent=1))

    def resume(self) -> str | None:
        """Continue from `last.pt`, else from the committed state; what it resumed from, or None."""
        run_dir = self.spec.run_dir
        if (run_dir / "last.pt").is_file():
            saved = torch.load(run_dir / "last.pt", weights_only=False)
            self.state = saved["state"]
            self.network.load_state_dict(saved["network"])
            self.probe.load_state_dict(saved["probe"])
            if self.state["phase"] == "whole":
                self.start_whole()
                assert self.ema is not None
                self.ema.module.load_state_dict(saved["ema"])
            self.optimizer.load_state_dict(saved["optimizer"])
            return str(run_dir / "last.pt")
        state_dir = self.spec.state_dir
        if (state_dir / RESUME_STATE).is_file():
            from inference.model_card import CardWeights

            record = json.loads((state_dir / RESUME_STATE).read_text())
            state = load_verified_weights(CardWeights.model_validate(record["weights"]), state_dir)
            self.network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
            self.state = record["state"]
            if self.state["phase"] == "whole":
                self.start_whole()
                self.state["whole_from_step"] = self.state["step"]  # a fresh optimiser warms up again
            return str(state_dir / RESUME_STATE)
        return None


GAN_FILE = "gan.safetensors"


def synthesis_gan(spec: ForensicSpec) -> GanSynthesiser:
    """The run's synthesis GAN (64 px, as `synth` trains it on a CPU): loaded from the state folder, or
    trained once and kept there, so that a resumed run and its test set use the same one."""
    path = spec.state_dir / GAN_FILE
    if path.is_file():
        return load_gan(path)
    synth = SynthSpec(spec.kind, 1, 256, spec.seed, gan_steps=spec.gan_steps, gan_sources=spec.gan_sources,
                      gan_size=CPU_GAN_SIZE)
    gan = train_synthesis_gan(synth, spec.progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in gan.generator.state_dict().items()}, str(path))
    return gan


def load_gan(path: Path) -> GanSynthesiser:
    """A synthesis GAN saved by `synthesis_gan`."""
    generator = generator_for(CPU_GAN_SIZE)
    generator.load_state_dict(load_file(str(path)))
    return GanSynthesiser(generator.eval())


def _spec_record(spec: ForensicSpec) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(spec).items() if k != "progress"}


def train_forensic(spec: ForensicSpec, train_sources: list[Source], val_sources: list[Source]) -> Run:
    """Train until the budget of minutes is spent (over every resume), or until SIGTERM or SIGINT (then
    `run.stopped`); returns the run, saved."""
    if spec.threads:
        torch.set_num_threads(spec.threads)
    run = Run(spec)
    resumed = run.resume()
    if resumed:
        print(f"{spec.model_name}: resuming from {resumed} at step {run.state['step']}, "
              f"{run.state['minutes']:.1f} of {spec.minutes:.0f} minutes", flush=True)
    started = time.monotonic()
    gan = synthesis_gan(spec) if GAN_FAMILY in spec.families() else None
    run.state["minutes"] += (time.monotonic() - started) / 60  # training the GAN spends the budget too
    train_pairs = Pairs(train_sources, spec, 1, gan)
    val_sets: dict[int, list[Twins]] = {}

    def val_pairs(level: int) -> list[Twins]:
        if level not in val_sets:
            val_sets[level] = Pairs(val_sources, spec, 2, gan).draw(level, spec.val_pairs, CURRICULUM[level])
        return val_sets[level]

    with stop_requests() as stop:
        _train_steps(run, train_pairs, val_pairs, stop)
    if stop:  # stopped early: keep what was learned, to go on later
        run.stopped = True
        run.save()
        print(f"{spec.model_name}: stopped at {run.state['minutes']:.1f} of {spec.minutes:.0f} minutes; saved "
              f"{spec.state_dir / RESUME_STATE}", flush=True)
        return run
    _record(run, val_pairs, "end")
    run.save()
    return run


def _train_steps(run: Run, train_pairs: Pairs, val_pairs: Callable[[int], list[Twins]], stop: list[int]) -> None:
    """Steps until the budget is spent or a stop is requested, validating and saving on the way."""
    spec = run.spec
    since = time.monotonic()
    last_validation = last_checkpoint = run.state["minutes"]
    bar = tqdm(total=round(spec.minutes), initial=round(run.state["minutes"]), unit="min", disable=not spec.progress,
               desc=f"{spec.model_name} training")
    while run.state["minutes"] < spec.minutes and not stop:
        level = CURRICULUM[run.state["level"]]
        batch = to_batch(train_pairs.draw(run.state["step"], spec.batch_pairs, level))
        for group in run.optimizer.param_groups:
            group["lr"] = run.learning_rate()
        total = losses(run.cells(batch.inputs), batch, spec)
        run.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_([p for g in run.optimizer.param_groups for p in g["params"]], 5.0)
        run.optimizer.step()
        if run.ema is not None:
            run.ema.update(run.network, step=run.state["step"] - run.state["whole_from_step"])
        run.state["step"] += 1
        now = time.monotonic()
        elapsed = min((now - since) / 60, MOST_MINUTES_A_STEP)  # a process stopped meanwhile spends nothing
        since = now
        run.state["minutes"] += elapsed
        run.state["level_minutes"] += elapsed
        bar.set_postfix(level=level.name, phase=run.state["phase"], loss=f"{total.item():.3f}")
        bar.update(round(run.state["minutes"]) - bar.n)
        if run.state["phase"] == "front" and run.state["minutes"] >= spec.front_minutes:
            _record(run, val_pairs, "front done")
            run.start_whole()
        if run.state["minutes"] - last_validation >= spec.validate_minutes:
            last_validation = run.state["minutes"]
            figures = _record(run, val_pairs, "")
            last_level = run.state["level"] == len(CURRICULUM) - 1
            if not last_level and run.state["phase"] == "whole" and (
                    figures["paired_auc"] >= spec.advance_auc
                    or run.state["level_minutes"] >= spec.level_share * spec.minutes):
                run.state["level"] += 1
                run.state["level_minutes"] = 0.0
        if run.state["minutes"] - last_checkpoint >= spec.checkpoint_minutes:
            last_checkpoint = run.state["minutes"]
            run.save()
    bar.close()


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """A list that SIGTERM and SIGINT append to while the block runs (the loop then ends at the next
    step and saves the run); the signals' handlers before it afterwards."""
    requests: list[int] = []

    def request(signum: int, frame: object) -> None:
        requests.append(signum)

    before = {signum: signal.signal(signum, request) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield requests
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def _record(run: Run, val_pairs: Callable[[int], list[Twins]], note: str) -> dict[str, float]:
    """Validate at the current level (the averaged weights once there are any) and log it in the history."""
    level = run.state["level"]
    cells_of: Callable[[torch.Tensor], torch.Tensor]
    if run.state["phase"] == "front":
        modules, cells_of = [run.network.front, run.probe], run.cells
    else:
        shipped = run.shipped()
        modules, cells_of = [shipped], shipped.cells
    figures = validate(modules, cells_of, val_pairs(level), run.spec)
    entry = {"step": run.state["step"], "minutes": round(run.state["minutes"], 2), "phase": run.state["phase"],
             "level": CURRICULUM[level].name, **{k: round(v, 4) for k, v in figures.items()}}
    if note:
        entry["note"] = note
    run.state["history"].append(entry)
    print(f"{run.spec.model_name}: " + " ".join(f"{k}={v}" for k, v in entry.items()), flush=True)
    return figures

