"""Atomic writes: a reader (or a rerun after a crash or a kill) sees the old file or folder or the new one, never half
of one, and a failed write leaves nothing behind. Every output goes through `atomic_output`; an OSError while writing
(disk full, read-only folder, a file in the way) becomes one `WriteError` line naming the output and the fix.

Temporaries are siblings of their target named `.<name>.tmp-<pid>-<random>`; a folder being replaced is first moved
aside to `.<name>.old-<pid>-<random>` and one being deleted to `.<name>.del-<pid>-<random>`. A process killed
mid-write leaves such a sibling; the next write in that folder removes it, or, when a kill fell between moving the
old folder aside and renaming the new one in, puts the old folder back.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fusionrec.errors import WriteError

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|del)-(?P<pid>\d+)-[0-9a-f]+$")
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}
_FIXES = {
    errno.ENOSPC: "free some disk space or write elsewhere",
    errno.EFBIG: "free some disk space or write elsewhere",
    errno.EDQUOT: "free some disk space or write elsewhere",
    errno.EACCES: "write to a folder you may write to",
    errno.EPERM: "write to a folder you may write to",
    errno.EROFS: "write to a folder you may write to",
    errno.EEXIST: "a file is in the way: remove it or choose another path",
    errno.ENOTDIR: "a file is in the way: remove it or choose another path",
    errno.EISDIR: "a folder is in the way: remove it or choose another path",
}


# Writers that are not Python file objects report a failed write in their own words: safetensors "... (os error 27)",
# pyarrow "[errno 27] ...", torch's zip writer "unexpected pos 576 vs 534" (a short write, errno lost).
_FOREIGN_ERRNO = re.compile(r"os error (\d+)|\[errno (\d+)\]", re.IGNORECASE)
_SHORT_WRITE = re.compile(r"unexpected pos \d+ vs \d+|PytorchStreamWriter failed writing")


def write_failure(error: BaseException) -> OSError | None:
    """The OSError behind a failed write, also when a native writer raised its own exception type; None when the
    error is not a failed write."""
    if isinstance(error, OSError):
        return error
    text = str(error)
    if match := _FOREIGN_ERRNO.search(text):
        number = int(match.group(1) or match.group(2))
        return OSError(number, os.strerror(number))
    if _SHORT_WRITE.search(text):
        return OSError(errno.ENOSPC, "the file could not be written in full")
    return None


def write_error(target: str | os.PathLike, error: OSError) -> WriteError:
    """One line naming the output, the system's reason and what to do about it."""
    reason = error.strerror or str(error) or type(error).__name__
    fix = _FIXES.get(error.errno, "check the path")
    return WriteError(f"cannot write {target}: {reason}; {fix}")


def _sibling(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_path(path: Path) -> None:
    """Remove a file or a folder, whichever `path` is."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_leftovers(folder: Path) -> None:
    """Remove what killed writers left in `folder`; an old folder whose replacement never arrived goes back."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if not match or int(match["pid"]) == os.getpid() or _alive(int(match["pid"])):
            continue
        target = entry.with_name(match["name"])
        if match["kind"] == "old" and not target.exists():
            os.rename(entry, target)
        else:
            remove_path(entry)


def make_folder(path: str | os.PathLike) -> Path:
    """mkdir -p, with a failure (a file in the way, a read-only parent) as one WriteError line."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(path, error) from None
    return path


def check_writable(folder: str | os.PathLike) -> Path:
    """Make `folder` and create and remove a file in it: an output that cannot be written fails before the work."""
    folder = make_folder(folder)
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise write_error(folder, error) from None
    return folder


def remove_tree(path: Path) -> None:
    """Delete a folder so that a kill midway leaves no half-deleted folder under its own name."""
    doomed = _sibling(Path(path), "del")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _publish(temporary: Path, target: Path) -> None:
    """Rename a finished file or folder onto `target`; a folder replaces the old one by moving it aside first."""
    if not temporary.is_dir() or not (target.exists() or target.is_symlink()):
        os.replace(temporary, target)
        return
    if not target.is_dir():
        raise FileExistsError(errno.EEXIST, "a file is in the way", str(target))
    old = _sibling(target, "old")
    os.rename(target, old)
    try:
        os.rename(temporary, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_output(
    target: str | os.PathLike, *, folder: bool = False, temporary: Path | None = None, keep_on_interrupt: bool = False
) -> Iterator[Path]:
    """Yield a temporary sibling of `target` to write a file at (or, with `folder`, an empty folder to fill); when
    the block ends normally it replaces `target`, when it raises, the temporary is removed and `target` is as it
    was. `temporary` names the sibling instead (one several processes share, or one a rerun resumes from: with
    `keep_on_interrupt` it survives Ctrl-C). OSError (disk full, read-only, a file in the way) becomes WriteError."""
    target = Path(target).absolute()
    make_folder(target.parent)
    clean_leftovers(target.parent)
    work = temporary or _sibling(target, "tmp")
    try:
        if folder:
            work.mkdir(exist_ok=temporary is not None)
        yield work
        if folder:
            os.chmod(work, 0o755)
        _publish(work, target)
    except KeyboardInterrupt:
        if not keep_on_interrupt:
            remove_path(work)
        raise
    except BaseException as error:
        remove_path(work)
        if failure := write_failure(error):
            raise write_error(target, failure) from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_output(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write through a temporary file and a rename, so a reader never sees half a file (parent folders are made)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_safetensors(tensors: dict, path: Path) -> None:
    """safetensors.torch.save_file through a temporary file and a rename."""
    from safetensors.torch import save_file

    with atomic_output(path) as temporary:
        save_file(tensors, temporary)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
