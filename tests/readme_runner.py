"""Run README code blocks, each alone in its own forked process, for tests/test_readme.py.

Started as a fresh interpreter (``python tests/readme_runner.py WORKERS < blocks.json``,
in the folder the blocks read from), it imports torch, timm and attnblocks once, then
forks one child per block, ``WORKERS`` at a time: each child runs its block with
``exec`` in a namespace of its own (``{"__name__": "__main__"}``: no name from another
block or from this script), so a block that forgets an import or uses an earlier
block's variable fails as it would for a reader. Forking spares each block the ~8 s of
CPU that importing torch and timm (torchvision, torch._dynamo) costs; this interpreter
computes nothing before forking, so no thread pool is copied into the children.

Writes ``{index: exit status}`` as JSON on stdout; each child's output and traceback go
to ``block-<index>.log`` in the working folder.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

# the heavy imports, once, before any fork (and no computation: no thread pool yet)
import timm  # noqa: F401
import torch  # noqa: F401

import attnblocks
import attnblocks.inference
import attnblocks.models  # noqa: F401


def run_block(index: int, code: str) -> int:
    """In a forked child: run one block, output to ``block-<index>.log``; the exit status."""
    log = os.open(f"block-{index}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__main__"})
    except BaseException:  # SystemExit included: the block failed
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def main() -> None:
    workers = max(1, int(sys.argv[1]))
    blocks = json.load(sys.stdin)  # [[index, code], ...]
    statuses: dict[int, int] = {}
    running: dict[int, int] = {}  # pid -> block index

    def reap_one() -> None:
        pid, status = os.wait()
        statuses[running.pop(pid)] = os.waitstatus_to_exitcode(status)

    for index, code in blocks:
        while len(running) >= workers:
            reap_one()
        pid = os.fork()
        if pid == 0:
            os._exit(run_block(index, code))  # no cleanup of the parent's state in the child
        running[pid] = index
    while running:
        reap_one()
    print(json.dumps(statuses))


if __name__ == "__main__":
    main()
