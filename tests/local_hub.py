"""A Hugging Face Hub stand-in for the upload tests: the real `HfApi` with only its network edge replaced, and the
committed files written back out as a download would (a plain folder, or the Hub cache layout that
`from_pretrained("owner/name")` reads offline)."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import CommitInfo, HfApi


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """A folder's files as a commit holds them: path in the folder -> bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


class LocalHub(HfApi):
    """HfApi with only the network edge replaced: create_repo and create_commit (plus the README YAML check, which
    is a POST to the Hub). upload_folder's file collection and its run_as_future thread run for real. The first
    `fail_first` commits fail as an unreachable Hub would."""

    def __init__(self, *, fail_first: int = 0) -> None:
        super().__init__(token="hf_local")  # default endpoint; nothing below ever reaches it
        self.fail_first = fail_first
        self.attempts = 0
        self.repos: list[str] = []
        self.created: list[dict] = []
        self.commits: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        self.repos.append(repo_id)
        self.created.append({"repo_id": repo_id, **kwargs})
        return repo_id

    def _validate_yaml(self, content, **kwargs):
        assert content.startswith("---\n")

    def create_commit(self, repo_id, operations, *, commit_message, repo_type=None, **kwargs):
        self.attempts += 1
        if self.attempts <= self.fail_first:
            raise ConnectionError(f"hub unreachable (attempt {self.attempts})")
        files = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        self.commits.append(
            {"repo_id": repo_id, "repo_type": repo_type or "model", "message": commit_message, "files": files}
        )
        oid = f"{len(self.commits):040d}"
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}", commit_message=commit_message,
                          commit_description="", oid=oid)

    def repo_files(self, repo_id: str) -> dict[str, bytes]:
        """The repo's files after every commit so far (later commits win)."""
        files: dict[str, bytes] = {}
        for commit in self.commits:
            if commit["repo_id"] == repo_id:
                files.update(commit["files"])
        return files

    def download(self, repo_id: str, folder: Path) -> Path:
        """The repo's files written into `folder`, as `snapshot_download(repo_id, local_dir=folder)` would."""
        for name, data in self.repo_files(repo_id).items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        return folder

    def download_to_cache(self, repo_id: str, cache: Path) -> Path:
        """The repo's last commit laid out as the Hub cache (HF_HUB_CACHE) holds a download, so that
        `from_pretrained(repo_id)` and `pipeline(model=repo_id)` find it offline; returns the snapshot folder."""
        oid = f"{max(i for i, c in enumerate(self.commits, 1) if c['repo_id'] == repo_id):040d}"
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(oid)
        return self.download(repo_id, repo / "snapshots" / oid)
