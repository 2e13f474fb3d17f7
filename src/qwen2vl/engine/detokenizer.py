"""Incremental detokenization with stop strings: plain Python around a `decode(ids) -> str` function.

Owns: turning a growing list of token ids into text deltas that never split a multi-byte
character (an incomplete UTF-8 sequence decodes to U+FFFD and is held back) and never show any
part of a stop string; finding stop strings across token boundaries and cutting the text before
them. Does not own: choosing tokens or stop token ids.
"""

from __future__ import annotations

from typing import Callable, Sequence

_INCOMPLETE = "\ufffd"
_CONTEXT_TOKENS = 6  # tokens decoded before the new ones, so merges at the boundary render right


class IncrementalText:
    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()):
        self._decode = decode
        self._stop = tuple(stop)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._ids: list[int] = []
        self._prefix = 0  # ids before this index are settled text
        self.text = ""  # settled text so far (stop string removed once found)
        self.emitted = 0  # characters of `text` already handed out
        self.stopped = False

    def push(self, token: int) -> str:
        """Add one token; returns the text that is now safe to show."""
        if self.stopped:
            return ""
        self._ids.append(token)
        before, after = self._decode_unsettled()
        if after.endswith(_INCOMPLETE) or not after.startswith(before):
            return self._release(final=False)
        self.text += after[len(before):]
        self._prefix = len(self._ids)
        self._find_stop()
        return self._release(final=self.stopped)

    def finish(self) -> str:
        """The rest of the text once generation has ended."""
        if not self.stopped and self._prefix < len(self._ids):
            before, after = self._decode_unsettled()
            self.text += after[len(before):]
            self._prefix = len(self._ids)
            self._find_stop()
        return self._release(final=True)

    def _decode_unsettled(self) -> tuple[str, str]:
        """A few settled ids decoded alone, and with the unsettled ids after them: the new text is
        what the second adds to the first (so merges at the boundary render as in a full decode)."""
        start = max(0, self._prefix - _CONTEXT_TOKENS)
        return self._decode(self._ids[start:self._prefix]), self._decode(self._ids[start:])

    def _find_stop(self) -> None:
        # Emitted text never ends inside a complete stop string (the last `hold` characters are
        # held back), so a stop string can only start at or after `emitted`.
        hits = [i for i in (self.text.find(s, self.emitted) for s in self._stop) if i != -1]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def _release(self, final: bool) -> str:
        end = len(self.text) if final else max(self.emitted, len(self.text) - self._hold)
        delta = self.text[self.emitted:end]
        self.emitted = end
        return delta
