"""Weights on disk: safetensors, sharded under 16 MiB with a `*.safetensors.index.json`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.errors import ModelLoadError
from inference.model_card import CardWeights

MAX_SHARD_BYTES = 15 * 1024 * 1024


def _sha256(*paths: Path) -> str:
    """SHA-256 of the files' bytes, concatenated in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def save_weights(state: dict[str, torch.Tensor], folder: Path, stem: str,
                 dtype: torch.dtype = torch.float16, max_shard_bytes: int = MAX_SHARD_BYTES) -> CardWeights:
    """Write `state` as `<stem>.safetensors`, or as shards plus an index when it is larger."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu() for k, v in state.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    for old in folder.glob(f"{stem}*.safetensors"):
        old.unlink()
    if len(shards) == 1:
        path = folder / f"{stem}.safetensors"
        save_file(shards[0], str(path))
        path.chmod(0o644)
        sha = _sha256(path)
        return CardWeights(file=path.name, dtype=str(dtype).removeprefix("torch."), sha256=sha,
                           files={path.name: sha})
    names = [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, str(folder / name))
        (folder / name).chmod(0o644)
        weight_map.update({key: name for key in shard})
    index = folder / f"{stem}.safetensors.index.json"
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    paths = [folder / n for n in names]
    return CardWeights(file=index.name, dtype=str(dtype).removeprefix("torch."),
                       sha256=_sha256(*paths), files={n: _sha256(folder / n) for n in names})


def weight_files(weights: CardWeights, folder: Path) -> list[Path]:
    """The weight files a card names, in index order."""
    main = folder / weights.file
    if not main.name.endswith(".index.json"):
        return [main]
    try:
        index = json.loads(main.read_text())
        names = sorted(set(index["weight_map"].values()))
    except FileNotFoundError:
        raise ModelLoadError(f"{main}: weights index is missing") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{main}: weights index is corrupt ({exc})") from None
    return [folder / n for n in names]


def verify_weights(weights: CardWeights, folder: Path) -> list[Path]:
    """Check every file against the card's SHA-256; returns the files. `ModelLoadError` names a bad one."""
    paths = weight_files(weights, folder)
    for path in paths:
        if not path.is_file():
            raise ModelLoadError(f"{path}: weights file is missing")
        expected = weights.files.get(path.name)
        if expected is not None and _sha256(path) != expected:
            raise ModelLoadError(f"{path}: SHA-256 does not match the model card (corrupt or replaced)")
    if _sha256(*paths) != weights.sha256:
        raise ModelLoadError(f"{folder / weights.file}: SHA-256 does not match the model card")
    return paths


def load_verified_weights(weights: CardWeights, folder: Path) -> dict[str, torch.Tensor]:
    """Check every file against the card's SHA-256 and load the tensors as float32."""
    paths = verify_weights(weights, folder)
    state: dict[str, torch.Tensor] = {}
    for path in paths:
        try:
            state.update(load_file(str(path)))
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{path}: weights cannot be read ({exc})") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
