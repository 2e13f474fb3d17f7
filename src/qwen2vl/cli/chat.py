"""`qwen2vl chat`: an interactive multi-turn conversation on stdin/stdout.

Owns: the read-answer loop, the conversation history, pending attachments and the slash commands
(/image, /video, /tokens, /reset, /help, /quit). Answers stream to stdout; speed summaries and
errors go to stderr as one line each, and the conversation goes on.
Does not own: option parsing shared with other commands (common.py).
"""

from __future__ import annotations

import argparse
import sys

from ..errors import Qwen2VLError
from .common import (add_media_arguments, add_model_arguments, add_sampling_arguments, answer, load,
                     media_defaults_from, media_part, sampling_from)

HELP = """commands:
  /image PATH[::key=value,...]   attach an image to your next message
  /video PATH[::key=value,...]   attach a video to your next message
  /tokens                        show the conversation's token count (and visual tokens)
  /reset                         start a new conversation
  /help                          show this help
  /quit                          leave (so does end of input)"""

EXAMPLES = """examples:
  qwen2vl chat Qwen/Qwen2-VL-2B-Instruct
  qwen2vl chat ./model --max-pixels 401408 --temperature 0.7 --top-p 0.9 --top-k -1

""" + HELP


def register(subparsers) -> None:
    parser = subparsers.add_parser("chat", help="chat interactively, with images and videos",
                                   description="Chat interactively; attach images and videos with /image and /video.",
                                   epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--system", help="a system prompt (default: the template's)")
    add_sampling_arguments(parser)
    add_media_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    llm = load(args)
    params = sampling_from(args)
    media_defaults = media_defaults_from(args)
    session = ChatSession(args.system)
    interactive = sys.stdin.isatty()
    print("type a message, or /help", file=sys.stderr)
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            return 0
        line = line.strip()
        if not line:
            continue
        try:
            if line.startswith("/"):
                if not session.command(line, llm, media_defaults):
                    return 0
                continue
            conversation = session.ask(line)
            text, summary = answer(llm, conversation, params, media_defaults, _write)
            print(flush=True)
            session.answered(text)
            print(summary, file=sys.stderr)
        except Qwen2VLError as error:
            session.forget_question()
            print(f"error: {error}", file=sys.stderr)


def _write(delta: str) -> None:
    sys.stdout.write(delta)
    sys.stdout.flush()


class ChatSession:
    """The history and pending attachments of one chat."""

    def __init__(self, system: str | None):
        self.system = system
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.pending: list[dict] = []

    def command(self, line: str, llm, media_defaults) -> bool:
        """Handle a slash command; False means quit."""
        name, _, argument = line.partition(" ")
        argument = argument.strip()
        if name in ("/quit", "/exit"):
            return False
        if name in ("/image", "/video") and argument:
            self.pending.append(media_part(name[1:], argument))
            print(f"attached {name[1:]} {argument}", file=sys.stderr)
        elif name == "/reset":
            self.reset()
            print("conversation reset", file=sys.stderr)
        elif name == "/tokens":
            conversation = self.messages + ([{"role": "user", "content": list(self.pending)}] if self.pending else [])
            if not conversation:
                print("0 tokens", file=sys.stderr)
            else:
                ids = llm.engine.prepare(conversation, media_defaults)["input_ids"][0].tolist()
                print(f"{len(ids)} tokens ({llm.engine.visual_tokens(ids)} visual) of {llm.engine.max_model_len}",
                      file=sys.stderr)
        else:
            print(HELP, file=sys.stderr)
        return True

    def ask(self, text: str) -> list[dict]:
        content = self.pending + [{"type": "text", "text": text}]
        self.pending = []
        self.messages.append({"role": "user", "content": content})
        return list(self.messages)

    def answered(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})

    def forget_question(self) -> None:
        if self.messages and self.messages[-1]["role"] == "user":
            self.messages.pop()
