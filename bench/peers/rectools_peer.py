"""RecTools SASRec / BERT4Rec as a peer of FusionModel, on the prepared dataset folder's own split.

Runs inside bench/peers/.venv-rectools (bench/peers/setup_rectools.sh): RecTools 0.19 needs numpy<2, so it cannot
share the project's environment, and this file imports nothing of the project. bench/bench_quality.py calls it as a
subprocess and reads the JSON it writes (bench/peers/README.md has the fields).

Split (leave_one_out, docs/DATASET_FORMAT.md): a user's training events are the positions before
loo_valid_position (users with fewer than 3 events: all of them, no evaluation); the validation target is
loo_valid_position, the test target loo_test_position, each with every earlier position as history (the validation
event is part of the test history). Ids are our movie_index / user_index. RecTools orders each user's events by
their datetime, so the datetime given to it is our timestamp (seconds) plus the event's position in nanoseconds:
the same times to the second, strictly increasing in our stored order, so ties keep our order whatever the sort.

Training follows RecTools' MovieLens recipes (full softmax loss, 2 blocks, lr 1e-3, batch 128, dropout 0.2, up to
200 epochs): the validation event is held out of training by RecTools' leave_one_out_mask, a Lightning callback
ranks it every epoch exactly as the test event is ranked below, EarlyStopping watches that NDCG@10, and the best
epoch's weights are put back before scoring. Scoring: model.recommend over the whole catalog the model knows,
filter_viewed=True over the whole history, k=100. Movies the peer never trained on have no vector: they rank after
every known movie, so a target among them counts as missed (rank -1).

With --state-dir the fit is resumable: the state after each epoch (weights, Adam moments, RNG states, the
validation curve and best weights, early stopping's counters, CPU-seconds so far) is written there as safetensors and
JSON, and a restarted run continues after the last complete epoch and ends as the uninterrupted run does (same batch
order, same dropout masks, same selected epoch); its CPU-seconds add up over the pieces. A CPU peer takes hours on 2
cores, longer than one sitting.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # numpy/scipy only do bookkeeping here; torch threads are --threads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS when --device cuda

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytorch_lightning  # noqa: E402
import rectools  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning import Callback, Trainer, seed_everything  # noqa: E402
from pytorch_lightning.callbacks import Checkpoint, EarlyStopping  # noqa: E402
from rectools import Columns  # noqa: E402
from rectools.dataset import Dataset  # noqa: E402
from rectools.metrics import NDCG, Recall, calc_metrics  # noqa: E402
from rectools.models import BERT4RecModel, SASRecModel  # noqa: E402
from rectools.models.nn.item_net import CatFeaturesItemNet, IdEmbeddingsItemNet  # noqa: E402
from rectools.models.nn.transformers.utils import leave_one_out_mask  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

TOP_K = 100  # ranks are stored to here; beyond it a target is -1
TOP_STORED = 20  # per-user top list kept for catalog coverage
VAL_METRIC = "val_ndcg@10"
SEQUENCE_COLUMNS = ("user_index", "movie_index", "timestamp", "loo_valid_position", "loo_test_position")


class InputError(Exception):
    """Bad input: one line naming the file, row or field, and the fix."""


# ----- reading the prepared folder -----


def read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(f"{path}: missing; prepare the dataset with prepare_dataset.py first.")
    names = pq.read_schema(path).names
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; re-run prepare_dataset.py.")
    return pq.read_table(path, columns=columns).to_pandas()


def well_formed(row) -> bool:
    """One sequences row agrees with the format: same-length lists, time-ordered, consistent leave-one-out marks."""
    n = len(row.movie_index)
    if len(row.timestamp) != n or n == 0 or np.any(np.diff(np.asarray(row.timestamp)) < 0):
        return False
    if n < 3:
        return row.loo_valid_position == -1 and row.loo_test_position == -1
    return row.loo_valid_position == n - 2 and row.loo_test_position == n - 1


def read_sequences(dataset: Path) -> tuple[pd.DataFrame, int]:
    """Rows in table order; malformed rows are skipped and counted."""
    table = read_table(dataset / "sequences" / "train-00000-of-00001.parquet", list(SEQUENCE_COLUMNS))
    keep = np.array([well_formed(row) for row in table.itertuples(index=False)], dtype=bool)
    return table[keep].reset_index(drop=True), int((~keep).sum())


def events(sequences: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, position) in stored order, with RecTools' columns; `datetime` is the timestamp plus the
    position in nanoseconds (strictly increasing within a user, see module docstring)."""
    lengths = sequences["movie_index"].map(len).to_numpy()
    position = np.concatenate([np.arange(n) for n in lengths]).astype(np.int64)
    seconds = np.concatenate(sequences["timestamp"].to_numpy()).astype(np.int64)
    return pd.DataFrame(
        {
            Columns.User: np.repeat(sequences["user_index"].to_numpy().astype(np.int64), lengths),
            Columns.Item: np.concatenate(sequences["movie_index"].to_numpy()).astype(np.int64),
            Columns.Weight: 1.0,
            Columns.Datetime: pd.to_datetime(seconds * 1_000_000_000 + position, unit="ns"),
            "position": position,
            "valid_position": np.repeat(sequences["loo_valid_position"].to_numpy(), lengths),
            "test_position": np.repeat(sequences["loo_test_position"].to_numpy(), lengths),
        }
    )


def chunk_ranges(length: int, *, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of consecutive chunks of at most `chunk` events over `length` events, newest first,
    each sharing its first event with the end of the one before: every event after the first is a next-event
    target in exactly one chunk (SASRec), and every event is in some chunk of at least two (BERT4Rec)."""
    return [(max(0, stop - chunk), stop) for stop in range(length, 1, -(chunk - 1))]


def pseudo_user_chunks(train: pd.DataFrame, *, chunk: int, first_pseudo_user: int) -> pd.DataFrame:
    """Every training event reaches the fit: RecTools fits on each user's last `chunk` events only, so a longer
    history is cut into chunk_ranges, each fitted as its own (pseudo-)user. The newest chunk keeps the real user id
    (the one validation and scoring read); older chunks get fresh ids from `first_pseudo_user` on."""
    parts, next_id = [], first_pseudo_user
    for _, rows in train.groupby(Columns.User, sort=False):
        for age, (start, stop) in enumerate(chunk_ranges(len(rows), chunk=chunk)):
            part = rows.iloc[start:stop].assign(real_user=rows[Columns.User].iloc[0])
            if age:
                part[Columns.User], next_id = next_id, next_id + 1
            parts.append(part)
    return pd.concat(parts, ignore_index=True)


def fit_coverage(fitted: Dataset, chunks: pd.DataFrame, train: pd.DataFrame) -> dict:
    """What reached the fit, read back from RecTools' own training dataset (after its filtering): its rows, the
    distinct training events they hold, and the training movies among its items; beside the training split's."""
    rows = fitted.interactions.df
    rows = pd.DataFrame({
        Columns.User: fitted.user_id_map.convert_to_external(rows[Columns.User].to_numpy()),
        Columns.Item: fitted.item_id_map.convert_to_external(rows[Columns.Item].to_numpy()),
        Columns.Datetime: rows[Columns.Datetime].to_numpy(),
    })
    reached = rows.merge(chunks, on=[Columns.User, Columns.Item, Columns.Datetime], how="inner")
    fitted_items = set(rows[Columns.Item].tolist())
    training_movies = train[Columns.Item].unique()
    return {
        "training_events": int(len(train)),
        "training_events_in_fit": int(len(reached[["real_user", "position"]].drop_duplicates())),
        "training_movies": int(len(training_movies)),
        "training_movies_in_fit": int(sum(m in fitted_items for m in training_movies.tolist())),
        "fit_rows": int(len(rows)),
        "pseudo_users": int(chunks[Columns.User].nunique() - train[Columns.User].nunique()),
    }


def targets_at(sequences: pd.DataFrame, column: str) -> np.ndarray:
    """Each row's movie at the position named by `column`."""
    return np.array([m[p] for m, p in zip(sequences["movie_index"], sequences[column], strict=True)], np.int64)


def item_features(dataset: Path, items: np.ndarray) -> tuple[pd.DataFrame, list[str]]:
    """Long (id, feature, value) table over our cat_* columns and bag_* lists, tokens from feature_spec.json.
    Padding (0) and out-of-vocabulary (1) indices carry no identity and are left out."""
    spec_path = dataset / "feature_spec.json"
    if not spec_path.is_file():
        raise InputError(f"{spec_path}: missing; prepare the dataset with prepare_dataset.py first.")
    spec = json.loads(spec_path.read_text())
    vocabs = {f"cat_{k}": v["vocab"] for k, v in spec.get("categorical_features", {}).items()}
    vocabs |= {f"bag_{k}": v["vocab"] for k, v in spec.get("multi_valued_features", {}).items()}
    if not vocabs:
        raise InputError(f"{spec_path}: no categorical or multi-valued features; use --item-features none.")
    movies = read_table(dataset / "movies" / "train-00000-of-00001.parquet", ["movie_index", *vocabs])
    movies = movies[movies["movie_index"].isin(items)]
    parts = []
    for column, vocab in vocabs.items():
        values = movies[["movie_index", column]]
        if column.startswith("bag_"):
            values = values.explode(column, ignore_index=True).dropna()
        index = values[column].to_numpy().astype(np.int64)
        keep = (index >= 2) & (index < len(vocab))
        tokens = np.asarray(vocab, dtype=object)[index[keep]]
        parts.append(pd.DataFrame({"id": values["movie_index"].to_numpy()[keep], "feature": column, "value": tokens}))
    features = pd.concat(parts, ignore_index=True).drop_duplicates()
    return features, sorted(features["feature"].unique())


# ----- the validation callback -----


class ValidationRanking(Callback):
    """NDCG@10 of each user's validation event, ranked like the test event (whole known catalog, the user's whole
    training history excluded, not just the model's window), logged as `val_ndcg@10` for EarlyStopping; keeps the
    best epoch's weights in memory (no checkpoint files). Users whose target the model cannot score count as 0."""

    def __init__(self, *, histories: dict[int, np.ndarray], targets: dict[int, int]) -> None:
        self.histories = histories
        self.targets = targets
        self.best_ndcg = -1.0
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.curve: list[float] = []
        self.curve_cpu: list[float] = []

    def on_fit_start(self, trainer: Trainer, pl_module) -> None:
        """RecTools' validation loader yields users in the order SequenceDataset.from_interactions groups them
        (first appearance after a stable sort by datetime); rebuild that order to know each row's full history."""
        self.cpu_at_start = cpu_seconds()
        prep = pl_module.data_preparator
        order = prep.val_interactions.sort_values(Columns.Datetime, kind="stable")[Columns.User].unique()
        users = prep.train_dataset.user_id_map.convert_to_external(order)
        self.row_targets = prep.item_id_map.convert_to_internal([self.targets[u] for u in users])
        self.row_seen = [prep.item_id_map.convert_to_internal(self.histories[u], strict=False) for u in users]
        self.extra_tokens = prep.n_item_extra_tokens

    def on_validation_epoch_start(self, trainer: Trainer, pl_module) -> None:
        self.ranks: list[int] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        target = batch["y"][:, -1]
        start = len(self.ranks)
        if not np.array_equal(target.cpu().numpy(), self.row_targets[start : start + len(target)]):
            raise RuntimeError("validation batch order differs from the order rebuilt in on_fit_start")
        scores = outputs["logits"].detach().reshape(len(target), -1).clone()
        scores[:, : self.extra_tokens] = -math.inf
        for row, seen in enumerate(self.row_seen[start : start + len(target)]):
            scores[row, seen] = -math.inf
        target_scores = scores.gather(1, target[:, None])
        self.ranks.extend((1 + (scores > target_scores).sum(1)).tolist())

    def on_validation_epoch_end(self, trainer: Trainer, pl_module) -> None:
        ndcg = float(ndcg_at(np.asarray(self.ranks), 10).sum() / len(self.targets))
        pl_module.log(VAL_METRIC, ndcg, on_epoch=True)
        self.curve.append(round(ndcg, 6))
        self.curve_cpu.append(round(cpu_seconds() - self.cpu_at_start, 2))
        print(f"epoch {trainer.current_epoch + 1}: {VAL_METRIC} {ndcg:.4f} ({cpu_seconds():.0f} CPU-s)", file=sys.stderr,
              flush=True)
        if ndcg > self.best_ndcg:
            self.best_ndcg, self.best_epoch = ndcg, trainer.current_epoch + 1
            self.best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


# ----- resumable fit: the state after each epoch -----


def tensors_and_rest(tree: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into flat tensors (safetensors) and the JSON rest, keyed by dotted paths."""
    tensors, rest = {}, {}
    for index, values in tree["state"].items():
        for name, value in values.items():
            key = f"{index}.{name}"
            (tensors if isinstance(value, torch.Tensor) else rest)[key] = value
    return plain(tensors), {"scalars": rest, "param_groups": tree["param_groups"]}


def optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *rest["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def plain(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Own, contiguous copies: safetensors refuses tensors that share memory (tied embeddings)."""
    return {key: value.detach().clone().contiguous() for key, value in tensors.items()}


class EpochState(Checkpoint):
    """Writes the fit's state after every epoch into STATE_DIR/epoch-NNNN (built under a temporary name, then
    renamed: a folder with its final name is complete) and, on a restart, puts the newest one back before the first
    epoch. A Checkpoint, so Lightning calls it after EarlyStopping has counted the epoch."""

    def __init__(self, directory: Path, *, settings: dict) -> None:
        self.directory = directory
        self.settings = settings
        for unfinished in directory.glob(".epoch-*.tmp"):  # a run killed while writing one
            shutil.rmtree(unfinished)
        self.saved = self.newest()
        info = json.loads((self.saved / "state.json").read_text()) if self.saved else {}
        if info and info["settings"] != settings:
            print(f"{self.saved} was made with other settings: starting over", file=sys.stderr, flush=True)
            shutil.rmtree(self.saved)
            self.saved, info = None, {}
        self.info = info
        self.cpu_before = info.get("train_cpu_seconds", 0.0)
        self.wall_before = info.get("train_wall_seconds", 0.0)
        self.resumed_after = [*info.get("resumed_after", []), info["epoch"]] if info else []
        self.restored = False

    def newest(self) -> Path | None:
        done = sorted(self.directory.glob("epoch-[0-9][0-9][0-9][0-9]"))
        return done[-1] if done else None

    def start(self) -> None:
        """Called right before model.fit: the zero points of this piece's CPU and wall seconds."""
        self.cpu0, self.wall0 = cpu_seconds(), time.perf_counter()

    def train_seconds(self) -> tuple[float, float]:
        return self.cpu_before + cpu_seconds() - self.cpu0, self.wall_before + time.perf_counter() - self.wall0

    def on_train_start(self, trainer: Trainer, pl_module) -> None:
        """The counters: the loop starts at the epoch after the saved one, early stopping and the validation curve
        go on from where they were."""
        if self.saved is None:
            return
        info, validation = self.info, validation_callback(trainer)
        progress = trainer.fit_loop.epoch_progress
        for counter in (progress.current, progress.total):
            counter.ready = counter.started = counter.processed = counter.completed = info["epoch"]
        early_stopping(trainer).load_state_dict(
            {**info["early_stopping"], "best_score": torch.tensor(info["early_stopping"]["best_score"])})
        validation.curve, validation.curve_cpu = info["curve"], info["curve_cpu"]
        validation.best_ndcg, validation.best_epoch = info["best_ndcg"], info["best_epoch"]
        validation.best_state = load_file(self.saved / "best.safetensors")
        validation.cpu_at_start = cpu_seconds() - info["validation_cpu_seconds"]

    def on_train_epoch_start(self, trainer: Trainer, pl_module) -> None:
        """Weights, Adam moments and RNG states, here rather than in on_train_start: RecTools' own on_train_start
        runs after the callbacks' and initialises the weights (drawing from the RNG), and the batch order of this
        epoch is drawn after this hook."""
        if self.saved is None or self.restored:
            return
        self.restored = True
        info = self.info
        pl_module.load_state_dict(load_file(self.saved / "model.safetensors"))
        trainer.optimizers[0].load_state_dict(optimizer_state(load_file(self.saved / "optimizer.safetensors"),
                                                              info["optimizer"]))
        torch.set_rng_state(load_file(self.saved / "rng.safetensors")["torch"])
        kind, keys, position, has_gauss, gauss = info["numpy_rng"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
        version, internal, gauss_next = info["python_rng"]
        random.setstate((version, tuple(internal), gauss_next))
        print(f"resumed after epoch {info['epoch']} from {self.saved}", file=sys.stderr, flush=True)

    def on_train_epoch_end(self, trainer: Trainer, pl_module) -> None:
        epoch, validation, stop = trainer.current_epoch + 1, validation_callback(trainer), early_stopping(trainer)
        target = self.directory / f"epoch-{epoch:04d}"
        building = self.directory / f".epoch-{epoch:04d}.{os.getpid()}.tmp"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        tensors, rest = tensors_and_rest(trainer.optimizers[0].state_dict())
        save_file(plain(pl_module.state_dict()), building / "model.safetensors")
        save_file(tensors, building / "optimizer.safetensors")
        save_file(plain(validation.best_state), building / "best.safetensors")
        save_file({"torch": torch.get_rng_state()}, building / "rng.safetensors")
        cpu, wall = self.train_seconds()
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        early = stop.state_dict()
        info = {
            "settings": self.settings, "epoch": epoch, "optimizer": rest, "curve": validation.curve, "curve_cpu": validation.curve_cpu,
            "best_ndcg": validation.best_ndcg, "best_epoch": validation.best_epoch,
            "validation_cpu_seconds": cpu_seconds() - validation.cpu_at_start,
            "early_stopping": {**early, "best_score": float(early["best_score"])},
            "numpy_rng": [kind, keys.tolist(), position, has_gauss, gauss],
            "python_rng": [version, list(internal), gauss_next],
            "train_cpu_seconds": cpu, "train_wall_seconds": wall, "resumed_after": self.resumed_after,
        }
        (building / "state.json").write_text(json.dumps(info))
        os.replace(building, target)
        for older in self.directory.glob("epoch-[0-9][0-9][0-9][0-9]"):
            if older != target:
                shutil.rmtree(older)


def validation_callback(trainer: Trainer) -> ValidationRanking:
    return next(c for c in trainer.callbacks if isinstance(c, ValidationRanking))


def early_stopping(trainer: Trainer) -> EarlyStopping:
    return next(c for c in trainer.callbacks if isinstance(c, EarlyStopping))


# ----- model, scoring, metrics -----


def ndcg_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-example NDCG@k with one relevant item: 1/log2(rank+1) for 1 <= rank <= k, else 0 (rank -1 = missed)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where((ranks >= 1) & (ranks <= k), 1.0 / np.log2(np.maximum(ranks, 1) + 1), 0.0)


def recall_at(ranks: np.ndarray, k: int) -> float:
    return float(np.mean((ranks >= 1) & (ranks <= k)))


def summary(ranks: list[int]) -> dict:
    ranks = np.asarray(ranks)
    return {"ndcg@10": float(ndcg_at(ranks, 10).mean()), "recall@10": recall_at(ranks, 10),
            "ndcg@20": float(ndcg_at(ranks, 20).mean()), "recall@20": recall_at(ranks, 20),
            "recall@100": recall_at(ranks, 100), "examples": len(ranks)}


def build_model(args: argparse.Namespace, *, val_users: list[int], callback: ValidationRanking,
                state: EpochState | None):
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    deterministic = True if args.device == "cpu" else "warn"  # some CUDA kernels (embedding bags) have no such mode

    def make_trainer() -> Trainer:
        stop = EarlyStopping(monitor=VAL_METRIC, mode="max", patience=args.patience)
        return Trainer(max_epochs=args.max_epochs, min_epochs=1, deterministic=deterministic, accelerator=accelerator,
                       devices=1, logger=False, enable_checkpointing=state is not None, enable_progress_bar=False,
                       enable_model_summary=False, num_sanity_val_steps=0,
                       callbacks=[callback, stop, *([state] if state else [])])

    blocks = (IdEmbeddingsItemNet,) if args.item_features == "none" else (IdEmbeddingsItemNet, CatFeaturesItemNet)
    common = dict(
        n_blocks=2, n_heads=args.n_heads, n_factors=args.n_factors, dropout_rate=args.dropout,
        session_max_len=args.session_max_len, loss="softmax", lr=args.lr, batch_size=args.batch_size,
        deterministic=True, item_net_block_types=blocks, recommend_torch_device=args.device,
        get_val_mask_func=leave_one_out_mask, get_val_mask_func_kwargs={"val_users": val_users},
        get_trainer_func=make_trainer,
    )
    if args.model == "bert4rec":
        return BERT4RecModel(mask_prob=args.mask_prob, **common)
    return SASRecModel(**common)


def rank_targets(model, frame: pd.DataFrame, users: np.ndarray, targets: np.ndarray):
    """1-based rank of each user's target in the model's top TOP_K with the user's history in `frame` excluded
    (-1 beyond TOP_K or unscorable), the top TOP_STORED movies per user, and RecTools' recommendation table."""
    reco = model.recommend(users=users, dataset=Dataset.construct(frame[list(Columns.Interactions)]), k=TOP_K,
                           filter_viewed=True, on_unsupported_targets="warn")
    lists = reco.sort_values([Columns.User, Columns.Rank]).groupby(Columns.User)[Columns.Item].agg(list)
    ranks, tops = [], []
    for user, target in zip(users, targets, strict=True):
        items = lists.get(user, [])
        ranks.append(items.index(target) + 1 if target in items else -1)
        tops.append([int(i) for i in items[:TOP_STORED]])
    return ranks, tops, reco


def rectools_ndcg(reco: pd.DataFrame, users: np.ndarray, targets: np.ndarray) -> dict:
    """The same test events scored by RecTools' own metrics (a cross-check of our rank bookkeeping)."""
    truth = pd.DataFrame({Columns.User: users, Columns.Item: targets})
    metrics = {"ndcg@10": NDCG(k=10, divide_by_achievable=True), "recall@10": Recall(k=10)}
    values = calc_metrics(metrics, reco=reco, interactions=truth)
    return {k: float(v) for k, v in values.items()}


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload) + "\n")
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> dict:
    sequences, skipped = read_sequences(args.dataset)
    frame = events(sequences)
    frame = frame[(frame["test_position"] < 0) | (frame["position"] < frame["test_position"])]
    is_valid = frame["position"].to_numpy() == frame["valid_position"].to_numpy()
    train = frame[~is_valid]

    evaluated = sequences[sequences["loo_test_position"] >= 0]
    users = evaluated["user_index"].to_numpy().astype(np.int64)
    valid_targets, test_targets = targets_at(evaluated, "loo_valid_position"), targets_at(evaluated, "loo_test_position")
    histories = {int(u): g.to_numpy() for u, g in train.groupby(Columns.User)[Columns.Item]}
    callback = ValidationRanking(histories=histories, targets=dict(zip(users.tolist(), valid_targets.tolist(), strict=True)))

    chunk = args.session_max_len + (1 if args.model == "sasrec" else 0)  # RecTools' train_session_max_len_addition
    chunks = pseudo_user_chunks(train, chunk=chunk, first_pseudo_user=int(frame[Columns.User].max()) + 1)
    fit_frame = pd.concat([chunks, frame[is_valid]], ignore_index=True)
    features, feature_names = None, []
    if args.item_features == "cat":
        features, feature_names = item_features(args.dataset, fit_frame[Columns.Item].unique())
    fit_dataset = Dataset.construct(fit_frame[list(Columns.Interactions)], item_features_df=features,
                                    cat_item_features=feature_names, make_dense_item_features=False)

    seed_everything(args.seed, workers=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("output", "state_dir")}
    state = EpochState(args.state_dir, settings=settings) if args.state_dir else None
    model = build_model(args, val_users=users.tolist(), callback=callback, state=state)
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    if state:
        state.start()
    model.fit(fit_dataset)
    train_cpu, train_wall = state.train_seconds() if state else (cpu_seconds() - cpu0, time.perf_counter() - wall0)
    fitted = next(c for c in model.fit_trainer.callbacks if isinstance(c, ValidationRanking))
    model.lightning_model.load_state_dict(fitted.best_state)

    known = set(model.data_preparator.get_known_item_ids().tolist())
    reached = fit_coverage(model.data_preparator.train_dataset, chunks, train)
    valid_ranks, _, _ = rank_targets(model, train, users, valid_targets)
    test_ranks, test_top, reco = rank_targets(model, frame, users, test_targets)
    return {
        "model": args.model if args.item_features == "none" else f"{args.model}+cat",
        "split": args.split,
        "seed": args.seed,
        "settings": {
            "n_factors": args.n_factors, "n_heads": args.n_heads, "n_blocks": 2, "session_max_len":
            args.session_max_len, "loss": "softmax", "lr": args.lr, "batch_size": args.batch_size,
            "dropout": args.dropout, "mask_prob": args.mask_prob if args.model == "bert4rec" else None,
            "max_epochs": args.max_epochs, "patience": args.patience, "item_features": args.item_features,
            "feature_columns": feature_names, "threads": args.threads, "device": args.device, "top_k": TOP_K,
        },
        "best_epoch": fitted.best_epoch,
        "epochs_run": len(fitted.curve),
        "validation_curve_ndcg@10": fitted.curve,
        "validation_curve_cpu_seconds": fitted.curve_cpu,
        "validation": {**summary(valid_ranks), "callback_ndcg@10": fitted.best_ndcg},
        "test": summary(test_ranks),
        "test_rectools_metrics": rectools_ndcg(reco, users, test_targets),
        "test_examples": [[int(u), int(t)] for u, t in zip(users, test_targets, strict=True)],
        "test_target_ranks": test_ranks,
        "test_top20": test_top,
        "validation_target_ranks": valid_ranks,
        "rank_base": 1,
        "data": {
            "rows_skipped": skipped, **reached, "catalog_movies_known_to_peer": len(known),
            "test_targets_unknown_to_peer": int(sum(t not in known for t in test_targets.tolist())),
            "validation_targets_unknown_to_peer": int(sum(t not in known for t in valid_targets.tolist())),
        },
        "train_cpu_seconds": round(train_cpu, 2),
        "train_wall_seconds": round(train_wall, 2),
        "resumed_after_epochs": state.resumed_after if state else [],
        "versions": {"rectools": rectools.__version__, "torch": torch.__version__,
                     "lightning": pytorch_lightning.__version__, "numpy": np.__version__},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="prepared dataset folder")
    parser.add_argument("--model", choices=("sasrec", "bert4rec"), required=True)
    parser.add_argument("--split", choices=("leave_one_out", "cold_items"), default="leave_one_out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-factors", type=int, default=64)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--session-max-len", type=int, default=200)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=20,
                        help="epochs without a better validation NDCG@10 (10 stops id-only SASRec on its early "
                        "popularity plateau on the sample)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--mask-prob", type=float, default=0.15, help="BERT4Rec only")
    parser.add_argument("--item-features", choices=("none", "cat"), default="none")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: for sweeping settings on a GPU machine; CPU-seconds are measured on cpu")
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write (atomically)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="resumable fit: the state after each epoch goes here, a restart continues from it; "
                        "removed once --output is written")
    args = parser.parse_args(argv)
    if args.split == "cold_items":
        parser.error("cold_items is not run for RecTools peers: its transformers score only movies seen in "
                     "training (item ids and item features of unseen movies are dropped at fit), so every cold "
                     "movie is unscorable and the peer is chance by construction; use --split leave_one_out.")
    if args.item_features == "cat" and args.model != "sasrec":
        parser.error("--item-features cat is run with --model sasrec only.")
    if args.n_factors % args.n_heads:
        parser.error(f"--n-factors {args.n_factors} must be divisible by --n-heads {args.n_heads}.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        result = run(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_json(args.output, result)
    if args.state_dir:
        shutil.rmtree(args.state_dir, ignore_errors=True)
    print(f"{result['model']} seed {args.seed}: validation NDCG@10 {result['validation']['ndcg@10']:.4f}, "
          f"test NDCG@10 {result['test']['ndcg@10']:.4f} (best epoch {result['best_epoch']} of "
          f"{result['epochs_run']}, {result['train_cpu_seconds']:.0f} CPU-s) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
