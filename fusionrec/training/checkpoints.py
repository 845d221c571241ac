"""Checkpoints of a training run: OUTPUT_DIR/checkpoints/step_N, all that an exact resume needs, and the
`save_pretrained` folders best/ and final/ with their model card, each swapped into place atomically.

A step_N folder is safetensors and JSON only, so resuming unpickles nothing (accelerate's save_state would pickle
the optimizer, scheduler, RNG and loop states, and its load_state unpickle them): model.safetensors (the unwrapped
model's weights), optimizer.safetensors and optimizer.json (per-parameter tensors; param_groups), scheduler.json
(the learning-rate scheduler's state_dict), scaler.json (the fp16 gradient scaler's, where there is one),
trainer_state.json (TrainerState), random_states_<process>.safetensors and .json (each process's RNG states and
accelerate's batch counter), and config.json with the configuration code.
"""

from __future__ import annotations

import json
import re
import shutil
from contextlib import nullcontext
from pathlib import Path

from safetensors.torch import load_file, load_model, save_file
from safetensors.torch import save_model as save_weights

from fusionrec.errors import first_line
from fusionrec.io import atomic_output, check_writable, make_folder, remove_tree
from fusionrec.training.options import UsageError, command_line, portable, published_settings
from fusionrec.training.state_files import optimizer_state, optimizer_tensors, rng_states, set_rng_states

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
PICKLED_SUFFIXES = (".bin", ".pkl", ".pt")  # accelerate save_state's optimizer.bin, random_states_0.pkl, scaler.pt


def checkpoint_root(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))]
    return sorted(found)


def resolve_resume(args) -> Path | None:
    """The step_N folder --resume-from-checkpoint names, checked before anything starts."""
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "latest":
        found = list_checkpoints(args.output_dir)
        if not found:
            raise UsageError(f"--resume-from-checkpoint latest: no step_N checkpoint in {checkpoint_root(args.output_dir)}")
        path = found[-1][1]
    else:
        path = Path(args.resume_from_checkpoint)
    if not (path / "trainer_state.json").is_file():
        raise UsageError(f"--resume-from-checkpoint {path}: not a training checkpoint (no trainer_state.json)")
    if any(file.suffix in PICKLED_SUFFIXES for file in path.iterdir()):
        raise UsageError(
            f"--resume-from-checkpoint {path}: an accelerate save_state checkpoint, the old pickle-based format, which "
            "is not read (unpickling can run any code); start again in a new --output-dir, or resume it with the "
            "fusionrec version that wrote it"
        )
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


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1), encoding="utf-8")


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def rng_files(folder: Path, process_index: int) -> tuple[Path, Path]:
    """One process's RNG states: torch's tensors, and numpy's and Python's values."""
    return folder / f"random_states_{process_index}.safetensors", folder / f"random_states_{process_index}.json"


def write_training_state(folder: Path, accelerator, model, optimizer, scheduler, average=None) -> None:
    """The main process's part of a checkpoint (the weights first): the processes' copies are all the same."""
    save_weights(accelerator.unwrap_model(model), str(folder / "model.safetensors"))
    if average is not None:
        save_file(average.state_tensors(), folder / "weight_average.safetensors")
    tensors, rest = optimizer_tensors(optimizer.state_dict())
    save_file(tensors, folder / "optimizer.safetensors")
    write_json(folder / "optimizer.json", rest)
    write_json(folder / "scheduler.json", scheduler.state_dict())
    if accelerator.scaler is not None:
        write_json(folder / "scaler.json", accelerator.scaler.state_dict())


def write_process_state(folder: Path, accelerator) -> None:
    """Each process's own part: its RNG states, and accelerate's count of batches towards gradient accumulation."""
    tensors_file, values_file = rng_files(folder, accelerator.process_index)
    tensors, values = rng_states()
    save_file(tensors, tensors_file)
    write_json(values_file, {"accelerator_step": accelerator.step, **values})


def read_state(folder: Path, accelerator, model, optimizer, scheduler, state: TrainerState, average=None) -> None:
    """Every process reads the main process's part and its own RNG states (none when the checkpoint was written by
    fewer processes: it keeps its seeded ones, as accelerate's load_state did)."""
    load_model(accelerator.unwrap_model(model), str(folder / "model.safetensors"))
    if average is not None:
        if not (folder / "weight_average.safetensors").is_file():
            raise UsageError(f"--resume-from-checkpoint {folder}: written without --weight-average-decay, so it has no "
                             "weight average to go on from; resume with --weight-average-decay 0 or start a new "
                             "--output-dir")
        average.load_state_tensors(load_file(folder / "weight_average.safetensors"))
    rest = read_json(folder / "optimizer.json")
    if len(rest["param_groups"]) != len(optimizer.param_groups):
        raise UsageError(
            f"--resume-from-checkpoint {folder}: its optimizer has {len(rest['param_groups'])} parameter groups and "
            f"this run's {len(optimizer.param_groups)}, so it was started with another --embedding-lr-scale (2 groups: "
            "1 with --table-updates dense, the default before 0.3; 3: any other); resume with the value it was started "
            "with"
        )
    tensors = load_file(folder / "optimizer.safetensors")
    optimizer.load_state_dict(optimizer_state(tensors, rest, like=optimizer.param_groups))
    scheduler.load_state_dict(read_json(folder / "scheduler.json"))
    if accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(read_json(folder / "scaler.json"))
    state.load_state_dict(read_json(folder / "trainer_state.json"))
    tensors_file, values_file = rng_files(folder, accelerator.process_index)
    if values_file.is_file():
        values = read_json(values_file)
        set_rng_states(load_file(tensors_file), values)
        accelerator.step = values["accelerator_step"]


def resume_state(accelerator, folder: Path, *, model, optimizer, scheduler, state: TrainerState, average=None) -> None:
    """Put back what save_checkpoint wrote; a damaged checkpoint (a file truncated or edited after it was written) is
    one line. Launched with another number of processes, a run goes on, but not as the original would have: the
    data order and the RNG states are per process."""
    from fusionrec.cli import CHECKPOINT_ERRORS

    written = len(list(folder.glob("random_states_*.json")))
    if written != accelerator.num_processes:
        accelerator.print(f"{folder} was written by {written} process(es), this run has {accelerator.num_processes}: "
                          "the run goes on from there, but not as the original would have")
    try:
        read_state(folder, accelerator, model, optimizer, scheduler, state, average)
    except CHECKPOINT_ERRORS as error:
        raise UsageError(
            f"--resume-from-checkpoint {folder}: the checkpoint is damaged ({first_line(error)[:200]}); resume from "
            "an earlier step_N folder or start again in a new --output-dir"
        ) from None


class TrainerState:
    """Loop position and early-stopping state, saved with every checkpoint as trainer_state.json."""

    def __init__(self) -> None:
        self.global_step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.evaluations_without_improvement = 0
        self.lr_scale = 1.0  # the plateau schedule's decays so far
        self.cooldown_start: int | None = None  # the wsd schedule's cool-down: the step it began, its length
        self.cooldown_steps = 0
        self.history: list[dict] = []
        self.cpu_seconds = 0.0  # this process's CPU time in train(), summed over resumes: time to quality

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def save_checkpoint(accelerator, args, state: TrainerState, config, *, model, optimizer, scheduler, average=None) -> Path:
    """The training state into a temporary folder (every process writes its part there), renamed to step_N once
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
        folder.mkdir(exist_ok=True)
        if main:
            write_training_state(folder, accelerator, model, optimizer, scheduler, average)
        write_process_state(folder, accelerator)
        accelerator.wait_for_everyone()
        if main:
            config.save_pretrained(folder)
            write_json(folder / "trainer_state.json", state.state_dict())
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
