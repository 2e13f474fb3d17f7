"""OpenAI-style API errors: one exception type carrying the HTTP status and the error body.

Owns: `ApiError` and mapping qwen2vl's typed input errors onto statuses and codes.
Does not own: deciding what is invalid (protocol.py, the processor, the engine).
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInputError, LimitExceededError, MediaDecodeError, SourceNotAllowedError


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def from_input_error(error: InvalidInputError, param: str = "messages") -> ApiError:
    """A processor or engine input error as a 400 with a code naming its kind."""
    if isinstance(error, LimitExceededError):
        code = "limit_exceeded"
    elif isinstance(error, SourceNotAllowedError):
        code = "media_source_not_allowed"
    elif isinstance(error, MediaDecodeError):
        code = "invalid_media"
    else:
        code = "invalid_value"
    return ApiError(400, str(error), param=param, code=code)
