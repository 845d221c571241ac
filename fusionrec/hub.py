"""Uploads to the Hugging Face Hub, in one place: saved models during training (background, retried, never
touching the local copy) and a prepared dataset folder as a dataset repo.
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
    staging: Path
    path_in_repo: str
    message: str
    attempts: int = 0
    future: Future | None = None
    retry_at: float | None = None
    errors: list[str] = field(default_factory=list)


class HubUploader:
    """Uploads saved models with `api.upload_folder(..., run_as_future=True)`. Each upload reads a private staging
    copy (the local folder may be replaced by a later save meanwhile, and is never modified by the uploader). A
    failed attempt is reported and retried after `backoff`, `2*backoff`, ... seconds, up to `attempts` tries."""

    def __init__(self, api, repo_id: str, *, staging_root: Path, private: bool = False, attempts: int = 3,
                 backoff: float = 2.0, report=print) -> None:
        self.api, self.repo_id, self.private = api, repo_id, private
        self.staging_root = Path(staging_root)
        self.max_attempts, self.backoff, self.report = max(1, attempts), backoff, report
        self.pending: list[_Upload] = []
        self.done: list[_Upload] = []
        self.failed: list[_Upload] = []
        self._repo_ready = False
        self._counter = 0

    def _ensure_repo(self) -> None:
        if not self._repo_ready:
            self.api.create_repo(self.repo_id, private=self.private, exist_ok=True)
            self._repo_ready = True

    def submit(self, folder: Path, *, path_in_repo: str, message: str) -> None:
        self._counter += 1
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
                folder_path=str(upload.staging),
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
                    error = upload.future.exception()
                    upload.future = None
                    if error is None:
                        self.pending.remove(upload)
                        self.done.append(upload)
                        shutil.rmtree(upload.staging, ignore_errors=True)
                        self.report(f"hub: uploaded {upload.name} to {self.repo_id}/{upload.path_in_repo} "
                                    f"(attempt {upload.attempts})")
                        continue
                    upload.errors.append(first_line(error))
                    if upload.attempts >= self.max_attempts:
                        self.pending.remove(upload)
                        self.failed.append(upload)
                        shutil.rmtree(upload.staging, ignore_errors=True)
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


def push_to_hub(folder: Path, repo_id: str, api: Any = None, private: bool | None = None) -> Any:
    """create_repo(exist_ok=True) + upload_folder as a dataset repo. `api` defaults to huggingface_hub.HfApi()."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(repo_id=repo_id, repo_type="dataset", exist_ok=True, private=private)
    return api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=str(folder),
        commit_message="Upload fusionrec prepared dataset",
    )
