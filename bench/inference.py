"""Inference throughput per model on this machine: raw timm EfficientNet-B4 (eager float32, batch 8, at
the card's input size) against dfnode's whole path (read, decode, preprocess, model), with each lever
measured on its own. With `--device cuda` the same comparison on a GPU: the baseline stays eager float32
at batch 8, the path runs the PyTorch backend with AMP (float16) at `--batch`.

    .venv/bin/python -m bench.inference [--images 64] [--repeats 3] [--compile]
    .venv/bin/python -m bench.inference --design forensic --images 8   # native scale, seconds per image
    python -m bench.inference --device cuda --batch 64 --images 512
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import numpy as np
import timm
import torch

from bench.common import REPO, median, print_table
from inference.allocator import reuse_large_buffers
from inference.forensic import forensic_input
from inference.forensic_classifier import ForensicClassifier
from inference.letterbox import compiled_box_means_built
from inference.model import Classifier, load_classifier, torch_threads_for
from inference.pixels import read_image
from inference.preparing import PreparingProcesses
from inference.preprocess import prepare_dataset
from inference.scoring import score_files
from inference.tiling import tiled_cells
from node.config import InferenceSettings
from tests.helpers import copy_with_new_uids, ct_series, real_file
from tests.models import random_forensic_network, write_forensic_test_model, write_test_model

BATCH = 8
THREADS = 2  # preparing threads measured on a CPU


def rate(images: int, run: Callable[[], object], repeats: int) -> float:
    """Images per second, the median of `repeats` timed runs after one warm-up (GPU work included:
    each run waits for the device)."""
    def finished() -> None:
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    finished()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        finished()
        seconds.append(time.perf_counter() - started)
    return images / median(seconds)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch's intra-op thread count set to `count` inside the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def alternating(images: int, runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Images per second of each run, timed in turn (one of each per round), the median of `repeats`
    rounds after one warm-up round: a shared machine's load then falls on every run alike."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for round_number in range(repeats + 1):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            if round_number:
                seconds[name].append(time.perf_counter() - started)
    return {name: images / median(values) for name, values in seconds.items()}


def batches(classifier: Classifier, count: int, batch: int = BATCH,
            device: torch.device | None = None) -> list[torch.Tensor]:
    """Model-ready batches of random images (the network's time does not depend on the pixels)."""
    size = classifier.card.input_size
    rng = np.random.default_rng(0)
    images = [rng.random((size, size), dtype=np.float32) for _ in range(count)]
    return [classifier.input_batch(images[i:i + batch]).to(device or torch.device("cpu"))
            for i in range(0, count, batch)]


def raw_timm(classifier: Classifier, ready: list[torch.Tensor]) -> Callable[[], None]:
    """The baseline: a plain timm EfficientNet-B4 with the classifier's weights, eager float32, on the
    batches' device, run over `ready` in contiguous (NCHW) layout."""
    raw = timm.create_model("efficientnet_b4", pretrained=False, num_classes=1,
                            in_chans=classifier.card.in_chans).eval().to(ready[0].device)
    raw.load_state_dict(classifier.torch_network.state_dict())

    def forward() -> None:
        with torch.no_grad():
            for b in ready:
                raw(b)

    return forward


def series_for(model: str, folder: Path, count: int) -> list[Path]:
    """What the model sees in practice: 512 x 512 CT slices, or real CR radiographs (2,140 x 1,760)."""
    if model == "lung":
        return ct_series(folder, slices=count, size=512)
    return [copy_with_new_uids(real_file("RG1_UNCR.dcm"), folder, BodyPartExamined="KNEE") for _ in range(count)]


def measure(model: str, folder: Path, count: int, repeats: int, compile_too: bool,
            input_size: int | None, device: str = "cpu", batch: int = BATCH, preparing_threads: int = 0
            ) -> list[list[str]]:
    card = REPO / "weights" / f"{model}.json"
    if input_size is not None:  # the same network at another input size, random weights: speed only
        card = write_test_model(folder / f"{model}-{input_size}", model, "ct" if model == "lung" else "xray",
                                input_size=input_size)
        model = f"{model} @{input_size}"
    if device != "cpu":
        return measure_gpu(model, card, folder, count, repeats, device, batch, preparing_threads)
    eager = load_classifier(card, backend="torch", batch_size=BATCH)
    fast = load_classifier(card, backend="onnxruntime", cache_dir=folder / "cache", batch_size=BATCH)
    ready = batches(eager, count)
    raw_forward = raw_timm(eager, [b.contiguous() for b in ready])
    files = series_for(model.split()[0], folder / model.split()[0], count)

    def tuned_forward() -> None:
        with torch.inference_mode():
            for b in ready:
                eager.torch_network(b)

    def ort_forward() -> None:
        assert fast.runner is not None
        for b in ready:
            fast.runner(b)

    def node_path() -> None:
        """The path with torch's threads as a node running this model sets them (`torch_threads_for`)."""
        with torch_threads(torch_threads_for([fast])):
            score_files(fast, files)

    baseline, ort, path = "raw timm, eager float32 (baseline)", "model: onnxruntime", \
        "dfnode path, onnxruntime backend (default)"
    prepared = "read + decode + preprocess only"
    # the ratios that matter (the path's to the baseline, the preparation's share of the path), timed
    # in turn so that the machine's load falls on all four alike
    paired = alternating(count, {baseline: raw_forward, ort: ort_forward, path: node_path,
                                 prepared: lambda: prepare_on_threads(files, eager, 1)}, repeats)
    processes = PreparingProcesses(THREADS)
    rows: list[tuple[str, float]] = [
        (baseline, paired[baseline]),
        ("model: channels_last + inference_mode", rate(count, tuned_forward, repeats)),
    ]
    if compile_too:
        compiled = torch.compile(eager.torch_network)

        def compiled_forward() -> None:
            with torch.inference_mode():
                for b in ready:
                    compiled(b)

        rows.append(("model: torch.compile (inductor) + channels_last + inference_mode",
                     rate(count, compiled_forward, repeats)))
    rows += [
        (ort, paired[ort]),
        (prepared, paired[prepared]),
        (f"read + decode + preprocess on {THREADS} threads at once",
         rate(count, lambda: prepare_on_threads(files, eager, THREADS), repeats)),
        (f"read + decode + preprocess in {THREADS} processes at once",
         rate(count, lambda: prepare_in_processes(files, eager, processes), repeats)),
        ("dfnode path, PyTorch backend", rate(count, lambda: score_files(eager, files), repeats)),
        (path, paired[path]),
    ]
    processes.close()
    return summary(model, rows)


def prepare_on_threads(files: list[Path], classifier: Classifier, threads: int) -> None:
    """Read and prepare every file, on this thread or on `threads` threads at once (how preparation
    scales, which is what a GPU node's `inference.preparing_threads` relies on)."""
    spec = classifier.card.preprocessing_spec()
    if threads == 1:
        for path in files:
            prepare_dataset(read_image(path), spec)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(lambda path: prepare_dataset(read_image(path), spec), files))


def prepare_in_processes(files: list[Path], classifier: Classifier, processes: PreparingProcesses) -> None:
    """Read and prepare every file in the preparing processes, a batch of files per task (what a node
    with `inference.preparing_in: processes` does)."""
    spec = classifier.card.preprocessing_spec()
    parts = [files[i:i + BATCH] for i in range(0, len(files), BATCH)]
    for prepared in [processes.start(part, spec) for part in parts]:
        prepared()


def summary(model: str, rows: list[tuple[str, float]]) -> list[list[str]]:
    """Table rows: each measurement against the first (the baseline), the preparation's share of the
    path (the last row), and the path's ratio."""
    baseline, path = rows[0][1], rows[-1][1]
    prepare = next(r for name, r in rows if name.startswith("read"))
    share = path / prepare  # seconds preparing per second of the whole path
    out = [[model, name, f"{value:.1f}", f"{value / baseline:.2f}x"] for name, value in rows]
    out.append([model, "decode + preprocess share of the dfnode path", f"{share * 100:.0f}%", ""])
    out.append([model, "dfnode path vs raw timm (target >= 1.8x)", "", f"{path / baseline:.2f}x"])
    return out


def measure_gpu(model: str, card: Path, folder: Path, count: int, repeats: int, device: str,
                batch: int, preparing_threads: int = 0) -> list[list[str]]:
    """The GPU comparison: raw timm eager float32 at batch 8 against the model with AMP at `batch`
    and dfnode's whole path (reading and preparing on the CPU, the model on the GPU)."""
    gpu = torch.device(device)
    classifier = load_classifier(card, device=device, backend="torch", batch_size=batch)
    raw_forward = raw_timm(classifier, [b.contiguous() for b in batches(classifier, count, BATCH, gpu)])
    large = batches(classifier, count, batch, gpu)
    files = series_for(model.split()[0], folder / model.split()[0], count)

    def amp_forward() -> None:
        with torch.inference_mode(), torch.autocast(gpu.type, dtype=torch.float16):
            for b in large:
                classifier.torch_network(b)

    threads = InferenceSettings(device=device, preparing_threads=preparing_threads).preparing_thread_count()
    processes = PreparingProcesses(threads)
    rows = [
        ("raw timm, eager float32, batch 8 (baseline)", rate(count, raw_forward, repeats)),
        (f"model: channels_last + AMP float16, batch {batch}", rate(count, amp_forward, repeats)),
        ("read + decode + preprocess only (CPU, one thread)",
         rate(count, lambda: prepare_on_threads(files, classifier, 1), repeats)),
        (f"dfnode path on {torch.cuda.get_device_name(gpu)}, one preparing thread",
         rate(count, lambda: score_files(classifier, files), repeats)),
        (f"dfnode path, PyTorch backend on {torch.cuda.get_device_name(gpu)}, AMP, batch {batch}, "
         f"{threads} preparing threads", rate(count, lambda: score_files(classifier, files, 1, threads), repeats)),
        (f"dfnode path, PyTorch backend on {torch.cuda.get_device_name(gpu)}, AMP, batch {batch}, "
         f"{threads} preparing processes", rate(count, lambda: score_files(classifier, files, 1, processes), repeats)),
    ]
    processes.close()
    return summary(model, rows)


def series_batch_levers(fast: ForensicClassifier, inputs: list[torch.Tensor]) -> dict[str, Callable[[], object]]:
    """A batch of same-size slices through onnxruntime: in passes of at most one tile and its halo of
    pixels (the default, 2 slices of 512 x 512), against the whole batch in one pass (more memory)."""
    f = fast.forensic
    batches = [torch.cat(inputs[start:start + BATCH]) for start in range(0, len(inputs), BATCH)]

    def bounded() -> None:
        for batch in batches:
            fast.cell_map(batch)

    def one_pass() -> None:
        for batch in batches:
            tiled_cells(fast.runner.cells, batch, f.cell_stride, f.tile_size, f.tile_halo,  # type: ignore[union-attr]
                        max_pixels=batch.numel())
    return {f"model: onnxruntime, batches of {BATCH} slices in passes of 2 (default)": bounded,
            f"model: onnxruntime, batches of {BATCH} slices in one pass": one_pass}


def measure_forensic(model: str, folder: Path, count: int, repeats: int) -> list[list[str]]:
    """The forensic design (random weights, the shipped tiling) on what the node receives: the raw network
    (eager float32, one pass over the whole native image) against onnxruntime in tiles and dfnode's path
    (read, decode, window, tiles on onnxruntime, top cells)."""
    kind = "ct" if model == "lung" else "xray"
    card = write_forensic_test_model(folder / f"{model}-forensic", model, kind)
    fast = cast(ForensicClassifier, load_classifier(card, backend="onnxruntime", cache_dir=folder / "cache",
                                                    batch_size=BATCH))
    files = series_for(model, folder / f"{model}-files", count)
    prep = fast.card.preprocessing_spec()
    images = [frame.pixels for path in files for frame in prepare_dataset(read_image(path), prep)]
    inputs = [torch.from_numpy(forensic_input(image))[None] for image in images]
    raw = random_forensic_network()

    def raw_forward() -> None:
        with torch.no_grad():
            for x in inputs:
                raw.cells(x)

    def ort_tiles() -> None:
        for x in inputs:
            fast.cell_map(x)

    def node_path() -> None:
        with torch_threads(torch_threads_for([fast])):
            score_files(fast, files)

    side = "x".join(map(str, images[0].shape))
    baseline, path = f"raw network, eager float32, whole {side} image", "dfnode path, onnxruntime in tiles (default)"
    runs: dict[str, Callable[[], object]] = {baseline: raw_forward, "model: onnxruntime in tiles": ort_tiles,
                                             path: node_path}
    if model == "lung":  # a series' slices share a size: the node scores BATCH of them a call
        runs.update(series_batch_levers(fast, inputs))
    paired = alternating(len(images), runs, repeats)
    rows = [[f"{model} forensic", name, f"{value:.2f}", f"{1 / value:.2f}", f"{value / paired[baseline]:.2f}x"]
            for name, value in paired.items()]
    target = {"knee": 5.0, "lung": 0.3}[model]
    rows.append([f"{model} forensic", f"dfnode path: seconds per image (target <= {target} s); vs raw (>= 1.5x)", "",
                 f"{1 / paired[path]:.2f}", f"{paired[path] / paired[baseline]:.2f}x"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["knee", "lung"])
    parser.add_argument("--compile", action="store_true", help="also torch.compile (minutes to compile on a CPU)")
    parser.add_argument("--input-size", type=int, help="the same networks at this input size (random weights)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU comparison")
    parser.add_argument("--batch", type=int, default=BATCH, help="the path's batch size on a GPU")
    parser.add_argument("--design", choices=["letterbox", "forensic"], default="letterbox",
                        help="forensic: the native-scale design with random weights, per image (the shipped cards "
                             "are letterbox)")
    parser.add_argument("--preparing-threads", type=int, default=0,
                        help="the GPU path's preparing threads (0: the node's default, all cores but one)")
    args = parser.parse_args()
    reuse_large_buffers()  # as `dfnode` does
    folder = Path(tempfile.mkdtemp(prefix="dfnode-bench-inference-"))
    if args.design == "forensic":
        try:
            rows = [row for model in args.models for row in measure_forensic(model, folder, args.images, args.repeats)]
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print_table(f"Inference, forensic design, CPU, {args.images} files per run, median of {args.repeats}",
                    ["model", "what runs", "images/s", "s/image", "vs raw"], rows)
        return
    try:
        rows = [row for model in args.models for row in measure(model, folder, args.images, args.repeats,
                                                                 args.compile, args.input_size, args.device,
                                                                 args.batch, args.preparing_threads)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    where = f"CPU, batch {BATCH}" if args.device == "cpu" else torch.cuda.get_device_name(torch.device(args.device))
    box = "compiled" if compiled_box_means_built() else "numpy (inference._clipped_box not built)"
    print_table(f"Inference, {where}, {args.images} images per run, median of {args.repeats}, radiographs' box: {box}",
                ["model", "what runs", "images/s", "vs raw timm"], rows)


if __name__ == "__main__":
    main()
