"""Atomic writes: a reader (or a rerun after a crash) sees the old file or folder or the new one, never half of one."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write through a temporary file and a rename, so a reader never sees half a file (parent folders are made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return path


def atomic_save_safetensors(tensors: dict, path: Path) -> None:
    """safetensors.torch.save_file through a temporary file and a rename."""
    from safetensors.torch import save_file

    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, temporary)
    os.replace(temporary, path)


@contextmanager
def atomic_directory(output: Path) -> Iterator[Path]:
    """Yield a temp dir next to `output`; on success it replaces `output` (renames), on failure it is removed
    and `output` is left as it was."""
    output = Path(output).absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
            os.rename(output, old / "d")
            try:
                os.rename(tmp, output)
            except BaseException:
                os.rename(old / "d", output)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_replace_dir(temporary: Path, target: Path) -> None:
    """Swap a finished folder into place: the target is either the old complete copy or the new one."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(temporary, target)
    shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
