"""Train a FusionModel on a prepared dataset with 🤗 Accelerate: one loop for CPU, one GPU and many.

    accelerate launch train_accelerate.py --dataset data/prepared/synthetic --output-dir outputs/demo \\
        --text-encoder sentence-transformers/all-MiniLM-L6-v2

Writes OUTPUT_DIR/checkpoints/step_N (accelerator.save_state, for --resume-from-checkpoint), OUTPUT_DIR/best (the
checkpoint with the best validation NDCG@10) and OUTPUT_DIR/final (the last weights), both `save_pretrained` folders
with safetensors weights, config, remote code and a model card; OUTPUT_DIR/logs (tensorboard) and
OUTPUT_DIR/train_summary.json. Exact resume: the data order is a pure function of (seed, epoch), the negatives of
(seed, epoch, batch), and the RNG/optimizer/scheduler states come back with the checkpoint.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

PROGRAM = "train_accelerate.py"
DEFAULT_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
SCHEDULERS = ("cosine", "linear", "constant_with_warmup")


class UsageError(Exception):
    """Bad command-line input; main() prints it as one line and exits with status 2."""


# ----- command line -----


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line (no usage dump): `train_accelerate.py: error: ...`."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=PROGRAM,
        description=(
            "Train FusionRec (two-tower movie recommender) on a prepared dataset folder with accelerate. Run it "
            "with `python train_accelerate.py` (one process) or `accelerate launch [--config_file "
            "configs/accelerate_cpu_2proc.yaml] train_accelerate.py` (one or many processes/GPUs)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, type=Path, help="prepared dataset folder (prepare_dataset.py --output)")
    data.add_argument("--output-dir", required=True, type=Path, help="where checkpoints, best/, final/ and logs go")
    data.add_argument(
        "--split",
        choices=("leave_one_out", "temporal", "cold_items"),
        default="leave_one_out",
        help="training data and validation events (PROTOCOL.md); cold_items also keeps cold movies out of the "
        "negative pool",
    )
    data.add_argument(
        "--text-cache-dir",
        type=Path,
        default=None,
        help="frozen-encoder text cache root (default: $FUSIONREC_CACHE/text or ~/.cache/fusionrec/text)",
    )
    data.add_argument("--max-eval-users", type=int, default=None, help="evaluate on at most this many validation events")

    model = parser.add_argument_group("model (ignored with --init-from / --resume-from-checkpoint: the config comes from there)")
    model.add_argument("--init-from", type=Path, default=None, help="start from this save_pretrained folder's weights")
    model.add_argument("--hidden-size", type=int, default=64, help="width of both towers and of the vectors")
    model.add_argument("--num-layers", type=int, default=2, help="user Transformer layers")
    model.add_argument("--num-heads", type=int, default=4, help="user Transformer attention heads")
    model.add_argument("--max-history-length", type=int, default=50, help="training window / history length")
    model.add_argument(
        "--text-encoder",
        default=DEFAULT_TEXT_ENCODER,
        help="frozen text encoder, Hub name or local path (its hidden size is read from its config)",
    )
    model.add_argument("--text-encoder-revision", default=None, help="text encoder revision (part of the cache key)")
    model.add_argument("--text-max-length", type=int, default=48, help="tokens kept per movie text")
    model.add_argument("--perceiver-depth", type=int, default=None, help="Perceiver Resampler layers (config: 2)")
    model.add_argument("--perceiver-head-dim", type=int, default=None, help="Perceiver attention head width (config: 32)")
    model.add_argument("--no-text", action="store_true", help="ablation: no text features (no encoder, no cache)")
    model.add_argument("--no-id-embedding", action="store_true", help="ablation: no movie id embedding")
    model.add_argument("--no-content-features", action="store_true", help="ablation: no numeric/categorical/bag features")
    model.add_argument("--rating-loss-weight", type=float, default=None, help="weight of the rating loss (config: 0.5)")
    model.add_argument("--temperature", type=float, default=None, help="retrieval softmax temperature (config: 0.1)")
    model.add_argument("--dropout", type=float, default=None, help="dropout in both towers (config: 0.1)")
    model.add_argument(
        "--movie-id-dropout", type=float, default=None, help="probability of hiding a movie's id in training (config: 0.2)"
    )
    model.add_argument(
        "--user-id-dropout", type=float, default=None, help="probability of hiding the user's id in training (config: 0.1)"
    )
    model.add_argument("--learn-temperature", action="store_true", help="learn the temperature, starting at --temperature")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--max-steps", type=int, default=300, help="optimizer steps to train (after accumulation)")
    optim.add_argument("--batch-size", type=int, default=32, help="training windows per process per forward pass")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=1, help="forward passes per optimizer step")
    optim.add_argument("--learning-rate", type=float, default=3e-3, help="peak AdamW learning rate")
    optim.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (not on biases/norms)")
    optim.add_argument("--warmup-steps", type=int, default=None, help="linear warmup steps (default: 5%% of --max-steps)")
    optim.add_argument("--lr-scheduler", choices=SCHEDULERS, default="cosine", help="decay after warmup")
    optim.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm (0: off)")
    optim.add_argument("--num-negatives", type=int, default=128, help="uniform negatives per batch (plus in-batch)")
    optim.add_argument(
        "--mixed-precision",
        choices=("no", "bf16", "fp16"),
        default=None,
        help="autocast precision (default: accelerate config, else no)",
    )
    optim.add_argument("--seed", type=int, default=0, help="seed for init, data order, negatives and dropout")
    optim.add_argument("--cpu", action="store_true", help="train on CPU even when a GPU is available")

    loop = parser.add_argument_group("evaluation, checkpoints, logging")
    loop.add_argument("--eval-steps", type=int, default=50, help="evaluate on validation every N steps (0: only at the end)")
    loop.add_argument("--patience", type=int, default=0, help="stop after N evaluations without a better NDCG@10 (0: off)")
    loop.add_argument("--checkpointing-steps", type=int, default=0, help="accelerator.save_state every N steps (0: off)")
    loop.add_argument("--checkpoints-total-limit", type=int, default=2, help="keep the last N step_* checkpoints")
    loop.add_argument(
        "--resume-from-checkpoint",
        default=None,
        metavar="latest|PATH",
        help="continue from OUTPUT_DIR/checkpoints' newest step_N ('latest') or a step_N folder",
    )
    loop.add_argument(
        "--stop-at-step",
        type=int,
        default=None,
        help="stop (after checkpointing) at this step though --max-steps is larger, as a pre-emption would; "
        "resume later with --resume-from-checkpoint",
    )
    loop.add_argument("--logging-steps", type=int, default=10, help="log losses, lr and throughput every N steps")
    loop.add_argument(
        "--report-to", choices=("tensorboard", "none"), default="tensorboard", help="accelerate tracker (OUTPUT_DIR/logs)"
    )
    loop.add_argument("--no-progress", action="store_true", help="no progress bars")

    hub = parser.add_argument_group("Hub")
    hub.add_argument("--push-to-hub", action="store_true", help="upload best/ (repo root) and final/ (final/) to the Hub")
    hub.add_argument("--hub-model-id", default=None, help="Hub repo id, e.g. user/fusionrec-demo")
    hub.add_argument("--hub-token", default=None, help="Hub token (default: the logged-in token)")
    hub.add_argument("--hub-private", action="store_true", help="create the Hub repo private")
    hub.add_argument("--hub-retries", type=int, default=3, help="upload attempts per saved model")
    hub.add_argument("--hub-retry-backoff", type=float, default=2.0, help="seconds before the first retry (doubles)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    positive = ("max_steps", "batch_size", "gradient_accumulation_steps", "max_history_length", "hidden_size")
    for name in positive:
        if getattr(args, name) <= 0:
            raise UsageError(f"argument --{name.replace('_', '-')}: must be > 0, got {getattr(args, name)}")
    for name in ("eval_steps", "patience", "checkpointing_steps", "num_negatives", "logging_steps"):
        if getattr(args, name) < 0:
            raise UsageError(f"argument --{name.replace('_', '-')}: must be >= 0, got {getattr(args, name)}")
    if args.checkpoints_total_limit < 1:
        raise UsageError("argument --checkpoints-total-limit: must be >= 1")
    if args.push_to_hub and not args.hub_model_id:
        raise UsageError("--push-to-hub needs --hub-model-id (e.g. user/fusionrec-demo)")
    if args.stop_at_step is not None and args.stop_at_step <= 0:
        raise UsageError("argument --stop-at-step: must be > 0")
    return args


# ----- data: keyed batches so data order and negatives are pure functions of (seed, epoch, batch) -----


class EpochBatchSampler:
    """Batches of window indices; epoch e's order is a permutation seeded by (seed, e) alone, so any step can be
    reproduced without replaying the run. Yields (epoch, batch_number, window_index) keys. The number of batches
    is a multiple of `num_processes` so every process gets the same count (no padding duplicates)."""

    def __init__(self, num_windows: int, *, batch_size: int, seed: int, num_processes: int = 1) -> None:
        self.num_windows, self.batch_size, self.seed = num_windows, batch_size, seed
        self.num_processes = num_processes
        self.drop_last = True
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_windows // self.batch_size // self.num_processes * self.num_processes

    def __iter__(self):
        epoch = self.epoch
        order = torch.randperm(self.num_windows, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        for number in range(len(self)):
            chunk = order[number * self.batch_size : (number + 1) * self.batch_size].tolist()
            yield [(epoch, number, index) for index in chunk]


class KeyedWindows(torch.utils.data.Dataset):
    def __init__(self, windows: list) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, key):
        epoch, number, index = key
        return (epoch, number), self.windows[index]


class KeyedCollator:
    """Unpacks (batch key, window) items and asks the TrainingCollator for negatives keyed by (epoch, batch)."""

    def __init__(self, collator) -> None:
        self.collator = collator

    def __call__(self, items):
        keys = {key for key, _ in items}
        if len(keys) != 1:
            raise RuntimeError(f"a batch mixes batch keys {sorted(keys)}")
        batch = self.collator([window for _, window in items], batch_key=keys.pop())
        batch["num_windows"] = torch.tensor(len(items))
        return batch


@dataclass
class TrainingData:
    catalog: object
    spec: dict
    windows: list
    validation: object
    negative_pool: np.ndarray
    frequency: np.ndarray
    num_train_targets: int


def load_training_data(args, config, accelerator) -> TrainingData:
    import fusionrec_data as fd

    # The main process builds the text cache first (once per movie); the others then read it from disk.
    with accelerator.main_process_first():
        catalog, spec = fd.load_catalog(
            args.dataset,
            config,
            cache_root=args.text_cache_dir,
            show_progress=accelerator.is_main_process and not args.no_progress,
        )
        _, sequences = fd.load_tables(args.dataset)
    rows = fd.read_sequences(sequences)
    cold = catalog.cold_item.numpy()
    train = [fd.train_sequence(row, args.split, cold) for row in rows]
    train = [sequence for sequence in train if len(sequence.movies)]
    windows = fd.training_windows(train, window=config.max_history_length)
    validation = fd.evaluation_examples(rows, args.split, "validation", cold)
    if args.max_eval_users is not None and len(validation) > args.max_eval_users:
        validation = subset_examples(validation, slice(0, args.max_eval_users))
    pool = np.flatnonzero(~cold) if args.split == "cold_items" else np.arange(len(catalog))
    frequency = fd.movie_frequency(train, len(catalog))
    return TrainingData(
        catalog=catalog,
        spec=spec,
        windows=windows,
        validation=validation,
        negative_pool=pool,
        frequency=frequency,
        num_train_targets=int(sum(len(w.movies) for w in windows)),
    )


def subset_examples(examples, part: slice):
    from fusionrec_data import EvaluationExamples

    return EvaluationExamples(
        histories=examples.histories[part],
        targets=examples.targets[part],
        target_ratings=examples.target_ratings[part],
        target_timestamps=examples.target_timestamps[part],
        candidate_mask=examples.candidate_mask,
    )


# ----- model config -----


def build_config(args, spec: dict):
    """The model config: from --resume-from-checkpoint's or --init-from's folder, else from the feature spec + CLI."""
    from configuration_fusionrec import FusionRecConfig

    source = args._resume_dir or args.init_from
    if source is not None:
        return FusionRecConfig.from_pretrained(source)
    overrides = {
        "hidden_size": args.hidden_size,
        "fusion_hidden_size": 2 * args.hidden_size,
        "user_num_layers": args.num_layers,
        "user_num_heads": args.num_heads,
        "max_history_length": args.max_history_length,
        "use_text": not args.no_text,
        "use_id_embedding": not args.no_id_embedding,
        "use_content_features": not args.no_content_features,
    }
    if args.rating_loss_weight is not None:
        overrides["rating_loss_weight"] = args.rating_loss_weight
    if args.temperature is not None:
        overrides["retrieval_temperature"] = args.temperature
    for name in ("dropout", "movie_id_dropout", "user_id_dropout", "perceiver_depth", "perceiver_head_dim"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.learn_temperature:
        overrides["learn_temperature"] = True
    if not args.no_text:
        from modeling_fusionrec import text_encoder_hidden_size

        try:
            hidden = text_encoder_hidden_size(args.text_encoder, revision=args.text_encoder_revision)
        except (OSError, ValueError) as error:
            raise UsageError(f"--text-encoder {args.text_encoder!r}: cannot load its config ({first_line(error)})") from None
        overrides.update(
            text_encoder_name_or_path=args.text_encoder,
            text_encoder_revision=args.text_encoder_revision,
            text_hidden_size=hidden,
            text_max_length=args.text_max_length,
        )
    try:
        return FusionRecConfig.from_feature_spec(spec, **overrides)
    except ValueError as error:
        raise UsageError(first_line(error)) from None


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ----- checkpoints -----


def checkpoint_root(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))]
    return sorted(found)


def resolve_resume(args) -> Path | None:
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "latest":
        found = list_checkpoints(args.output_dir)
        if not found:
            raise UsageError(f"--resume-from-checkpoint latest: no step_N checkpoint in {checkpoint_root(args.output_dir)}")
        return found[-1][1]
    path = Path(args.resume_from_checkpoint)
    if not (path / "trainer_state.json").is_file():
        raise UsageError(f"--resume-from-checkpoint {path}: not a training checkpoint (no trainer_state.json)")
    return path


class TrainerState:
    """Loop position and early-stopping state, saved with every checkpoint (register_for_checkpointing)."""

    def __init__(self) -> None:
        self.global_step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.evaluations_without_improvement = 0
        self.history: list[dict] = []

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def save_checkpoint(accelerator, args, state: TrainerState, config) -> Path:
    """accelerator.save_state into a temporary folder, renamed to step_N once complete; old ones pruned."""
    root = checkpoint_root(args.output_dir)
    final = root / f"step_{state.global_step}"
    temporary = root / f".tmp-step_{state.global_step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        config.save_pretrained(temporary)
        (temporary / "trainer_state.json").write_text(json.dumps(state.state_dict(), indent=1), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
        for _, old in list_checkpoints(args.output_dir)[: -args.checkpoints_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def atomic_replace_dir(temporary: Path, target: Path) -> None:
    """Swap a finished folder into place: the target is either the old complete copy or the new one."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(temporary, target)
    shutil.rmtree(old, ignore_errors=True)


def model_card(args, config, spec: dict, *, kind: str, step: int, metrics: dict, state: TrainerState) -> str:
    metric_rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in sorted(metrics.items()) if isinstance(value, float))
    settings = {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in vars(args).items()
        if not key.startswith("_") and key not in ("hub_token",)
    }
    counts = spec.get("counts", {})
    return f"""---
library_name: transformers
pipeline_tag: feature-extraction
tags:
- fusionrec
- recommender
- movies
---

# FusionRec ({kind} checkpoint, step {step})

A two-tower movie recommender (content + frozen-text-encoder movie tower, causal-Transformer user tower) trained by
`train_accelerate.py`. Load it with:

```python
from transformers import AutoModel
model = AutoModel.from_pretrained("<this folder or repo>", trust_remote_code=True)
```

## Dataset
- folder: `{args.dataset}` (source: {spec.get('source', 'unknown')}); {spec.get('num_movies')} movies,
  {int(spec.get('num_users', 1)) - 1} users, {counts.get('ratings_kept', 'n/a')} ratings
- split: `{args.split}`; validation metrics below are full-ranking over the catalog (history excluded)
- text encoder: `{config.text_encoder_name_or_path if config.use_text else 'none (--no-text)'}`
  (revision {config.text_encoder_revision}, {config.text_max_length} tokens; not stored in this checkpoint)

## Validation metrics ({kind}, step {step}; best step {state.best_step})
| metric | value |
|---|---|
{metric_rows or '| (none) | |'}

## Training settings
```json
{json.dumps(settings, indent=1, sort_keys=True, default=str)}
```
"""


def save_model(accelerator, model, args, config, spec, *, kind: str, step: int, metrics: dict, state) -> Path | None:
    """save_pretrained (safetensors, config, remote code) + model card into OUTPUT_DIR/<kind>, atomically."""
    if not accelerator.is_main_process:
        return None
    target = Path(args.output_dir) / kind
    temporary = Path(args.output_dir) / f".{kind}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(temporary, safe_serialization=True)
    (temporary / "README.md").write_text(
        model_card(args, config, spec, kind=kind, step=step, metrics=metrics, state=state), encoding="utf-8"
    )
    (temporary / "training_metrics.json").write_text(
        json.dumps({"kind": kind, "step": step, "metrics": metrics}, indent=1), encoding="utf-8"
    )
    atomic_replace_dir(temporary, target)
    return target


# ----- Hub upload: background, retried, never touching the local copy -----


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


# ----- evaluation (sharded across processes, fixed-size top-K gathered) -----


def evaluate(accelerator, model, catalog, examples, *, k_values=(10, 20)) -> dict[str, float]:
    from evaluate_fusionrec import catalog_vectors, evaluate_split, rank_examples
    from metrics.fusionrec_metrics.fusionrec_metrics import ranking_metrics, rating_rmse

    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    try:
        if accelerator.num_processes == 1:
            return evaluate_split(unwrapped, catalog, examples, k_values=k_values)
        from accelerate.utils import gather_object

        vectors = catalog_vectors(unwrapped, catalog)
        size = math.ceil(len(examples) / accelerator.num_processes)
        part = slice(accelerator.process_index * size, (accelerator.process_index + 1) * size)
        ranked, predicted = rank_examples(unwrapped, subset_examples(examples, part), vectors, k=max(k_values))
        ranked = np.concatenate(gather_object([ranked]))
        predicted = np.concatenate(gather_object([predicted]))
        num_candidates = len(catalog) if examples.candidate_mask is None else int(examples.candidate_mask.sum())
        metrics = ranking_metrics(ranked, examples.targets, k_values=k_values, num_movies=num_candidates)
        if len(examples):
            metrics["rmse"] = rating_rmse(predicted, examples.target_ratings)
        return metrics
    finally:
        unwrapped.train(was_training)


# ----- optimisation -----


def build_optimizer(model, args):
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_plain = parameter.dim() < 2 or "norm" in name or name.endswith(".bias") or "latents" in name
        (no_decay if is_plain else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.learning_rate)


def scalar_hparams(args) -> dict:
    values = {}
    for key, value in vars(args).items():
        if key.startswith("_") or key == "hub_token":
            continue
        values[key] = value if isinstance(value, int | float | str | bool) else str(value)
    return values


# ----- the training loop -----


def rng_neutral(loader):
    """Iterate `loader`, undoing whatever its iterator set-up draws from the global torch RNG (a DataLoader draws a
    base seed per iterator). Dropout then sees the same RNG stream whether or not the run was resumed mid-epoch."""
    state = torch.get_rng_state()
    iterator = iter(loader)
    try:
        first = next(iterator)
    except StopIteration:
        return
    finally:
        torch.set_rng_state(state)
    yield first
    yield from iterator


def use_cpu(args) -> bool:
    """CPU when asked, or when launched as several processes on a machine without an accelerator: accelerate's
    torchrun launcher does not pass `use_cpu` on, and without it each CPU process would train alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    return bool(args.cpu) or (world_size > 1 and not has_accelerator)


def train(args: argparse.Namespace, *, hub_api=None) -> dict:
    """Run one training job; returns a summary dict (also written to OUTPUT_DIR/train_summary.json)."""
    import fusionrec_data as fd

    # Bad input stops here, before any process group or tracker starts.
    spec = fd.load_feature_spec(args.dataset)
    args._resume_dir = resolve_resume(args)
    if args.init_from is not None and not (Path(args.init_from) / "config.json").is_file():
        raise UsageError(f"--init-from {args.init_from}: no config.json (expected a save_pretrained folder)")
    config = build_config(args, spec)
    fd.check_compatible(config, spec, dataset_dir=args.dataset)

    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from modeling_fusionrec import FusionModel

    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        cpu=use_cpu(args),
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(even_batches=True),
    )
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    say = accelerator.print

    data = load_training_data(args, config, accelerator)
    if not data.windows:
        raise UsageError(f"--dataset {args.dataset}: no training events under split {args.split}")

    if args.init_from is not None:
        model = FusionModel.from_pretrained(args.init_from, config=config)
    else:
        model = FusionModel(config)
    model.train()

    collator = fd.TrainingCollator(
        data.catalog,
        config=config,
        movie_frequency=data.frequency,
        negative_pool=data.negative_pool,
        num_negatives=args.num_negatives,
        seed=args.seed,
    )
    sampler = EpochBatchSampler(
        len(data.windows), batch_size=args.batch_size, seed=args.seed, num_processes=accelerator.num_processes
    )
    if len(sampler) == 0:
        raise UsageError(
            f"--batch-size {args.batch_size}: larger than the {len(data.windows)} training windows per process"
        )
    # Its own generator: otherwise each new epoch iterator draws its base seed from the global torch RNG, and a
    # resumed run (one extra iterator) would drift from the uninterrupted one's dropout masks.
    loader = torch.utils.data.DataLoader(
        KeyedWindows(data.windows),
        batch_sampler=sampler,
        collate_fn=KeyedCollator(collator),
        generator=torch.Generator().manual_seed(args.seed),
    )
    optimizer = build_optimizer(model, args)
    warmup = args.warmup_steps if args.warmup_steps is not None else math.ceil(0.05 * args.max_steps)
    # AcceleratedScheduler steps once per process per optimizer step (split_batches=False): scale to match.
    scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=warmup * accelerator.num_processes,
        num_training_steps=args.max_steps * accelerator.num_processes,
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    state = TrainerState()
    accelerator.register_for_checkpointing(state)

    if args._resume_dir is not None:
        say(f"resuming from {args._resume_dir}")
        accelerator.load_state(str(args._resume_dir))
    steps_per_epoch = max(1, len(loader) // args.gradient_accumulation_steps)

    if accelerator.is_main_process:
        accelerator.init_trackers("fusionrec", config=scalar_hparams(args))
    hub = None
    if args.push_to_hub and accelerator.is_main_process:
        if hub_api is None:
            from huggingface_hub import HfApi

            hub_api = HfApi(token=args.hub_token)
        hub = HubUploader(
            hub_api,
            args.hub_model_id,
            staging_root=output_dir / ".hub-staging",
            private=args.hub_private,
            attempts=args.hub_retries,
            backoff=args.hub_retry_backoff,
            report=lambda line: print(line, flush=True),
        )

    say(
        f"training on {accelerator.num_processes} process(es), {accelerator.device}: {len(data.windows)} windows "
        f"({data.num_train_targets} targets), {len(loader)} batches/epoch/process, {args.max_steps} steps, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
    )
    stop_at = min(args.max_steps, args.stop_at_step or args.max_steps)
    progress = tqdm(
        total=args.max_steps, initial=state.global_step, desc="train", unit="step",
        disable=not accelerator.is_local_main_process or args.no_progress,
    )
    last_metrics: dict[str, float] = {}
    window_count = torch.zeros((), dtype=torch.long)
    target_count = torch.zeros((), dtype=torch.long)
    interval_start = time.perf_counter()
    loss_sums = {"loss": 0.0, "retrieval_loss": 0.0, "rating_loss": 0.0}
    loss_batches = 0
    started = time.perf_counter()
    train_seconds = 0.0
    stopped_early = False

    def run_evaluation() -> None:
        nonlocal last_metrics
        metrics = evaluate(accelerator, model, data.catalog, data.validation)
        last_metrics = metrics
        state.history.append({"step": state.global_step, **metrics})
        accelerator.log({f"validation/{k}": v for k, v in metrics.items() if isinstance(v, float)}, step=state.global_step)
        score = metrics.get("ndcg@10", 0.0)
        say(
            f"step {state.global_step}: validation ndcg@10 {score:.4f} recall@10 {metrics.get('recall@10', 0):.4f} "
            f"mrr@10 {metrics.get('mrr@10', 0):.4f} coverage@10 {metrics.get('coverage@10', 0):.3f} "
            f"rmse {metrics.get('rmse', float('nan')):.3f}"
        )
        if state.best_metric is None or score > state.best_metric:
            state.best_metric, state.best_step = score, state.global_step
            state.evaluations_without_improvement = 0
            saved = save_model(accelerator, model, args, config, data.spec, kind="best", step=state.global_step,
                               metrics=metrics, state=state)
            if hub is not None and saved is not None:
                hub.submit(saved, path_in_repo="", message=f"best: step {state.global_step}, validation ndcg@10 {score:.4f}")
        else:
            state.evaluations_without_improvement += 1

    last_eval_step = -1
    while state.global_step < stop_at and not stopped_early:
        # accelerate's loaders keep their own epoch counter and push it into the batch sampler on every __iter__:
        # set it on each loader (a resumed run's skip-loader is a separate object), then on the sampler itself.
        loader.set_epoch(state.epoch)
        epoch_loader = accelerator.skip_first_batches(loader, state.batches_in_epoch) if state.batches_in_epoch else loader
        epoch_loader.set_epoch(state.epoch)
        sampler.set_epoch(state.epoch)
        for batch in rng_neutral(epoch_loader):
            step_start = time.perf_counter()
            num_windows = batch.pop("num_windows")
            with accelerator.accumulate(model):
                outputs = model(
                    batch["history_movie_indices"],
                    batch["history_ratings"],
                    batch["history_timestamps"],
                    batch["history_mask"],
                    movie_inputs=batch["movie_inputs"],
                    user_indices=batch["user_indices"],
                )
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            state.batches_in_epoch += 1
            if state.batches_in_epoch >= len(loader):  # the epoch is complete: a checkpoint resumes at the next one
                state.epoch, state.batches_in_epoch = state.epoch + 1, 0
            window_count += num_windows.cpu()
            target_count += batch["history_mask"].sum().cpu()
            for key in loss_sums:
                loss_sums[key] += float(getattr(outputs, key).detach())
            loss_batches += 1
            train_seconds += time.perf_counter() - step_start
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            progress.update(1)
            if hub is not None:
                hub.poll()
            at_end = state.global_step >= stop_at
            if args.logging_steps and state.global_step % args.logging_steps == 0 or at_end:
                counts = accelerator.reduce(torch.stack((window_count, target_count)).to(accelerator.device), "sum")
                seconds = max(time.perf_counter() - interval_start, 1e-9)
                logs = {f"train/{k}": v / max(loss_batches, 1) for k, v in loss_sums.items()}
                logs.update({
                    "train/learning_rate": scheduler.get_last_lr()[0],
                    "train/epoch": state.epoch + state.batches_in_epoch / len(loader),
                    "throughput/sequences_per_second": float(counts[0]) / seconds,
                    "throughput/targets_per_second": float(counts[1]) / seconds,
                })
                accelerator.log(logs, step=state.global_step)
                progress.set_postfix(loss=f"{logs['train/loss']:.3f}", seq_s=f"{logs['throughput/sequences_per_second']:.0f}")
                state.history.append({"step": state.global_step, **{k: float(v) for k, v in logs.items()}})
                window_count.zero_()
                target_count.zero_()
                loss_sums = dict.fromkeys(loss_sums, 0.0)
                loss_batches = 0
                interval_start = time.perf_counter()
            if args.eval_steps and state.global_step % args.eval_steps == 0:
                run_evaluation()
                last_eval_step = state.global_step
                interval_start = time.perf_counter()
                if args.patience and state.evaluations_without_improvement >= args.patience:
                    say(f"early stopping: no better validation ndcg@10 in {args.patience} evaluations")
                    stopped_early = True
            periodic = args.checkpointing_steps and state.global_step % args.checkpointing_steps == 0
            preempted = at_end and state.global_step < args.max_steps
            if periodic or preempted or (args.checkpointing_steps and (at_end or stopped_early)):
                save_checkpoint(accelerator, args, state, config)
            if at_end or stopped_early:
                break
    progress.close()

    finished = state.global_step >= args.max_steps or stopped_early
    if finished and last_eval_step != state.global_step:
        run_evaluation()
    summary = {
        "global_step": state.global_step,
        "finished": finished,
        "stopped_early": stopped_early,
        "best_step": state.best_step,
        "best_validation_ndcg@10": state.best_metric,
        "last_validation": last_metrics,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "num_processes": accelerator.num_processes,
        "steps_per_epoch": steps_per_epoch,
        "output_dir": str(output_dir),
        "history": state.history,
    }
    if finished:
        final = save_model(accelerator, model, args, config, data.spec, kind="final", step=state.global_step,
                           metrics=last_metrics, state=state)
        if hub is not None and final is not None:
            hub.submit(final, path_in_repo="final", message=f"final: step {state.global_step}")
    if hub is not None:
        summary["hub_ok"] = hub.finish()
        summary["hub_failed"] = [upload.name for upload in hub.failed]
        summary["hub_uploaded"] = [upload.name for upload in hub.done]
        shutil.rmtree(output_dir / ".hub-staging", ignore_errors=True)
    if accelerator.is_main_process:
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # DDP's reducer holds the gloo group, and freeing it after a peer has exited can hang forever: free it on
        # every rank while all are alive, then shut gloo down together.
        del model, optimizer, loader, scheduler
        accelerator.free_memory()
        gc.collect()
        accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()
    say(f"done: step {state.global_step}, best validation ndcg@10 {state.best_metric} at step {state.best_step}, "
        f"{summary['wall_seconds']:.0f}s")
    return summary


def main(argv: Sequence[str] | None = None, *, hub_api=None) -> int:
    from fusionrec_data import DatasetError

    try:
        args = parse_args(argv)
        summary = train(args, hub_api=hub_api)
    except (UsageError, DatasetError) as error:
        print(f"{PROGRAM}: error: {first_line(error)}", file=sys.stderr)
        return 2
    if summary.get("hub_ok") is False:
        print(f"{PROGRAM}: error: Hub upload failed for {', '.join(summary['hub_failed'])}; local copies kept in "
              f"{args.output_dir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
