"""How much of leave_one_out quality is "the next film of the franchise": trained fusion_full checkpoints scored as
they are (their own dot products: cosines, plus the match channel's bonus where they have one) and with a bonus b
for every candidate in the same TMDB collection as the user's last history movie, b chosen on validation. A probe of
what the model misses, not a model: the bonus lives outside the vectors.

    python bench/probe_franchise.py --dataset PREPARED --text-cache-dir DIR --checkpoints RUN/best [RUN2/best ...]

Prints, per checkpoint and bonus, validation and test NDCG@10 on all and on the untied targets (the test event not in
the same second as the validation event), then the targets that share the last movie's collection and how each
checkpoint ranks them. Writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from bench_quality import previous_timestamps  # noqa: E402
from quality_jobs import RANK_DEPTH, BenchData, ndcg_per_example, target_ranks  # noqa: E402

from fusionrec.cli import load_model  # noqa: E402
from fusionrec.evaluation import rank_examples  # noqa: E402
from fusionrec.retrieval import catalog_vectors  # noqa: E402

NO_COLLECTION = 1  # indices 0 and 1 of a categorical vocabulary: padding (none) and the rare values pooled


def same_collection_as_last(collections: np.ndarray, last_movies: np.ndarray) -> np.ndarray:
    """(examples, movies) True where a movie is in the collection of the example's last history movie."""
    last = collections[last_movies]
    return (collections[None, :] == last[:, None]) & (last[:, None] > NO_COLLECTION)


def ranks_with_bonus(scores: np.ndarray, same: np.ndarray, bonus: float, examples) -> np.ndarray:
    boosted = scores + bonus * same
    for row, seen in enumerate(examples.exclusions(slice(0, len(examples)))):
        boosted[row, seen] = -np.inf
    return np.asarray(target_ranks(np.argsort(-boosted, axis=1)[:, :RANK_DEPTH], examples.targets))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True, help="the folder prepare_dataset.py wrote")
    parser.add_argument("--text-cache-dir", type=Path, required=True, help="bench_quality.py's text cache")
    parser.add_argument("--checkpoints", type=Path, nargs="+", required=True, help="fusion_full leave_one_out best/")
    parser.add_argument("--bonuses", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0])
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = BenchData.load(args.dataset)
    collections = np.asarray(data.catalog.categorical["collection"])
    stages = {stage: data.examples("leave_one_out", stage) for stage in ("validation", "test")}
    untied = {stage: examples.target_timestamps != previous_timestamps(examples) for stage, examples in stages.items()}
    last = {stage: np.array([examples.history(i).movies[-1] for i in range(len(examples))])
            for stage, examples in stages.items()}  # fmt: skip
    franchise = same_collection_as_last(collections, last["test"])[np.arange(len(stages["test"])), stages["test"].targets]
    print(f"{(franchise & untied['test']).sum()} of {untied['test'].sum()} untied test targets (and "
          f"{(franchise & ~untied['test']).sum()} of {(~untied['test']).sum()} tied) are in the last movie's collection")
    print(f"{'checkpoint':40s} {'bonus':>6s} {'valid':>7s} {'untied':>7s} {'test':>7s} {'untied':>7s}")
    for path in args.checkpoints:
        model = load_model(str(path))
        data.attach_text(args.text_cache_dir, model.config.text_max_length)
        vectors = catalog_vectors(model, data.catalog)
        scores, same = {}, {}
        for stage, examples in stages.items():
            _, _, users = rank_examples(model, examples, vectors, k=10, return_user_vectors=True)
            scores[stage] = (users @ vectors.T).double().numpy()  # the model's own scores, match channel included
            same[stage] = same_collection_as_last(collections, last[stage])
        for bonus in args.bonuses:
            cells = []
            for stage, examples in stages.items():
                ndcg = ndcg_per_example(ranks_with_bonus(scores[stage], same[stage], bonus, examples))
                cells += [ndcg.mean(), ndcg[untied[stage]].mean()]
            print(f"{str(path)[-40:]:40s} {bonus:6.2f} " + " ".join(f"{value:7.4f}" for value in cells))
        plain = ranks_with_bonus(scores["test"], same["test"], 0.0, stages["test"])
        print(f"  ranks of the {franchise.sum()} franchise test targets as trained: {plain[franchise].tolist()}")


if __name__ == "__main__":
    main()
