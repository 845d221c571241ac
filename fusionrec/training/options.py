"""The training command line (`train_accelerate.py` / `fusionrec-train`): options, their checks, and the model
config they build (from the feature spec, or from the folder of --init-from / --resume-from-checkpoint).
"""

from __future__ import annotations

import argparse
import math
import shlex
from collections.abc import Sequence
from pathlib import Path

from fusionrec.errors import InputError, first_line

PROGRAM = "train_accelerate.py"
DEFAULT_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
SCHEDULERS = ("plateau", "wsd", "cosine", "linear", "constant_with_warmup")
DEFAULT_MATCH_FEATURES = ("collection",)  # chosen on the real sample (bench/README.md, issue 22)


class UsageError(InputError):
    """Bad command-line input; main() prints it as one line and exits with status 2."""


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line (no usage dump): `train_accelerate.py: error: ...`."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(message)


def negatives(value: str) -> int | None:
    """--num-negatives: a count, or 'all' (None: every movie of the pool is a candidate)."""
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or 'all', got {value!r}") from None


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
    model.add_argument(
        "--init-from", type=Path, default=None,
        help="start from this save_pretrained folder's weights; a model trained before --dataset was updated "
        "(prepare_dataset.py --update) grows its movie, user and vocabulary tables to it, stored rows unchanged",
    )  # fmt: skip
    model.add_argument("--hidden-size", type=int, default=64, help="width of both towers and of the vectors")
    model.add_argument("--num-layers", type=int, default=2, help="user Transformer layers")
    model.add_argument("--num-heads", type=int, default=4, help="user Transformer attention heads")
    model.add_argument("--max-history-length", type=int, default=100, help="training window / history length")
    model.add_argument(
        "--text-encoder",
        default=DEFAULT_TEXT_ENCODER,
        help="frozen text encoder, Hub name or local path (its hidden size is read from its config)",
    )
    model.add_argument("--text-encoder-revision", default=None, help="text encoder revision (part of the cache key)")
    model.add_argument("--text-max-length", type=int, default=32, help="tokens kept per movie text")
    model.add_argument("--perceiver-depth", type=int, default=None, help="Perceiver Resampler layers (config: 1)")
    model.add_argument("--perceiver-head-dim", type=int, default=None, help="Perceiver attention head width (config: 16)")
    model.add_argument("--no-text", action="store_true", help="ablation: no text features (no encoder, no cache)")
    model.add_argument("--no-id-embedding", action="store_true", help="ablation: no movie id embedding")
    model.add_argument("--no-content-features", action="store_true", help="ablation: no numeric/categorical/bag features")
    model.add_argument("--rating-loss-weight", type=float, default=None, help="weight of the rating loss (config: 0.5)")
    model.add_argument("--temperature", type=float, default=None, help="retrieval softmax temperature (config: 0.1)")
    model.add_argument("--dropout", type=float, default=None, help="dropout in both towers (config: 0.1)")
    model.add_argument(
        "--movie-id-dropout",
        type=float,
        default=None,
        help="probability of hiding a movie's id in training (config: 0.5; an ids-only model, --no-text "
        "--no-content-features, does better with 0.2)",
    )
    model.add_argument(
        "--post-release-dropout", type=float, default=None,
        help="probability of hiding a movie's votes, popularity and revenue in training, so the model also ranks "
        "movies that have none yet (config: 0)",
    )
    model.add_argument(
        "--user-id-dropout", type=float, default=None, help="probability of hiding the user's id in training (config: 0.1)"
    )
    model.add_argument(
        "--match-features", nargs="+", default=list(DEFAULT_MATCH_FEATURES), metavar="FEATURE",
        help="categorical features whose value shared with the user's last movie adds a learned bonus to the score, "
        "through a match channel on both vectors: by default collection (the next film of a franchise) where the "
        "model reads content features; 'none': no channel",
    )  # fmt: skip
    model.add_argument(
        "--match-init-bonus", type=float, default=None,
        help="what a shared value adds to a cosine score at initialization, before training moves it (config: 0.25)",
    )  # fmt: skip
    model.add_argument(
        "--match-bonus-factors", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 3.0], metavar="F",
        help="each validation also scores the match channel's learned bonus times each factor and keeps the best "
        "NDCG@10, which the saved model then uses: the loss sets the bonus below what ranks a top 10 best "
        "(1: the learned bonus only)",
    )  # fmt: skip
    model.add_argument(
        "--logq-correction", type=float, default=None,
        help="weight in [0, 2] of the logQ correction of the sampled softmax (config: 1, full; 0: none; above 1: "
        "a popularity prior)",
    )  # fmt: skip
    model.add_argument(
        "--score-function", choices=("cosine", "dot"), default=None,
        help="retrieval score: cosine of unit vectors, or the dot product of free-length ones (config: cosine)",
    )  # fmt: skip
    model.add_argument("--learn-temperature", action="store_true", help="learn the temperature, starting at --temperature")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument(
        "--max-epochs", type=int, default=60,
        help="passes over the training windows; the run is sized from the data, and early stopping (--patience) "
        "usually ends it sooner",
    )  # fmt: skip
    optim.add_argument("--max-steps", type=int, default=None, help="optimizer steps to train (overrides --max-epochs)")
    optim.add_argument("--batch-size", type=int, default=64, help="training windows per process per forward pass")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=1, help="forward passes per optimizer step")
    optim.add_argument("--learning-rate", type=float, default=1e-2, help="peak AdamW learning rate")
    optim.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (not on biases/norms)")
    optim.add_argument(
        "--embedding-lr-scale", type=float, default=0.3,
        help="learning-rate factor of the movie, user and feature-value tables: a row updated once in a while moves "
        "~30x the rate under Adam's moments (1: one rate for all, the default before 0.3 won on validation)",
    )  # fmt: skip
    optim.add_argument(
        "--table-updates", choices=("dense", "lazy"), default="dense",
        help="lazy: a row of those tables changes only at the steps it has a gradient (LazyAdam), so a row seen once "
        "moves once; dense: Adam's moments carry each of its steps on",
    )  # fmt: skip
    optim.add_argument(
        "--warmup-steps", type=int, default=None,
        help="linear warmup steps (default: 5%% of the run; plateau and wsd: one epoch)",
    )  # fmt: skip
    optim.add_argument(
        "--lr-scheduler", choices=SCHEDULERS, default="cosine",
        help="decay after warmup: plateau lowers the learning rate when validation stops improving; wsd (warmup, "
        "stable, decay) holds the peak until validation stops improving, then cools down to zero and ends the run "
        "(--patience does not cut the cool-down short); "
        "for both, validation, not --max-epochs, sets the run's length; the others decay over --max-epochs / "
        "--max-steps",
    )  # fmt: skip
    optim.add_argument(
        "--lr-decay-patience", type=int, default=2,
        help="plateau: evaluations without a better validation NDCG@10 before each decay; wsd: before the cool-down",
    )  # fmt: skip
    optim.add_argument("--lr-decay-factor", type=float, default=0.5, help="plateau: learning-rate factor per decay")
    optim.add_argument(
        "--lr-cooldown-fraction", type=float, default=0.5,
        help="wsd: the cool-down's length (a cosine to zero), as a fraction of the steps before it",
    )  # fmt: skip
    optim.add_argument(
        "--weight-average-decay", type=float, default=0.99,
        help="validate and save an exponential moving average of the weights with this decay per step (0: the raw "
        "weights)",
    )  # fmt: skip
    optim.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm (0: off)")
    optim.add_argument(
        "--window-stride", type=int, default=50,
        help="targets per training window, its last N steps (at most --max-history-length: the default 50 makes "
        "the default 100-step window half context); a smaller stride trains every target on a longer history, with "
        "more windows per epoch",
    )  # fmt: skip
    optim.add_argument(
        "--num-negatives", type=negatives, default=128,
        help="uniform negatives per batch (plus in-batch), or 'all': a full softmax over the catalog at every step "
        "(its vectors once per step; affordable for a few thousand movies)",
    )  # fmt: skip
    optim.add_argument(
        "--mixed-precision",
        choices=("no", "bf16", "fp16"),
        default=None,
        help="autocast precision (default: accelerate config, else no)",
    )
    optim.add_argument(
        "--compile", action="store_true",
        help="torch.compile the movie tower and the user Transformer blocks (FusionModel.compile_towers): meant for "
        "a GPU; the first steps compile (minutes); inductor on this project's 2-core CPU did not pay (bench/README.md)",
    )  # fmt: skip
    optim.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager, aot_eager: to debug)")
    optim.add_argument("--seed", type=int, default=0, help="seed for init, data order, negatives and dropout")
    optim.add_argument(
        "--full-determinism", action="store_true",
        help="bit-for-bit repeatable runs on a GPU too: PyTorch's deterministic kernels (slower there; a CPU run "
        "repeats without it)",
    )  # fmt: skip
    optim.add_argument("--cpu", action="store_true", help="train on CPU even when a GPU is available")
    optim.add_argument(
        "--dataloader-num-workers", type=int, default=0,
        help="processes that gather training batches (the batches are the same for any number)",
    )  # fmt: skip
    optim.add_argument(
        "--ddp-timeout",
        type=float,
        default=1800.0,
        help="seconds a process waits in a collective (e.g. for a process that hangs) before it fails with a "
        "timeout error; must cover the main process building the text cache while the others wait",
    )

    loop = parser.add_argument_group("evaluation, checkpoints, logging")
    loop.add_argument(
        "--eval-steps", type=int, default=None,
        help="evaluate on validation every N steps (default: once per epoch, at least 50 steps apart unless --patience "
        "validations would then outlast a quarter of the run; 0: only at the end)",
    )  # fmt: skip
    loop.add_argument("--patience", type=int, default=5, help="stop after N evaluations without a better NDCG@10 (0: off)")
    loop.add_argument(
        "--checkpointing-steps", type=int, default=0,
        help="save the training state (safetensors and JSON) to OUTPUT_DIR/checkpoints/step_N every N steps (0: off)",
    )  # fmt: skip
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
    positive = ("max_epochs", "max_steps", "batch_size", "gradient_accumulation_steps", "max_history_length", "hidden_size",
                "window_stride", "lr_decay_patience")
    for name in positive:
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise UsageError(f"argument --{name.replace('_', '-')}: must be > 0, got {getattr(args, name)}")
    if not math.isfinite(args.learning_rate) or args.learning_rate < 0:  # 0 is allowed: a run that moves no weight
        raise UsageError(f"argument --learning-rate: must be a number >= 0 (e.g. 1e-2), got {args.learning_rate:g}")
    if not math.isfinite(args.embedding_lr_scale) or args.embedding_lr_scale < 0:  # 0: the tables stay as initialised
        raise UsageError(f"argument --embedding-lr-scale: must be a number >= 0 (e.g. 0.1), got {args.embedding_lr_scale:g}")
    if not 0 <= args.weight_average_decay < 1:
        raise UsageError(f"argument --weight-average-decay: must be in [0, 1) (e.g. 0.99), got {args.weight_average_decay:g}")
    if not 0 < args.lr_decay_factor <= 1:
        raise UsageError(f"argument --lr-decay-factor: must be in (0, 1] (e.g. 0.5), got {args.lr_decay_factor:g}")
    if not 0 < args.lr_cooldown_fraction <= 10:
        raise UsageError(f"argument --lr-cooldown-fraction: must be in (0, 10] (e.g. 0.5), got {args.lr_cooldown_fraction:g}")
    if args.lr_scheduler == "wsd" and args.eval_steps == 0:
        raise UsageError("--lr-scheduler wsd cools down when validation stops improving: it needs --eval-steps > 0")
    if not all(math.isfinite(factor) and factor > 0 for factor in args.match_bonus_factors):
        raise UsageError(f"argument --match-bonus-factors: each must be a number > 0 (e.g. 1 2), got {args.match_bonus_factors}")
    if args.ddp_timeout <= 0:
        raise UsageError(f"argument --ddp-timeout: must be > 0, got {args.ddp_timeout:g}")
    for name in ("eval_steps", "patience", "checkpointing_steps", "num_negatives", "logging_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise UsageError(f"argument --{name.replace('_', '-')}: must be >= 0, got {getattr(args, name)}")
    if args.checkpoints_total_limit < 1:
        raise UsageError("argument --checkpoints-total-limit: must be >= 1")
    if args.push_to_hub and not args.hub_model_id:
        raise UsageError("--push-to-hub needs --hub-model-id (e.g. user/fusionrec-demo)")
    if args.stop_at_step is not None and args.stop_at_step <= 0:
        raise UsageError("argument --stop-at-step: must be > 0")
    return args


def portable(value):
    """A setting as it may be published: an absolute local path keeps only its last part (no machine paths in a
    model card or a Hub repo); everything else as it is."""
    if isinstance(value, str | Path) and Path(value).is_absolute():
        return Path(value).name
    return str(value) if isinstance(value, Path) else value


def published_settings(args: argparse.Namespace) -> dict:
    """The run's options as they may be published: no token, absolute local paths cut to their last part."""
    return {key: portable(value) for key, value in sorted(vars(args).items()) if not key.startswith("_") and key != "hub_token"}


def command_line(args: argparse.Namespace) -> str:
    """The training command that repeats this run: the options that differ from their defaults (paths as in
    `portable`, so a local folder shows by name)."""
    parts = [PROGRAM]
    for action in build_parser()._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in ("help", "hub_token") or value == action.default:
            continue
        values = value if isinstance(value, list) else [] if action.nargs == 0 else [value]
        parts += [action.option_strings[0], *(shlex.quote(str(portable(v))) for v in values)]
    return " ".join(parts)


def match_features(args) -> list[str]:
    """--match-features as the config takes it: none for 'none', and the default only where content features are
    read (an ids-only model has no movie values to match)."""
    if args.match_features == ["none"] or (args.no_content_features and args.match_features == list(DEFAULT_MATCH_FEATURES)):
        return []
    return args.match_features


def build_config(args, spec: dict):
    """The model config: from --resume-from-checkpoint's or --init-from's folder, else from the feature spec + CLI."""
    from configuration_fusionrec import FusionRecConfig

    source = args._resume_dir or args.init_from
    if source is not None:
        from fusionrec.cli import CHECKPOINT_ERRORS, CHECKPOINT_FIX, checkpoint_problem

        flag = "--resume-from-checkpoint" if args._resume_dir else "--init-from"
        try:
            return FusionRecConfig.from_pretrained(source)
        except CHECKPOINT_ERRORS as error:
            raise UsageError(f"{flag} {source}: cannot load its config.json ({checkpoint_problem(error)}); {CHECKPOINT_FIX}") from None
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
    for name in ("dropout", "movie_id_dropout", "post_release_dropout", "user_id_dropout", "perceiver_depth",
                 "perceiver_head_dim", "logq_correction", "score_function", "match_init_bonus"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.learn_temperature:
        overrides["learn_temperature"] = True
    overrides["match_features"] = match_features(args)
    if not args.no_text:
        from modeling_fusionrec import text_encoder_hidden_size

        try:
            hidden = text_encoder_hidden_size(args.text_encoder, revision=args.text_encoder_revision)
        except (OSError, ValueError) as error:
            from fusionrec.data.text_cache import encoder_problem

            problem = encoder_problem(args.text_encoder, error)
            raise UsageError(f"--text-encoder {args.text_encoder!r}: cannot load its config ({problem})") from None
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
