"""Checkpoints of a training run: `accelerator.save_state` folders for exact resume (OUTPUT_DIR/checkpoints/step_N,
with the loop's own state), and the `save_pretrained` folders best/ and final/ with their model card, each swapped
into place atomically.
"""

from __future__ import annotations

import json
import pickle  # only to name the error a damaged accelerate checkpoint raises; nothing is unpickled here
import re
import shutil
from contextlib import nullcontext
from pathlib import Path

from fusionrec.errors import first_line
from fusionrec.io import atomic_output, check_writable, make_folder, remove_tree
from fusionrec.training.options import UsageError, command_line, portable, published_settings

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")


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


def check_output_dir(output_dir: Path) -> None:
    """Stop before training when the outputs could not be written: a file in the way, a read-only folder."""
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise UsageError(f"--output-dir {output_dir} exists and is not a folder; choose another path")
    check_writable(output_dir)


def load_weights(model_class, folder: Path):
    """--init-from's model at its own size; a damaged folder is one line, not a traceback."""
    from fusionrec.cli import CHECKPOINT_ERRORS, CHECKPOINT_FIX, checkpoint_problem

    try:
        return model_class.from_pretrained(folder)
    except CHECKPOINT_ERRORS as error:
        raise UsageError(f"--init-from {folder}: cannot load the weights ({checkpoint_problem(error)}); {CHECKPOINT_FIX}") from None


def resume_state(accelerator, folder: Path) -> None:
    """accelerator.load_state; a damaged checkpoint (a file truncated or edited after it was written) is one line."""
    from fusionrec.cli import CHECKPOINT_ERRORS

    try:
        accelerator.load_state(str(folder))
    except (*CHECKPOINT_ERRORS, EOFError, pickle.UnpicklingError) as error:
        raise UsageError(
            f"--resume-from-checkpoint {folder}: the checkpoint is damaged ({first_line(error)[:200]}); resume from "
            "an earlier step_N folder or start again in a new --output-dir"
        ) from None


class TrainerState:
    """Loop position and early-stopping state, saved with every checkpoint (register_for_checkpointing)."""

    def __init__(self) -> None:
        self.global_step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.evaluations_without_improvement = 0
        self.lr_scale = 1.0  # the plateau schedule's decays so far
        self.history: list[dict] = []
        self.cpu_seconds = 0.0  # this process's CPU time in train(), summed over resumes: time to quality

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def save_checkpoint(accelerator, args, state: TrainerState, config) -> Path:
    """accelerator.save_state into a temporary folder (every process writes its part there), renamed to step_N once
    complete, so every step_N is whole; a kill midway leaves only the temporary, which the next save removes. Old
    checkpoints are pruned by renaming them away first, so none is ever half-deleted under its own name."""
    root = checkpoint_root(args.output_dir)
    final = root / f"step_{state.global_step}"
    temporary = root / f".step_{state.global_step}.partial"
    main = accelerator.is_main_process
    if main:
        make_folder(root)
        for stale in root.glob(".step_*.partial"):
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    with atomic_output(final, folder=True, temporary=temporary) if main else nullcontext(temporary) as folder:
        accelerator.save_state(str(folder))
        accelerator.wait_for_everyone()
        if main:
            config.save_pretrained(folder)
            (folder / "trainer_state.json").write_text(json.dumps(state.state_dict(), indent=1), encoding="utf-8")
    if main:
        for _, old in list_checkpoints(args.output_dir)[: -args.checkpoints_total_limit]:
            remove_tree(old)
    accelerator.wait_for_everyone()
    return final


def model_card(args, config, spec: dict, *, kind: str, step: int, metrics: dict, state: TrainerState) -> str:
    metric_rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in sorted(metrics.items()) if isinstance(value, float))
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
model.recommend_for_history(["Heat (1995)", ("tmdb:862", 4.0)], k=10)   # from the catalog saved beside it
```

`release.py --model <this folder> --dataset DATA --repo you/NAME` evaluates it on the test splits and publishes it
with a full model card.

## Dataset
- dataset: `{portable(args.dataset)}` (source: {spec.get('source', 'unknown')}); {spec.get('num_movies')} movies,
  {int(spec.get('num_users', 1)) - 1} users, {counts.get('ratings_kept', 'n/a')} ratings
- split: `{args.split}`; validation metrics below are full-ranking over the catalog (history excluded)
- text encoder: `{portable(config.text_encoder_name_or_path) if config.use_text else 'none (--no-text)'}`
  (revision {config.text_encoder_revision}, {config.text_max_length} tokens; not stored in this checkpoint)

## Validation metrics ({kind}, step {step}; best step {state.best_step})
| metric | value |
|---|---|
{metric_rows or '| (none) | |'}

## Training
```bash
{command_line(args)}
```

```json
{json.dumps(published_settings(args), indent=1, sort_keys=True, default=str)}
```
"""


def save_model(
    accelerator, model, args, config, spec, *, catalog, kind: str, step: int, metrics: dict, state
) -> Path | None:
    """save_pretrained (safetensors, config, remote code), the movie catalog with its trained vectors (so the folder
    recommends on its own), the model card and the run's metrics and settings, into OUTPUT_DIR/<kind>, atomically."""
    if not accelerator.is_main_process:
        return None
    from fusionrec.retrieval import catalog_vectors


    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    try:
        vectors = catalog_vectors(unwrapped, catalog)
    finally:
        unwrapped.train(was_training)
    run = {
        "kind": kind,
        "step": step,
        "best_step": state.best_step,
        "metrics": metrics,
        "dataset": {"name": portable(args.dataset), "source": spec.get("source"), "counts": spec.get("counts", {})},
        "command": command_line(args),
        "settings": published_settings(args),
    }
    with atomic_output(Path(args.output_dir) / kind, folder=True) as folder:
        unwrapped.save_pretrained(folder, safe_serialization=True)
        catalog.release_catalog(vectors=vectors, last_rating_time=int(spec["time"]["max_timestamp"])).save(folder)
        (folder / "README.md").write_text(
            model_card(args, config, spec, kind=kind, step=step, metrics=metrics, state=state), encoding="utf-8"
        )
        (folder / "training_metrics.json").write_text(json.dumps(run, indent=1, default=str), encoding="utf-8")
    return Path(args.output_dir) / kind
