"""Model names -> local checkpoint directories.

Owns: accepting a local directory as is, and fetching a Hub id (`Qwen/Qwen2-VL-2B-Instruct`)
with huggingface_hub (from its cache first, then online), with a one-line error when neither
works. Does not own: reading anything inside the directory.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ModelNotFoundError

CHECKPOINT_PATTERNS = [
    "config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
    "chat_template.json", "preprocessor_config.json", "generation_config.json", "adapter_config.json",
]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_model_dir(name: str | Path, revision: str | None = None) -> Path:
    """A directory holding config.json and the weights for `name` (a path or a Hub id)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path}: directory has no config.json, so it is not a model checkpoint")
        return path
    text = str(name)
    if path.exists() or not _HUB_ID.fullmatch(text):
        raise ModelNotFoundError(f"{text}: not a model directory and not a Hub id like 'Qwen/Qwen2-VL-2B-Instruct'")
    return _download(text, revision)


def _download(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a runtime dependency
        raise ModelNotFoundError(f"{repo_id}: huggingface_hub is not installed; pass a local directory instead") from None
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=CHECKPOINT_PATTERNS, local_files_only=True))
    except Exception:  # not cached: fall through to an online fetch
        pass
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=CHECKPOINT_PATTERNS))
    except Exception as exc:  # huggingface_hub raises many types (offline, HTTP, auth, OS)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(
            f"{repo_id}: cannot fetch it from the Hugging Face Hub and it is not cached ({reason[:200]}); "
            f"offline, download it elsewhere and pass its local directory instead"
        ) from None
