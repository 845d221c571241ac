"""The training loop: one Accelerate loop for CPU, one GPU and many, with validation sharded across processes,
checkpoints for exact resume, best/final `save_pretrained` folders and the background Hub upload; and `main`, the
`train_accelerate.py` / `fusionrec-train` command.

    accelerate launch train_accelerate.py --dataset data/prepared/synthetic --output-dir outputs/demo \\
        --text-encoder sentence-transformers/all-MiniLM-L6-v2

Writes OUTPUT_DIR/checkpoints/step_N (the training state in safetensors and JSON, for --resume-from-checkpoint;
checkpoints.py), OUTPUT_DIR/best (the checkpoint with the best validation NDCG@10) and OUTPUT_DIR/final (the last
weights), both `save_pretrained` folders with safetensors weights, config, remote code and a model card;
OUTPUT_DIR/logs (tensorboard) and OUTPUT_DIR/train_summary.json. Exact resume: the data order is a pure function of
(seed, epoch), the negatives of (seed, epoch, batch), and the RNG/optimizer/scheduler/loop states come back with the
checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from fusionrec.cli import quiet_libraries
from fusionrec.data.collator import TrainingCollator
from fusionrec.data.loading import check_compatible, load_feature_spec
from fusionrec.data.sequences import subset_examples
from fusionrec.errors import InputError, one_line
from fusionrec.growth import grow_model, grown_config
from fusionrec.hub import HubUploader
from fusionrec.io import atomic_write_text
from fusionrec.training.batches import EpochBatchSampler, KeyedWindows, built_batch, load_training_data
from fusionrec.training.checkpoints import (
    TrainerState,
    check_output_dir,
    load_weights,
    resolve_resume,
    resume_state,
    save_checkpoint,
    save_model,
)
from fusionrec.training.optimizer import build_optimizer
from fusionrec.training.options import PROGRAM, UsageError, build_config, parse_args
from fusionrec.training.weight_average import WeightAverage

MIN_EVAL_INTERVAL = 50  # optimizer steps between default validations
PATIENCE_SHARE = 4  # a run of tiny epochs validates often enough that --patience spans at most 1/4 of it


def evaluate(accelerator, model, catalog, examples, *, k_values=(10, 20)) -> dict[str, float]:
    """Validation metrics, sharded across processes (fixed-size top-K gathered)."""
    # Imported on first use: the metric module loads `evaluate` and `datasets`, which `--help` need not wait for.
    from fusionrec.evaluation import evaluate_split, rank_examples
    from fusionrec.metrics.fusionrec_metrics import ranking_metrics, rating_rmse
    from fusionrec.retrieval import catalog_vectors

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


@contextmanager
def match_bonus_scaled(model, factor: float) -> Iterator[None]:
    """The match channel's bonus times `factor` inside the block (`FusionModel.match_log_scale`, restored exactly)."""
    if factor == 1.0:
        yield
        return
    scale = model.match_log_scale
    learned = scale.detach().clone()
    with torch.no_grad():
        scale.add_(0.5 * math.log(factor))
    try:
        yield
    finally:
        with torch.no_grad():
            scale.copy_(learned)


def evaluate_fitting_match_bonus(accelerator, model, catalog, examples, factors: Sequence[float]):
    """Validation metrics at the learned match bonus times each factor, and the factor with the best NDCG@10 (the
    smallest change on ties). The sampled-softmax loss fits the bonus to every candidate's likelihood and leaves it
    below what ranks a top 10 best (on the real sample it learns 0.27 where 0.5 ranks best), so this one scalar is
    chosen on validation, as the step is."""
    unwrapped = accelerator.unwrap_model(model)
    results = {}
    for factor in sorted(set(factors) | {1.0}, key=lambda f: abs(math.log(f))):
        with match_bonus_scaled(unwrapped, factor):
            results[factor] = evaluate(accelerator, model, catalog, examples)
    best = max(results, key=lambda factor: results[factor].get("ndcg@10", 0.0))
    bonus = float(unwrapped.match_log_scale.detach().exp() ** 2)
    return best, {**results[best], "match_bonus": bonus * best, "ndcg@10_learned_bonus": results[1.0].get("ndcg@10", 0.0)}


# ----- logging -----


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


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory so far (None where the platform does not say)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def use_cpu(args) -> bool:
    """CPU when asked, or when launched as several processes on a machine without an accelerator: accelerate's
    torchrun launcher does not pass `use_cpu` on, and without it each CPU process would train alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    return bool(args.cpu) or (world_size > 1 and not has_accelerator)


def fitted_batch_size(batch_size: int, num_windows: int, num_processes: int, say) -> int:
    """--batch-size, or, when the data has fewer training windows per process than that, all of them (one batch
    per epoch) with a one-line notice: a small dataset trains with the defaults instead of stopping."""
    per_process = num_windows // num_processes
    if per_process == 0:
        raise UsageError(
            f"the dataset has {num_windows} training windows for {num_processes} processes; prepare more ratings "
            "or launch fewer processes."
        )
    if batch_size <= per_process:
        return batch_size
    say(f"--batch-size {batch_size} is larger than the {per_process} training windows per process: using {per_process}.")
    return per_process


def run_length(args, *, batches_per_epoch: int) -> tuple[int, int]:
    """(max_steps, eval_steps): --max-steps, else --max-epochs passes over this process's batches, and one validation
    per epoch unless --eval-steps says otherwise. Epochs shorter than MIN_EVAL_INTERVAL steps validate that far apart
    (a tiny epoch would spend the run ranking, and --patience would read noise), but never so far apart that
    --patience validations outlast a quarter of the run: early stopping, not the cap, ends it. Sized from the data,
    the same command suits a 300-user demo and the 270,000-user Kaggle set."""
    steps_per_epoch = max(1, batches_per_epoch // args.gradient_accumulation_steps)
    max_steps = args.max_steps if args.max_steps is not None else args.max_epochs * steps_per_epoch
    if args.eval_steps is not None:
        return max_steps, args.eval_steps
    if steps_per_epoch >= MIN_EVAL_INTERVAL or not args.patience:
        return max_steps, max(steps_per_epoch, MIN_EVAL_INTERVAL)
    patience_fits = max_steps // (PATIENCE_SHARE * args.patience)
    return max_steps, min(MIN_EVAL_INTERVAL, max(steps_per_epoch, patience_fits))


def cooldown_factor(step: float, state: TrainerState) -> float:
    """wsd: 1 until the cool-down starts, then a half cosine to 0 over its length."""
    if state.cooldown_start is None:
        return 1.0
    done = min(1.0, max(0.0, (step - state.cooldown_start) / max(1, state.cooldown_steps)))
    return 0.5 * (1.0 + math.cos(math.pi * done))


def validation_ended(args, state: TrainerState) -> str | None:
    """Why validation has ended the run, or None: early stopping, or once wsd's cool-down has begun (its gains come
    late, as the rate nears zero), the cool-down complete."""
    if state.cooldown_start is not None:
        if state.global_step >= state.cooldown_start + state.cooldown_steps:
            return f"the learning-rate cool-down is complete at step {state.global_step}"
        return None
    if args.patience and state.evaluations_without_improvement >= args.patience:
        return f"early stopping: no better validation ndcg@10 in {args.patience} evaluations"
    return None


def build_scheduler(optimizer, args, state: TrainerState, *, steps_per_epoch: int, num_processes: int):
    """Linear warmup, then --lr-scheduler. plateau holds the peak times `state.lr_scale`, which each validation
    plateau lowers; wsd holds the peak until the first plateau, then cools down (`cooldown_factor`) and the run ends
    with it (run_evaluation sets both). Under either, the run's length and decay follow validation and --max-epochs
    is only a safety bound; the state is checkpointed, so a resumed run decays as the uninterrupted one. The others
    decay over the whole --max-steps. AcceleratedScheduler steps once per process per optimizer step
    (split_batches=False), so step counts are scaled by the number of processes."""
    from transformers import get_scheduler

    if args.lr_scheduler in ("plateau", "wsd"):
        ramp = (args.warmup_steps if args.warmup_steps is not None else max(1, steps_per_epoch)) * num_processes

        def factor(step: int) -> float:
            return min(1.0, (step + 1) / ramp) * state.lr_scale * cooldown_factor(step / num_processes, state)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    warmup = args.warmup_steps if args.warmup_steps is not None else math.ceil(0.05 * args.max_steps)
    return get_scheduler(args.lr_scheduler, optimizer=optimizer, num_warmup_steps=warmup * num_processes,
                         num_training_steps=args.max_steps * num_processes)


def train(args: argparse.Namespace, *, hub_api=None) -> dict:
    """Run one training job; returns a summary dict (also written to OUTPUT_DIR/train_summary.json)."""
    entered = time.perf_counter()
    # Bad input stops here, before any process group or tracker starts.
    spec = load_feature_spec(args.dataset)
    args._resume_dir = resolve_resume(args)
    if args.init_from is not None and not (Path(args.init_from) / "config.json").is_file():
        raise UsageError(f"--init-from {args.init_from}: no config.json (expected a save_pretrained folder)")
    config = build_config(args, spec)
    if args.init_from is not None:
        config = grown_config(config, spec, dataset_dir=args.dataset)
    check_compatible(config, spec, dataset_dir=args.dataset)
    check_output_dir(args.output_dir)

    from accelerate import Accelerator, PartialState
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    from modeling_fusionrec import FusionModel

    output_dir = Path(args.output_dir)
    # The process group's timeout goes straight to PartialState (as transformers' Trainer does): accelerate's
    # InitProcessGroupKwargs drops a timeout equal to its own default, 600 s, and gloo would then wait 1800 s.
    PartialState(cpu=use_cpu(args), timeout=timedelta(seconds=args.ddp_timeout))
    accelerator = Accelerator(
        cpu=use_cpu(args),
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(even_batches=True, non_blocking=True),
    )
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    say = accelerator.print

    with quiet_libraries():
        data = load_training_data(args, config, accelerator)
    if not data.windows:
        raise UsageError(f"--dataset {args.dataset}: no training events under split {args.split}")

    if args.init_from is not None:
        # Loaded at its own size, then grown to an updated dataset's (new rows as fusionrec/growth.py says).
        with quiet_libraries():
            loaded = load_weights(FusionModel, args.init_from)
        model = grow_model(loaded, spec, dataset_dir=args.dataset, seed=args.seed)
        config = model.config
    else:
        model = FusionModel(config)
    model.set_movie_counts(data.frequency)
    model.train()
    if args.compile:
        model.compile_towers(backend=args.compile_backend)

    collator = TrainingCollator(
        data.catalog,
        config=config,
        movie_frequency=data.frequency,
        negative_pool=data.negative_pool,
        num_negatives=args.num_negatives,
        seed=args.seed,
        text_states=False,
    )
    args.batch_size = fitted_batch_size(args.batch_size, len(data.windows), accelerator.num_processes, say)
    # The frozen text states stay on the device; each batch carries only its movie indices across.
    device_catalog = data.catalog.on_device(accelerator.device)
    sampler = EpochBatchSampler(
        len(data.windows), batch_size=args.batch_size, seed=args.seed, num_processes=accelerator.num_processes
    )
    # Its own generator: otherwise each new epoch iterator draws its base seed from the global torch RNG, and a
    # resumed run (one extra iterator) would drift from the uninterrupted one's dropout masks.
    loader = torch.utils.data.DataLoader(
        KeyedWindows(data.windows, collator),
        batch_sampler=sampler,
        collate_fn=built_batch,
        num_workers=args.dataloader_num_workers,
        pin_memory=accelerator.device.type == "cuda",
        generator=torch.Generator().manual_seed(args.seed),
    )
    args.max_steps, args.eval_steps = run_length(args, batches_per_epoch=len(sampler) // accelerator.num_processes)
    optimizer = build_optimizer(model, args)
    state = TrainerState()
    steps_per_epoch = max(1, len(sampler) // accelerator.num_processes // args.gradient_accumulation_steps)
    scheduler = build_scheduler(
        optimizer, args, state, steps_per_epoch=steps_per_epoch, num_processes=accelerator.num_processes
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    average = WeightAverage(accelerator.unwrap_model(model), decay=args.weight_average_decay) if args.weight_average_decay else None
    if args._resume_dir is not None:
        say(f"resuming from {args._resume_dir}")
        resume_state(accelerator, args._resume_dir, model=model, optimizer=optimizer, scheduler=scheduler, state=state,
                     average=average)

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
    match_factor = 1.0  # the match bonus times this is what the last validation chose (evaluate_fitting_match_bonus)
    window_count = torch.zeros((), dtype=torch.long)
    target_count = torch.zeros((), dtype=torch.long)
    interval_start = time.perf_counter()
    loss_sums = {"loss": 0.0, "retrieval_loss": 0.0, "rating_loss": 0.0}
    loss_batches = 0
    started = time.perf_counter()
    train_seconds = 0.0
    cpu_started, cpu_before = time.process_time(), state.cpu_seconds
    stopped_early = validation_ended(args, state) is not None  # a resumed run that had ended at its checkpoint
    first_step = None

    def cpu_seconds() -> float:
        return cpu_before + time.process_time() - cpu_started

    def with_averaged_weights(model):
        """The weights a run validates and saves: the weight average's where there is one."""
        return average.applied(accelerator.unwrap_model(model)) if average is not None else nullcontext()

    def run_evaluation(model) -> None:
        with with_averaged_weights(model):
            evaluate_and_keep_best(model)

    def evaluate_and_keep_best(model) -> None:
        nonlocal last_metrics, match_factor
        spent = cpu_seconds()
        if config.match_features:
            match_factor, metrics = evaluate_fitting_match_bonus(accelerator, model, data.catalog, data.validation,
                                                                 args.match_bonus_factors)
        else:
            metrics = evaluate(accelerator, model, data.catalog, data.validation)
        last_metrics = metrics
        state.history.append({"step": state.global_step, "cpu_seconds": spent, **metrics})
        accelerator.log({f"validation/{k}": v for k, v in metrics.items() if isinstance(v, float)}, step=state.global_step)
        score = metrics.get("ndcg@10", 0.0)
        say(
            f"step {state.global_step}: validation ndcg@10 {score:.4f} recall@10 {metrics.get('recall@10', 0):.4f} "
            f"mrr@10 {metrics.get('mrr@10', 0):.4f} coverage@10 {metrics.get('coverage@10', 0):.3f} "
            f"rmse {metrics.get('rmse', float('nan')):.3f}"
            + (f" (match bonus {metrics['match_bonus']:.3f}; as learned: ndcg@10 {metrics['ndcg@10_learned_bonus']:.4f})"
               if config.match_features else "")
        )
        if state.best_metric is None or score > state.best_metric:
            state.best_metric, state.best_step = score, state.global_step
            state.evaluations_without_improvement = 0
            with match_bonus_scaled(accelerator.unwrap_model(model), match_factor):
                saved = save_model(accelerator, model, args, config, data.spec, catalog=data.catalog, kind="best",
                                   step=state.global_step, metrics=metrics, state=state)
            if hub is not None and saved is not None:
                hub.submit(saved, path_in_repo="", message=f"best: step {state.global_step}, validation ndcg@10 {score:.4f}")
        else:
            state.evaluations_without_improvement += 1
            if args.lr_scheduler == "plateau" and state.evaluations_without_improvement % args.lr_decay_patience == 0:
                state.lr_scale *= args.lr_decay_factor
                say(f"learning rate x{args.lr_decay_factor:g} (now x{state.lr_scale:g} the peak): no better validation "
                    f"ndcg@10 in {state.evaluations_without_improvement} evaluations")
            plateaued = state.evaluations_without_improvement >= args.lr_decay_patience
            if args.lr_scheduler == "wsd" and state.cooldown_start is None and plateaued:
                state.cooldown_start = state.global_step
                state.cooldown_steps = max(1, math.ceil(args.lr_cooldown_fraction * state.global_step))
                say(f"cool-down: no better validation ndcg@10 in {state.evaluations_without_improvement} evaluations; "
                    f"the learning rate falls to 0 over {state.cooldown_steps} steps, then the run ends")

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
            if config.use_text:
                batch["movie_inputs"].update(device_catalog.text_inputs(batch["movie_inputs"]["movie_indices"]))
            with accelerator.accumulate(model):
                outputs = model(
                    batch["history_movie_indices"],
                    batch["history_ratings"],
                    batch["history_timestamps"],
                    batch["history_mask"],
                    movie_inputs=batch["movie_inputs"],
                    target_mask=batch["target_mask"],
                    user_indices=batch["user_indices"],
                )
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if average is not None and accelerator.sync_gradients:
                    average.update(accelerator.unwrap_model(model))
            state.batches_in_epoch += 1
            if state.batches_in_epoch >= len(loader):  # the epoch is complete: a checkpoint resumes at the next one
                state.epoch, state.batches_in_epoch = state.epoch + 1, 0
            window_count += num_windows.cpu()
            target_count += batch["target_mask"].sum().cpu()
            for key in loss_sums:
                loss_sums[key] += float(getattr(outputs, key).detach())
            loss_batches += 1
            train_seconds += time.perf_counter() - step_start
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            progress.update(1)
            if first_step is None:  # start-up cost: data, text cache and model loading up to one finished step
                first_step = {"seconds_to_first_step": time.perf_counter() - entered, "first_step_unix_time": time.time()}
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
                run_evaluation(model)
                last_eval_step = state.global_step
                interval_start = time.perf_counter()
            ended = validation_ended(args, state)
            if ended is not None:
                say(ended)
                stopped_early = True
            periodic = args.checkpointing_steps and state.global_step % args.checkpointing_steps == 0
            preempted = at_end and state.global_step < args.max_steps
            if periodic or preempted or (args.checkpointing_steps and (at_end or stopped_early)):
                state.cpu_seconds = cpu_seconds()
                save_checkpoint(accelerator, args, state, config, model=model, optimizer=optimizer, scheduler=scheduler,
                                average=average)
            if at_end or stopped_early:
                break
    progress.close()

    finished = state.global_step >= args.max_steps or stopped_early
    if finished and last_eval_step != state.global_step:
        run_evaluation(model)
    summary = {
        "global_step": state.global_step,
        "finished": finished,
        "stopped_early": stopped_early,
        "best_step": state.best_step,
        "best_validation_ndcg@10": state.best_metric,
        "last_validation": last_metrics,
        "train_seconds": train_seconds,
        "cpu_seconds": cpu_seconds(),
        "wall_seconds": time.perf_counter() - started,
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "batch_size": args.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "num_windows": len(data.windows),
        "num_train_targets": data.num_train_targets,
        **(first_step or {}),
        **({"peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(accelerator.device)}
           if accelerator.device.type == "cuda" else {}),  # fmt: skip
        "peak_rss_bytes": peak_rss_bytes(),
        "output_dir": str(output_dir),
        "history": state.history,
    }
    if finished:
        with with_averaged_weights(model), match_bonus_scaled(accelerator.unwrap_model(model), match_factor):
            final = save_model(accelerator, model, args, config, data.spec, catalog=data.catalog, kind="final",
                               step=state.global_step, metrics=last_metrics, state=state)
        if hub is not None and final is not None:
            hub.submit(final, path_in_repo="final", message=f"final: step {state.global_step}")
    if hub is not None:
        summary["hub_ok"] = hub.finish()
        summary["hub_failed"] = [upload.name for upload in hub.failed]
        summary["hub_uploaded"] = [upload.name for upload in hub.done]
        shutil.rmtree(output_dir / ".hub-staging", ignore_errors=True)
    if accelerator.is_main_process:
        atomic_write_text(output_dir / "train_summary.json", json.dumps(summary, indent=1, default=str))
    # DDP's Reducer co-owns the process group: free it before end_training() destroys the group. A Reducer left to
    # die when train() returns drops the group's last reference with the GIL held; ~ProcessGroupGloo then joins a
    # gloo worker thread that waits for the GIL to free the last collective's tensors, and the process never exits.
    prepared = weakref.ref(model)
    del model
    accelerator.free_memory()
    if accelerator.num_processes > 1 and prepared() is not None:
        raise RuntimeError("the DDP model outlived accelerator.free_memory(); its process group would hang at exit")
    accelerator.end_training()
    say(f"done: step {state.global_step}, best validation ndcg@10 {state.best_metric} at step {state.best_step}, "
        f"{summary['wall_seconds']:.0f}s")
    return summary


@contextmanager
def full_determinism() -> Iterator[None]:
    """PyTorch's deterministic kernels for the run, its settings put back after: on a GPU cuBLAS, attention's
    backward and atomic adds do not repeat by default (the model's CPU step repeats on any number of threads)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs to repeat itself on a GPU
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:]


def main(argv: Sequence[str] | None = None, *, hub_api=None) -> int:
    try:
        args = parse_args(argv)
        with full_determinism() if args.full_determinism else nullcontext():
            summary = train(args, hub_api=hub_api)
    except InputError as error:
        print(f"{PROGRAM}: error: {one_line(error)}", file=sys.stderr)
        return 2
    if summary.get("hub_ok") is False:
        print(f"{PROGRAM}: error: Hub upload failed for {', '.join(summary['hub_failed'])}; local copies kept in "
              f"{args.output_dir}", file=sys.stderr)
        return 1
    return 0
