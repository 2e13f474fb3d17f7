"""Checkpoint weights: safetensors files (single or sharded) -> parameters of a built model.

Owns: finding the weight files, reading safetensors headers, mapping every known key layout
(`visual.*`/`model.*`, transformers 5's `model.visual.*`/`model.language_model.*`) onto our
parameter names, checking names and shapes (one error naming every offending key), and
memory-mapped loading into the target dtype and device. The model is built once, on the meta
device, and each tensor is copied out of the mapping straight into its final storage; the
mapped source pages are released after each tensor, so peak memory stays near the size of
the weights. Also writes checkpoints in the Hub layout.
Does not own: building the model (model/), config parsing (config.py) or downloading (hub.py).
"""

from __future__ import annotations

import json
import mmap
import shutil
import struct
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
from safetensors.torch import save_file

from .errors import CheckpointError

HUB_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.json",
             "preprocessor_config.json", "generation_config.json")
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_KEY_PREFIXES = (("model.visual.", "visual."), ("model.language_model.", "model."))


def canonical_key(key: str) -> str:
    """Map any supported checkpoint key layout onto our parameter names."""
    for prefix, replacement in _KEY_PREFIXES:
        if key.startswith(prefix):
            return replacement + key[len(prefix):]
    return key


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, from its index when sharded."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: unreadable shard index ({exc})") from None
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
        absent = [str(f.name) for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(f"{index}: shard files missing: {', '.join(absent)}")
        return files
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE]
    raise CheckpointError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} found")


class _TensorEntry:
    __slots__ = ("file", "dtype", "shape", "begin", "end")

    def __init__(self, file: Path, dtype: torch.dtype, shape: tuple[int, ...], begin: int, end: int):
        self.file, self.dtype, self.shape, self.begin, self.end = file, dtype, shape, begin, end


def _read_header(path: Path) -> Iterator[tuple[str, _TensorEntry]]:
    try:
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
    except (OSError, struct.error, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    data_start = 8 + header_len
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(meta.get("dtype"))
        if dtype is None:
            raise CheckpointError(f"{path}: tensor '{key}' has unsupported dtype {meta.get('dtype')}")
        begin, end = meta["data_offsets"]
        yield key, _TensorEntry(path, dtype, tuple(meta["shape"]), data_start + begin, data_start + end)


def index_checkpoint(directory: Path) -> dict[str, _TensorEntry]:
    """All tensors of a checkpoint, keyed by canonical parameter name."""
    entries: dict[str, _TensorEntry] = {}
    for file in weight_files(directory):
        for key, entry in _read_header(file):
            entries[canonical_key(key)] = entry
    return entries


def load_weights(
    model: torch.nn.Module,
    directory: Path,
    dtype: torch.dtype,
    device: torch.device,
    ignored: frozenset[str] = frozenset(),
    progress: Callable[[int, int], None] | None = None,
    keep_bfloat16: frozenset[str] = frozenset(),
) -> None:
    """Materialise every parameter of `model` (built on the meta device) from the checkpoint.

    `ignored` names checkpoint keys that may be present without a parameter (a tied lm_head).
    `progress(done_bytes, total_bytes)` is called after each tensor. Parameters named in
    `keep_bfloat16` that the checkpoint stores in bfloat16 stay bfloat16 instead of taking `dtype`.
    """
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    entries = index_checkpoint(directory)
    problems = []
    missing = sorted(set(expected) - set(entries))
    unexpected = sorted(set(entries) - set(expected) - ignored)
    wrong = sorted(
        f"{name} {list(entries[name].shape)} (expected {list(shape)})"
        for name, shape in expected.items()
        if name in entries and entries[name].shape != shape
    )
    if missing:
        problems.append(f"missing: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected: {', '.join(unexpected)}")
    if wrong:
        problems.append(f"wrong shape: {', '.join(wrong)}")
    if problems:
        raise CheckpointError(f"{directory}: checkpoint does not match the config; " + "; ".join(problems))

    state = {}
    by_file: dict[Path, list[str]] = {}
    for name in expected:
        by_file.setdefault(entries[name].file, []).append(name)
    total = sum(entries[name].end - entries[name].begin for name in expected)
    done = 0
    for file, names in by_file.items():
        with file.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as mapped:
            for name in names:
                entry = entries[name]
                keep = name in keep_bfloat16 and entry.dtype == torch.bfloat16
                state[name] = _copy_out(mapped, entry, torch.bfloat16 if keep else dtype, device)
                done += entries[name].end - entries[name].begin
                if progress is not None:
                    progress(done, total)
    model.load_state_dict(state, strict=True, assign=True)


def _copy_out(mapped: mmap.mmap, entry: _TensorEntry, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Copy one tensor out of the mapping into fresh storage, then drop its mapped pages."""
    target = dtype if entry.dtype.is_floating_point else entry.dtype
    numel = 1
    for size in entry.shape:
        numel *= size
    if numel == 0:
        return torch.empty(entry.shape, dtype=target, device=device)
    source = torch.frombuffer(mapped, dtype=entry.dtype, count=numel, offset=entry.begin).view(entry.shape)
    out = torch.empty(entry.shape, dtype=target, device=device)
    out.copy_(source)
    del source
    page = mmap.PAGESIZE
    start = entry.begin // page * page
    mapped.madvise(mmap.MADV_DONTNEED, start, entry.end - start)
    return out


def save_checkpoint(
    tensors: Mapping[str, torch.Tensor], directory: Path, max_shard_bytes: int | None = None
) -> None:
    """Write tensors in the Hub layout: one model.safetensors, or shards plus an index when
    their total exceeds `max_shard_bytes`."""
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous()
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(directory / SINGLE_FILE), metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata=metadata)
        weight_map.update({key: name for key in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2), encoding="utf-8")


def copy_hub_files(source: Path, target: Path) -> None:
    """The checkpoint's non-weight files (config, tokenizer, template, processor, generation)."""
    for name in HUB_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
