"""The exception hierarchy every user-facing failure of qwen2vl is raised as.

Owns: the typed errors and their one-line messages. Does not own: deciding when
to raise them (each module does that at its own boundary).
"""


class Qwen2VLError(Exception):
    """Base class of every error qwen2vl raises on purpose."""


class ConfigError(Qwen2VLError):
    """A config.json is unreadable, or a required field is missing or invalid."""


class CheckpointError(Qwen2VLError):
    """Checkpoint weights are missing, unexpected, mis-shaped or unreadable."""


class ModelNotFoundError(Qwen2VLError):
    """A model name is neither a local directory nor a reachable Hub repository."""


class InvalidInputError(Qwen2VLError):
    """User input (tokens, media, grids) is inconsistent or malformed."""


class MediaDecodeError(InvalidInputError):
    """An image or video could not be read: truncated, not media, bad base64, no decodable frames."""


class LimitExceededError(InvalidInputError):
    """Input exceeds a configured safety limit (bytes, pixels, frames, duration, item count)."""


class SourceNotAllowedError(InvalidInputError):
    """A media source kind is disabled (remote URLs, local files) or outside the allowed directory."""


class BenchmarkError(Qwen2VLError):
    """A benchmark measurement, run in a process of its own, failed or was killed."""


class TrainingProcessError(Qwen2VLError):
    """One of several local training processes failed or died; the message names which and why."""
