"""Training data: JSONL conversations -> validated examples -> length-grouped, padded batches.

Owns: reading one conversation per line (Qwen or OpenAI message form, a list or {"messages": [...]})
with media paths relative to the file, and its optional "objects" (object_targets.py); validating
every line up front with its line number (JSON, missing assistant turn, unreadable media, malformed
objects, too long for max_length), in one process or several; labels on assistant answers only
(their tokens and their <|im_end|>; system, user, template and vision tokens are -100); a
deterministic length-grouped batch order; collation with right padding.
Does not own: the optimisation loop (trainer.py).
"""

from __future__ import annotations

import json
import math
import random
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from multiprocessing import current_process, get_all_start_methods, get_context
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidInputError
from ..processing import Processor
from ..processing.chat import normalize_conversation
from .object_targets import ObjectBox, parse_objects

IGNORE = -100
MIN_LINES_PER_PROCESS = 2000  # read_records starts a process for no fewer lines than this
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@dataclass(frozen=True)
class Record:
    line: int
    messages: list[dict[str, Any]]
    length: int  # tokens, visual included
    objects: tuple[tuple[ObjectBox, ...], ...] | None = None  # the line's "objects", one tuple per image


class DatasetError(InvalidInputError):
    """Lines of a training file that cannot be used; the message lists each with its line number."""


def read_records(path: Path, processor: Processor, max_length: int, skip_invalid: bool = False,
                 shard: tuple[int, int] = (0, 1), workers: int = 1) -> tuple[list[Record], list[str]]:
    """Valid records of `path` and the problems found. With skip_invalid=False any problem raises.

    shard=(rank, world): media are prepared (validated) only for lines i with i % world == rank;
    the other lines are checked as text. Callers gather the shards' results.
    workers > 1: the lines are split among up to that many processes, MIN_LINES_PER_PROCESS at least
    each (a shorter file, or a call from a daemon process, which may not start any, is checked
    here); records and problems come back in file order either way.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    job = partial(_check_lines, processor=processor, base=path.parent, name=path.name, max_length=max_length,
                  shard=shard)
    processes = 1 if current_process().daemon else min(workers, math.ceil(len(numbered) / MIN_LINES_PER_PROCESS))
    if processes > 1:
        # one contiguous part a worker, so the processor (5 MB pickled with Qwen's tokenizer) travels
        # once to each; forked like DataLoader workers (no re-import of the caller's script), one
        # torch thread each
        size = math.ceil(len(numbered) / processes)
        parts = [numbered[i:i + size] for i in range(0, len(numbered), size)]
        context = get_context("fork" if "fork" in get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(len(parts), mp_context=context, initializer=torch.set_num_threads,
                                 initargs=(1,)) as pool:
            results = list(pool.map(job, parts))
    else:
        results = [job(numbered)]
    records = [record for part_records, _ in results for record in part_records]
    problems = [problem for _, part_problems in results for problem in part_problems]
    if problems and not skip_invalid:
        raise invalid_lines(problems)
    return records, problems


def _check_lines(numbered: list[tuple[int, str]], processor: Processor, base: Path, name: str, max_length: int,
                 shard: tuple[int, int]) -> tuple[list[Record], list[str]]:
    """read_records' check of some (line number, text) pairs: their records and their problems."""
    rank, world = shard
    records, problems = [], []
    for number, line in numbered:
        try:
            obj = json.loads(line)
            messages = line_messages(obj, base)
            if not any(m.get("role") == "assistant" for m in messages):
                raise InvalidInputError("no assistant turn to learn from")
            objects = None
            if isinstance(obj, dict) and "objects" in obj:
                images = sum(item.kind == "image" for item in normalize_conversation(messages)[1])
                objects = parse_objects(obj["objects"], images)
            length = -1
            if (number - 1) % world == rank:
                ids = processor.conversation_ids(messages, add_generation_prompt=False)
                labels = assistant_labels(processor, ids)
                length = len(ids)
                if length > max_length:
                    raise InvalidInputError(f"{length} tokens is above --max-length {max_length}")
                if all(label == IGNORE for label in labels):
                    raise InvalidInputError("the assistant answers are empty")
            records.append(Record(number, messages, length, objects))
        except (ValueError, InvalidInputError) as error:
            problems.append(f"{name} line {number}: {error}")
    return records, problems


def invalid_lines(problems: list[str]) -> DatasetError:
    """One error listing (the first few) invalid lines."""
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    return DatasetError(f"{len(problems)} invalid line(s): {shown} (use --skip-invalid to train without them)")


def line_messages(obj: Any, base: Path) -> list[dict[str, Any]]:
    """The messages of one JSONL line, local media paths resolved against `base` (the file's folder)."""
    messages = obj.get("messages") if isinstance(obj, dict) else obj
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidInputError("a line must be a list of messages or {\"messages\": [...]}")
    return [_with_local_paths(m, base) for m in messages]


def _with_local_paths(message: dict[str, Any], base: Path) -> dict[str, Any]:
    content = message.get("content")
    if not isinstance(content, list):
        return message
    parts = []
    for part in content:
        if isinstance(part, dict):
            part = dict(part)
            for key in ("image", "video"):
                value = part.get(key)
                if isinstance(value, str) and not _URL.match(value) and not Path(value).is_absolute():
                    part[key] = str(base / value)
                elif isinstance(value, list):
                    part[key] = [str(base / v) if isinstance(v, str) and not _URL.match(v)
                                 and not Path(v).is_absolute() else v for v in value]
            for key in ("image_url", "video_url"):
                value = part.get(key)
                url = value.get("url") if isinstance(value, dict) else value
                if isinstance(url, str) and not _URL.match(url) and not Path(url).is_absolute():
                    part[key] = {**value, "url": str(base / url)} if isinstance(value, dict) else str(base / url)
        parts.append(part)
    return {**message, "content": parts}


def encode_example(processor: Processor, messages: list[dict[str, Any]],
                   objects: tuple[tuple[ObjectBox, ...], ...] | None = None) -> tuple[list[int], list[int], dict]:
    """Token ids, labels (assistant answers and their <|im_end|> only), and the media tensors with
    the line's objects (one tuple per image; None when the line has none)."""
    ids, images, videos = processor.encode_conversation(messages, add_generation_prompt=False)
    return ids, assistant_labels(processor, ids), {"images": images, "videos": videos, "objects": objects}


def assistant_labels(processor: Processor, ids: list[int]) -> list[int]:
    header = processor.tokenizer.encode("<|im_start|>assistant\n").ids
    end = processor.tokenizer.token_to_id("<|im_end|>")
    labels = [IGNORE] * len(ids)
    i = 0
    while i <= len(ids) - len(header):
        if ids[i:i + len(header)] == header:
            j = i + len(header)
            while j < len(ids) and ids[j] != end:
                labels[j] = ids[j]
                j += 1
            if j < len(ids):
                labels[j] = end
            i = j + 1
        else:
            i += 1
    return labels


def batch_order(lengths: list[int], batch_size: int, seed: int, epoch: int,
                group_by_length: bool = True) -> list[list[int]]:
    """Indices in batches, deterministic for (seed, epoch). Grouped by length: shuffle, sort within
    windows of 50 batches, shuffle the batches (less padding; but batches then tend to hold one kind
    of example, which slowed multi-task training). Otherwise: plain shuffled batches."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * 50
    grouped = []
    for start in range(0, len(order), window):
        grouped += sorted(order[start:start + window], key=lambda i: lengths[i])
    batches = [grouped[i:i + batch_size] for i in range(0, len(grouped), batch_size)]
    rng.shuffle(batches)
    return batches


def balanced_share(batch: list[int], lengths: list[int], rank: int, world: int) -> list[int]:
    """Rank `rank`'s part of a global batch of example indices, dealt longest first to the rank with
    the fewest tokens so far, so ranks finish their step together (a rank's step costs about its
    tokens, and every rank waits for the slowest at the gradient sum). Deterministic: every rank
    computes the same split. One process takes the batch as it is (its order is its sums' order)."""
    if world == 1:
        return list(batch)
    loads, parts = [0] * world, [[] for _ in range(world)]
    for i in sorted(batch, key=lambda i: (-lengths[i], i)):
        lightest = min(range(world), key=lambda r: (loads[r], len(parts[r]), r))
        parts[lightest].append(i)
        loads[lightest] += lengths[i]
    return parts[rank]


def collate(processor: Processor, examples: list[tuple[list[int], list[int], dict]]) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels, and the concatenated media tensors."""
    width = max(len(ids) for ids, _, _ in examples)
    pad = processor.pad_token_id
    batch = {
        "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _, _ in examples]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _, _ in examples]),
        "labels": torch.tensor([labels + [IGNORE] * (width - len(labels)) for _, labels, _ in examples]),
    }
    for kind, pixels_key, grid_key in (("images", "pixel_values", "image_grid_thw"),
                                       ("videos", "pixel_values_videos", "video_grid_thw")):
        items = [item for _, _, media in examples for item in media[kind]]
        if items:
            batch[pixels_key] = torch.cat([patches for patches, _ in items])
            batch[grid_key] = torch.tensor([grid for _, grid in items])
    return batch
