"""Uploads to the Hugging Face Hub, in one place and one way (one commit per folder, failed attempts retried with a
growing pause): saved models during training (in the background, from a private copy, never touching the local
folder), and finished folders (a release, a prepared dataset) with `upload_folder`.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusionrec.errors import first_line


@dataclass
class _Upload:
    name: str
    folder: Path
    staging: Path | None  # the private copy uploaded (removed afterwards); None: the folder itself
    path_in_repo: str
    message: str
    attempts: int = 0
    future: Future | None = None
    retry_at: float | None = None
    errors: list[str] = field(default_factory=list)
    commit_url: str | None = None


RETRY_BACKOFF = 2.0  # seconds before the first retry of a failed upload; doubles with each further attempt


class HubUploadError(RuntimeError):
    """An upload that failed on every attempt; the message is one line with the last error."""


class HubUploader:
    """Uploads folders with `api.upload_folder(..., run_as_future=True)`, one commit each. With a `staging_root`,
    each upload reads a private copy (during training the local folder may be replaced by a later save meanwhile;
    the uploader never modifies it). A failed attempt is reported and retried after `backoff`, `2*backoff`, ...
    seconds, up to `attempts` tries."""

    def __init__(self, api, repo_id: str, *, staging_root: Path | None = None, private: bool | None = False,
                 attempts: int = 3, backoff: float = 2.0, repo_type: str = "model", report=print) -> None:
        self.api, self.repo_id, self.private, self.repo_type = api, repo_id, private, repo_type
        self.staging_root = None if staging_root is None else Path(staging_root)
        self.max_attempts, self.backoff, self.report = max(1, attempts), backoff, report
        self.pending: list[_Upload] = []
        self.done: list[_Upload] = []
        self.failed: list[_Upload] = []
        self._repo_ready = False
        self._counter = 0

    def _ensure_repo(self) -> None:
        if not self._repo_ready:
            space = {"space_sdk": "gradio"} if self.repo_type == "space" else {}
            self.api.create_repo(self.repo_id, repo_type=self.repo_type, private=self.private, exist_ok=True, **space)
            self._repo_ready = True

    def submit(self, folder: Path, *, path_in_repo: str, message: str) -> None:
        """Start uploading `folder` as one commit: from a staging copy when the uploader has a staging root (the
        folder may change meanwhile), else from the folder itself (it must stay as it is until `finish`)."""
        self._counter += 1
        staging = None
        if self.staging_root is not None:
            staging = self.staging_root / f"{self._counter:04d}-{Path(folder).name}"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(folder, staging)
        upload = _Upload(Path(folder).name, Path(folder), staging, path_in_repo, message)
        self.pending.append(upload)
        self._start(upload)

    def _start(self, upload: _Upload) -> None:
        upload.attempts += 1
        upload.retry_at = None
        try:
            self._ensure_repo()
            upload.future = self.api.upload_folder(
                repo_id=self.repo_id,
                repo_type=self.repo_type,
                folder_path=str(upload.staging or upload.folder),
                path_in_repo=upload.path_in_repo or None,
                commit_message=upload.message,
                run_as_future=True,
            )
        except Exception as error:  # the repo creation or the submission itself failed
            upload.future = Future()
            upload.future.set_exception(error)

    def poll(self, *, block: bool = False) -> None:
        """Collect finished uploads, report failures, restart due retries (waits for everything if `block`)."""
        while self.pending:
            now = time.monotonic()
            for upload in list(self.pending):
                if upload.future is not None and upload.future.done():
                    future, upload.future = upload.future, None
                    error = future.exception()
                    if error is None:
                        self.pending.remove(upload)
                        self.done.append(upload)
                        upload.commit_url = getattr(future.result(), "commit_url", None)
                        self._drop_staging(upload)
                        self.report(f"hub: uploaded {upload.name} to {self.repo_id}/{upload.path_in_repo} "
                                    f"(attempt {upload.attempts})")
                        continue
                    upload.errors.append(first_line(error))
                    if upload.attempts >= self.max_attempts:
                        self.pending.remove(upload)
                        self.failed.append(upload)
                        self._drop_staging(upload)
                        self.report(f"hub: upload of {upload.name} FAILED after {upload.attempts} attempts "
                                    f"({upload.errors[-1]}); the local copy {upload.folder} is kept")
                        continue
                    delay = self.backoff * 2 ** (upload.attempts - 1)
                    upload.retry_at = now + delay
                    self.report(f"hub: upload of {upload.name} failed (attempt {upload.attempts}/{self.max_attempts}: "
                                f"{upload.errors[-1]}); retrying in {delay:g}s")
                if upload.future is None and upload.retry_at is not None and time.monotonic() >= upload.retry_at:
                    self._start(upload)
            if not block or not self.pending:
                return
            time.sleep(0.05)

    def finish(self) -> bool:
        """Wait for every upload (with its retries); True when all succeeded."""
        self.poll(block=True)
        return not self.failed

    @staticmethod
    def _drop_staging(upload: _Upload) -> None:
        if upload.staging is not None:
            shutil.rmtree(upload.staging, ignore_errors=True)


def upload_folder(
    folder: Path,
    repo_id: str,
    *,
    message: str,
    api: Any = None,
    repo_type: str = "model",
    private: bool | None = None,
    attempts: int = 3,
    backoff: float | None = None,
    report=print,
) -> str | None:
    """A finished folder as ONE commit to `repo_id` (created if missing), retried as the training uploads are
    (first pause `backoff`, default RETRY_BACKOFF seconds); returns the commit URL, or raises HubUploadError. `api`
    defaults to huggingface_hub.HfApi()."""
    backoff = RETRY_BACKOFF if backoff is None else backoff
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    uploader = HubUploader(
        api, repo_id, private=private, attempts=attempts, backoff=backoff, repo_type=repo_type, report=report
    )
    uploader.submit(Path(folder), path_in_repo="", message=message)
    if not uploader.finish():
        (failed,) = uploader.failed
        raise HubUploadError(
            f"upload of {folder} to the {repo_type} repo {repo_id} failed after {failed.attempts} attempts "
            f"({failed.errors[-1]}); the local folder is complete, run the command again to retry"
        )
    return uploader.done[0].commit_url
