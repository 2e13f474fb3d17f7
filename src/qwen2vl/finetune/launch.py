"""Data-parallel training on this machine's cores without torchrun: N processes of one rank each.

Owns: starting `world` spawned processes with the environment torchrun would give them (rank, world
size, a free loopback port), each with its share of the cores as torch threads; returning rank 0's
result; and when a process fails, stopping the others (they would wait in a collective) and raising
its error in the caller: the same typed error for an expected failure (bad data, bad config), a
TrainingProcessError naming the rank otherwise. Does not own: the process group itself
(distributed.py joins it from the environment) or what the processes run.

Why: on a CPU of a few cores the small matrices of a small model do not keep two threads of one
process busy, while two one-thread processes each keep their own core busy; their gradient sum
costs a few milliseconds a step.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

import torch

from ..errors import ConfigError, Qwen2VLError, TrainingProcessError


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_processes(world: int, fn: Callable[..., Any], args: tuple) -> Any:
    """fn(*args) in `world` new processes joined as one data-parallel group; rank 0's return value.

    fn and args must pickle (fn a module-level function): the processes are spawned, not forked, so
    the caller's script needs the usual `if __name__ == "__main__":` guard."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("processes > 1 inside a torchrun process group: use one or the other")
    context = multiprocessing.get_context("spawn")
    port, threads = _free_port(), max(1, cores() // world)
    running: dict[int, tuple[Any, Connection]] = {}
    for rank in range(world):
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_rank_main, args=(rank, world, port, threads, fn, args, send),
                                  name=f"qwen2vl-rank-{rank}")
        process.start()
        send.close()  # the child holds the only sending end: its exit ends the pipe
        running[rank] = (process, receive)
    try:
        return _collect(running)
    finally:
        for process, receive in running.values():
            if process.is_alive():
                process.terminate()
            process.join()
            receive.close()


def _collect(running: dict[int, tuple[Any, Connection]]) -> Any:
    """Wait for every rank's outcome; on the first failure raise it (run_processes stops the rest).
    A process's exit is watched as well as its pipe: processes it forked (the data check's workers)
    may keep the pipe open after it dies."""
    pending, result = dict(running), None
    while pending:
        wait([receive for _, receive in pending.values()] + [process.sentinel for process, _ in pending.values()])
        for rank, (process, receive) in list(pending.items()):
            if receive.poll():
                try:
                    kind, value = receive.recv()
                except EOFError:
                    kind, value = "died", None
            elif not process.is_alive():
                kind, value = "died", None
            else:
                continue
            del pending[rank]
            if kind == "died":  # exited without a word: killed, out of memory, a crash in native code
                process.join()
                raise TrainingProcessError(f"training process {rank} of {len(running)} died "
                                           f"(exit code {process.exitcode})")
            if kind == "error":
                raise value
            if kind == "crash":
                raise TrainingProcessError(f"training process {rank} of {len(running)} failed: {value}")
            if rank == 0:
                result = value
    return result


def _rank_main(rank: int, world: int, port: int, threads: int, fn: Callable[..., Any], args: tuple,
               send: Connection) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(threads)
    try:
        result = fn(*args)
        send.send(("ok", result if rank == 0 else None))  # every rank trains; rank 0 reports
    except Qwen2VLError as error:
        send.send(("error", error))
    except BaseException as error:  # reported to the caller as one line; the traceback goes to stderr
        traceback.print_exc(file=sys.stderr)
        send.send(("crash", f"{type(error).__name__}: {error}"))
    finally:
        send.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
