"""Simulation worker processes that talk in JSON lines: jobs on stdin, answers on stdout.

The recorder and the evaluator run one worker per core. Nothing is pickled between processes: jobs
and answers are JSON, bulk data goes through files (safetensors, MP4).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from queue import Queue
from typing import Any

MARK = "@@smolvla "  # prefix of answer lines: libraries may print to stdout too


def answer(message: dict[str, Any]) -> None:
    """Called in a worker: sends one answer to the main process."""
    print(MARK + json.dumps(message), flush=True)


class Worker:
    """A `python -m <module> <args>` subprocess with one thread per core of rendering and math.

    Its answers are put on `answers` as (worker, message); (worker, None) when it exits."""

    def __init__(self, module: str, args: list[str], answers: Queue) -> None:
        env = {
            **os.environ,
            "LP_NUM_THREADS": "1",  # software GL renders as fast with one thread per process
            "OMP_NUM_THREADS": "1",
            "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
        }
        cmd = [sys.executable, "-m", module, *args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.busy = False
        threading.Thread(target=self._read, args=(answers,), daemon=True).start()

    def _read(self, answers: Queue) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARK):
                answers.put((self, json.loads(line[len(MARK) :])))
        answers.put((self, None))

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it exited; its reader thread reports it

    def close(self, now: bool = False) -> None:
        """Ends the worker after its current job, or at once (`now`)."""
        if now:
            self.proc.kill()
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
