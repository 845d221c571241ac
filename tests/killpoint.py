"""Run a script and freeze it (SIGSTOP) at one named point of its work, so that a kill test can look at the disk at
exactly that instant and then kill the process with SIGKILL. Test-only: it wraps library functions from the outside
before the script starts; the code under test knows nothing of it. No timing is involved: the process stops itself
at the point, and the test waits for it to be stopped.

    python tests/killpoint.py POINT N SCRIPT [ARGS...]      (or `frozen_at(...)` from a test)

POINT is one of
  optimizer_step      before the Nth AdamW step (gradients computed, parameters not yet updated)
  save_file:REGEX     after the Nth safetensors file written to a path matching REGEX
  write_table         after the Nth parquet file written
  rename:REGEX        before the Nth rename whose source file or folder name matches REGEX
"""

from __future__ import annotations

import os
import re
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path


def freeze_on(hit: int):
    """A counter that stops this process (SIGSTOP) at its `hit`-th call; the test kills it there."""
    calls = [0]

    def tick() -> None:
        calls[0] += 1
        if calls[0] == hit:
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGSTOP)

    return tick


def install(point: str, hit: int) -> None:
    tick = freeze_on(hit)
    name, _, pattern = point.partition(":")
    if name == "optimizer_step":
        import torch

        real_step = torch.optim.AdamW.step

        def step(self, *args, **kwargs):
            tick()
            return real_step(self, *args, **kwargs)

        torch.optim.AdamW.step = step
    elif name == "save_file":
        import safetensors.torch

        real_save = safetensors.torch.save_file

        def save_file(tensors, filename, *args, **kwargs):
            result = real_save(tensors, filename, *args, **kwargs)
            if re.search(pattern, os.fspath(filename)):
                tick()
            return result

        safetensors.torch.save_file = save_file
    elif name == "write_table":
        import pyarrow.parquet

        real_write = pyarrow.parquet.write_table

        def write_table(*args, **kwargs):
            result = real_write(*args, **kwargs)
            tick()
            return result

        pyarrow.parquet.write_table = write_table
    elif name == "rename":
        for function in ("rename", "replace"):
            real = getattr(os, function)

            def renamed(source, destination, *args, _real=real, **kwargs):
                if re.search(pattern, Path(os.fsdecode(source)).name):
                    tick()
                return _real(source, destination, *args, **kwargs)

            setattr(os, function, renamed)
    else:
        raise SystemExit(f"unknown point {point!r}")


def frozen_at(point: str, hit: int, script: Path, argv: list[str], *, env: dict, log: Path, timeout: float = 600,
              python: str = sys.executable) -> int:
    """Start `script` under this launcher (run by `python`) and return its pid once it is stopped at the `hit`-th
    `point`; fails when it exits first (the point was never reached) or is still running after `timeout` seconds."""
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [python, __file__, point, str(hit), str(script), *map(str, argv)], stdout=output, stderr=output, env=env
        )
    deadline = time.monotonic() + timeout
    while True:
        pid, status = os.waitpid(process.pid, os.WUNTRACED | os.WNOHANG)
        if pid and os.WIFSTOPPED(status):
            process.returncode = -signal.SIGSTOP  # reaped here, not by Popen
            return process.pid
        if pid:
            process.returncode = status
            raise AssertionError(f"{script} ended (status {status}) before {point} #{hit}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{script} did not reach {point} #{hit} in {timeout:.0f}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


def kill(pid: int) -> None:
    """SIGKILL, as the OOM killer or a pre-empted machine does: no handler, no cleanup, no flush."""
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


if __name__ == "__main__":
    point, hit, script, *args = sys.argv[1:]
    install(point, int(hit))
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)
    runpy.run_path(script, run_name="__main__")
