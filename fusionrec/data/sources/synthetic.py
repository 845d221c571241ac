"""Source `synthetic`: a seeded generator that writes a small Kaggle-schema dataset (movies_metadata.csv,
keywords.csv, credits.csv, links_small.csv, ratings_small.csv) with learnable structure; `prepare()` then reads it
with the tmdb source, so the demo exercises the real parsing path.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SYNTHETIC_GENRES: dict[str, tuple[list[str], list[str]]] = {
    # genre: (overview words, keywords)
    "Action": (["explosion", "chase", "mercenary", "commando", "showdown", "bullet", "convoy", "ambush"],
               ["martial arts", "car chase", "shootout", "bodyguard", "special forces", "one man army"]),
    "Adventure": (["expedition", "treasure", "jungle", "voyage", "island", "explorer", "ruins", "compass"],
                  ["treasure hunt", "lost city", "shipwreck", "sailing", "desert", "map"]),
    "Animation": (["puppy", "toy", "dragon", "forest", "balloon", "kingdom", "robot", "rainbow"],
                  ["talking animals", "anthropomorphism", "musical", "friendship", "toy comes to life", "fairy"]),
    "Comedy": (["wedding", "roommate", "prank", "neighbor", "road trip", "blind date", "reunion", "mishap"],
               ["slapstick", "buddy", "parody", "stand-up", "misunderstanding", "family vacation"]),
    "Crime": (["detective", "gangster", "heist", "informant", "syndicate", "precinct", "smuggler", "alibi"],
              ["mafia", "bank robbery", "undercover cop", "drug cartel", "corruption", "con artist"]),
    "Drama": (["family", "grief", "illness", "factory", "letter", "inheritance", "trial", "farm"],
              ["based on novel", "coming of age", "father son relationship", "terminal illness", "poverty",
               "small town"]),
    "Fantasy": (["wizard", "sorcery", "prophecy", "elf", "amulet", "enchanted", "castle", "curse"],
                ["magic", "sword and sorcery", "mythical creature", "quest", "dark lord", "witch"]),
    "Horror": (["ghost", "cabin", "possession", "ritual", "asylum", "creature", "basement", "scream"],
               ["haunted house", "slasher", "demon", "zombie", "supernatural", "found footage"]),
    "Romance": (["love", "wedding", "letter", "summer", "heartbreak", "kiss", "proposal", "dance"],
                ["love triangle", "first love", "long distance", "romantic comedy", "soulmates", "marriage"]),
    "Science Fiction": (["spaceship", "android", "galaxy", "clone", "colony", "laser", "wormhole", "mutant"],
                        ["space travel", "artificial intelligence", "time travel", "dystopia", "alien invasion",
                         "cyberpunk"]),
    "Thriller": (["conspiracy", "hostage", "stalker", "witness", "hacker", "blackmail", "pursuit", "spy"],
                 ["cat and mouse", "psychological thriller", "kidnapping", "assassin", "double cross",
                  "serial killer"]),
    "Western": (["sheriff", "outlaw", "saloon", "frontier", "ranch", "gunslinger", "railroad", "stagecoach"],
                ["cowboy", "bounty hunter", "wild west", "duel", "gold rush", "native american"]),
}  # fmt: skip
SYNTHETIC_ERAS: dict[int, list[str]] = {
    1960: ["cold war", "space race", "rock and roll"],
    1970: ["disco", "vietnam veteran", "muscle car"],
    1980: ["arcade", "vhs", "synthesizer"],
    1990: ["grunge", "dial-up", "pager"],
    2000: ["reality tv", "flip phone", "blog"],
    2010: ["smartphone", "social media", "streaming"],
}
_FIRST = ("Ava Ben Cara Dev Eli Fay Gus Hana Ivo Jia Kai Lena Milo Nia Otto Pia Quin Rosa Sam Tara Uma Vic Wes Xia "
          "Yuri Zoe Ada Bo Cy Di").split()  # fmt: skip
_LAST = ("Stone Reed Vale Cross Moore Lane Hart Frost Wolfe Park Quinn Shaw Brook Fox Gray Hale Knox Lowe Nash Pike "
         "Rowe Snow Tate Voss Webb Yang Zane Abel Bell Cole").split()  # fmt: skip
_COMPANIES = ("Northlight Pictures|Redwood Studios|Silver Arc Films|Blue Harbor Entertainment|Ironclad Media|"
              "Lantern House|Meridian Films|Copperline|Starfall Studios|Old Mill Pictures|Kestrel Films|"
              "Grand Vista|Harbor Lights|Nimbus Animation|Pale Horse Pictures|Quarry Films").split("|")  # fmt: skip
_COUNTRIES = [("US", "United States of America"), ("GB", "United Kingdom"), ("FR", "France"), ("DE", "Germany"),
              ("JP", "Japan"), ("CA", "Canada"), ("IT", "Italy"), ("ES", "Spain")]  # fmt: skip
_LANGUAGES = [("en", "English"), ("fr", "Français"), ("de", "Deutsch"), ("ja", "日本語"), ("it", "Italiano"),
              ("es", "Español")]  # fmt: skip
_OVERVIEW_TEMPLATES = (
    "In the {era}, a {w0} and a {w1} are drawn into a story of {w2}.",
    "When a {w0} meets a {w1}, everything turns on the {w2}.",
    "A tale of {w0}, {w1} and {w2}, set against the {era}.",
    "Nobody expected the {w0} to change the {w1}, least of all the {w2}.",
)


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]], crlf: bool = False) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n" if crlf else "\n")
        writer.writerow(header)
        writer.writerows(rows)


def generate_synthetic(
    out_dir: Path,
    seed: int = 0,
    num_users: int = 300,
    num_movies: int = 600,
    ratings_per_user: float = 83.0,
) -> list[Path]:
    """Write a seeded Kaggle-schema dataset (movies_metadata.csv, keywords.csv, credits.csv, links_small.csv,
    ratings_small.csv) with learnable structure: users have tastes over genres, keywords and eras; movies have
    genres/keywords/era and overview words tied to them; choices follow taste plus popularity and noise; each
    user's timestamps increase (same-genre movies tend to come in runs; a few equal timestamps test the tie rule).
    A handful of realistic quirks: zero budgets, missing taglines/overviews, rated movies without metadata,
    a duplicated metadata row and metadata rows without keywords."""
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    genre_names = list(SYNTHETIC_GENRES)
    n_genres = len(genre_names)
    eras = sorted(SYNTHETIC_ERAS)
    n_eras = len(eras)
    people = [f"{f} {last}" for f in _FIRST for last in _LAST]
    rng.shuffle(people)
    actors_by_genre = [people[i * 12 : (i + 1) * 12] for i in range(n_genres)]
    directors = people[n_genres * 12 : n_genres * 12 + 2 * n_genres]  # two per genre
    composers = people[n_genres * 14 : n_genres * 14 + 8]
    genre_weight = rng.dirichlet(np.full(n_genres, 4.0))

    # movies
    primary = rng.choice(n_genres, size=num_movies, p=genre_weight)
    movie_genres = np.zeros((num_movies, n_genres), dtype=np.float64)
    movie_genres[np.arange(num_movies), primary] = 1.0
    extra = rng.random((num_movies, n_genres)) < 0.12
    movie_genres = np.maximum(movie_genres, extra * (rng.random(num_movies) < 0.6)[:, None])
    era_idx = rng.choice(
        n_eras, size=num_movies, p=np.linspace(0.6, 1.4, n_eras) / np.linspace(0.6, 1.4, n_eras).sum()
    )
    quality = rng.normal(0.0, 0.6, size=num_movies)
    log_pop = rng.normal(1.2, 0.9, size=num_movies) + 0.4 * quality
    movie_kw: list[list[str]] = []
    for m in range(num_movies):
        gs = np.flatnonzero(movie_genres[m])
        pool = [kw for g in gs for kw in SYNTHETIC_GENRES[genre_names[g]][1]]
        k = int(rng.integers(3, 7))
        kws = list(rng.choice(pool, size=min(k, len(pool)), replace=False))
        if rng.random() < 0.5:
            kws.append(str(rng.choice(SYNTHETIC_ERAS[eras[era_idx[m]]])))
        movie_kw.append([str(x) for x in kws])
    kw_vocab = sorted(
        {kw for _, kws in SYNTHETIC_GENRES.values() for kw in kws}
        | {kw for kws in SYNTHETIC_ERAS.values() for kw in kws}
    )
    kw_id = {kw: 1000 + i for i, kw in enumerate(kw_vocab)}
    movie_ids = np.arange(1, num_movies + 1) * 2 - 1  # sparse MovieLens-style ids
    tmdb_ids = 10_000 + np.arange(num_movies) * 7
    no_metadata = set(range(num_movies - 5, num_movies))  # rated but absent from movies_metadata.csv
    no_keywords = set(np.flatnonzero(rng.random(num_movies) < 0.03).tolist())

    meta_rows, kw_rows, credit_rows, link_rows = [], [], [], []
    for m in range(num_movies):
        gs = [int(g) for g in np.flatnonzero(movie_genres[m])]
        g0 = int(primary[m])
        year = int(eras[era_idx[m]] + rng.integers(0, 10))
        words = [w for g in gs for w in SYNTHETIC_GENRES[genre_names[g]][0]]
        picks = [str(w) for w in rng.choice(words, size=6, replace=len(words) < 6)]
        era_word = (
            f"{eras[era_idx[m]]}s, a time of {SYNTHETIC_ERAS[eras[era_idx[m]]][int(rng.integers(0, 3))]}"
        )
        t1, t2 = rng.choice(len(_OVERVIEW_TEMPLATES), size=2, replace=False)
        overview = " ".join(
            _OVERVIEW_TEMPLATES[t].format(
                era=era_word, w0=picks[3 * i], w1=picks[3 * i + 1], w2=picks[3 * i + 2]
            )
            for i, t in enumerate((t1, t2))
        )
        overview = overview[0].upper() + overview[1:]
        if rng.random() < 0.02:
            overview = ""
        title_words = SYNTHETIC_GENRES[genre_names[g0]][0]
        title = f"The {str(rng.choice(title_words)).title()} {str(rng.choice(title_words)).title()}"
        if rng.random() < 0.3:
            title += f" {int(rng.integers(2, 4))}"
        pop = float(np.exp(log_pop[m]))
        vote_count = int(rng.poisson(pop * 60))
        vote_avg = (
            round(float(np.clip(6.2 + 1.4 * quality[m] + rng.normal(0, 0.3), 1, 10)), 1)
            if vote_count
            else 0.0
        )
        budget = 0 if rng.random() < 0.25 else int(np.exp(rng.normal(16.5, 1.0)))
        revenue = (
            0
            if (budget == 0 or rng.random() < 0.2)
            else int(budget * np.exp(rng.normal(0.5 + quality[m], 0.8)))
        )
        companies = rng.choice(len(_COMPANIES), size=int(rng.integers(1, 3)), replace=False)
        company_list = [{"name": _COMPANIES[(int(c) + g0) % len(_COMPANIES)], "id": 100 + (int(c) + g0) % 16}
                        for c in companies]  # fmt: skip
        country = _COUNTRIES[0] if rng.random() < 0.7 else _COUNTRIES[int(rng.integers(1, len(_COUNTRIES)))]
        lang = (
            _LANGUAGES[0]
            if country[0] in ("US", "GB", "CA")
            else _LANGUAGES[int(rng.integers(0, len(_LANGUAGES)))]
        )
        collection = (
            repr({"id": 5000 + g0, "name": f"The {genre_names[g0]} Saga Collection", "poster_path": None,
                  "backdrop_path": None})
            if rng.random() < 0.08 else ""
        )  # fmt: skip
        if m not in no_metadata:
            row = [
                "False", collection, budget,
                repr([{"id": 1 + g, "name": genre_names[g]} for g in gs]),
                "", int(tmdb_ids[m]), f"tt{9_000_000 + m:07d}", lang[0], title, overview,
                repr(round(pop, 6)), f"/p{m}.jpg", repr(company_list),
                repr([{"iso_3166_1": country[0], "name": country[1]}]),
                f"{year}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}",
                revenue, f"{float(rng.integers(80, 160))}",
                repr([{"iso_639_1": lang[0], "name": lang[1]}]),
                "Released" if rng.random() < 0.98 else "Rumored",
                "" if rng.random() < 0.15 else f"{picks[0].title()} meets {picks[1]}.",
                title, "False", vote_avg, vote_count,
            ]  # fmt: skip
            meta_rows.append(row)
            if m == 7:
                meta_rows.append(list(row))  # a duplicated id, as in the real file
        if m not in no_keywords:
            kw_rows.append([int(tmdb_ids[m]), repr([{"id": kw_id[k], "name": k} for k in movie_kw[m]])])
        pool = actors_by_genre[g0] + [a for g in gs if g != g0 for a in actors_by_genre[g][:4]]
        cast_pick = rng.choice(len(pool), size=min(len(pool), int(rng.integers(4, 9))), replace=False)
        cast = [{"cast_id": i, "character": f"Role {i}", "credit_id": f"c{m}x{i}", "gender": int(rng.integers(0, 3)),
                 "id": 20_000 + people.index(pool[int(a)]), "name": pool[int(a)], "order": i,
                 "profile_path": None} for i, a in enumerate(cast_pick)]  # fmt: skip
        director = directors[2 * g0 + int(rng.integers(0, 2))]
        crew = [
            {"credit_id": f"d{m}", "department": "Directing", "gender": 0, "id": 30_000 + people.index(director),
             "job": "Director", "name": director, "profile_path": None},
            {"credit_id": f"s{m}", "department": "Sound", "gender": 0, "id": 31_000 + m % 8,
             "job": "Original Music Composer", "name": composers[(g0 + m) % 8], "profile_path": None},
            {"credit_id": f"x{m}", "department": "Crew", "gender": 0, "id": 32_000 + m,
             "job": "Catering", "name": f"Caterer {m}", "profile_path": None},
        ]  # fmt: skip
        if m not in no_metadata:
            credit_rows.append([repr(cast), repr(crew), int(tmdb_ids[m])])
        link_rows.append([int(movie_ids[m]), f"{9_000_000 + m:07d}", int(tmdb_ids[m])])

    # users and ratings
    taste = rng.dirichlet(np.full(n_genres, 0.35), size=num_users)
    user_era = rng.integers(0, n_eras, size=num_users)
    kw_index = {kw: i for i, kw in enumerate(kw_vocab)}
    movie_kw_mat = np.zeros((num_movies, len(kw_vocab)))
    for m, kws in enumerate(movie_kw):
        movie_kw_mat[m, [kw_index[k] for k in kws]] = 1.0
    kw_taste = np.zeros((num_users, len(kw_vocab)))
    for u in range(num_users):
        top = np.argsort(-taste[u])[:2]
        pool = [kw_index[k] for g in top for k in SYNTHETIC_GENRES[genre_names[g]][1]]
        kw_taste[u, rng.choice(pool, size=3, replace=False)] = 1.0
    genre_share = movie_genres / movie_genres.sum(axis=1, keepdims=True)
    affinity = (
        10.0 * (taste @ genre_share.T)
        - 0.5 * ((user_era[:, None] - era_idx[None, :]) / 1.2) ** 2
        + 0.8 * (kw_taste @ movie_kw_mat.T)
    )
    popularity_term = 0.5 * (log_pop - log_pop.mean()) / log_pop.std()
    counts = np.clip(
        np.round(rng.lognormal(np.log(ratings_per_user) - 0.1, 0.45, size=num_users)), 12, num_movies // 2
    )
    ratings_rows: list[tuple[int, int, float, int]] = []
    for u in range(num_users):
        utility = affinity[u] + popularity_term + rng.gumbel(size=num_movies)
        chosen = np.argsort(-utility, kind="stable")[: int(counts[u])]
        aff = affinity[u, chosen]
        z = (aff - affinity[u].mean()) / (affinity[u].std() + 1e-9)
        raw = 3.2 + 0.6 * z + 0.6 * quality[chosen] + rng.normal(0, 0.6, size=chosen.size)
        stars = np.clip(np.round(raw * 2) / 2, 0.5, 5.0)
        # order: runs of the same primary genre (a user-specific genre order plus noise)
        genre_rank = rng.permutation(n_genres)
        order = np.argsort(genre_rank[primary[chosen]] + rng.uniform(0, 4.0, size=chosen.size), kind="stable")
        gaps = rng.exponential(3 * 86_400, size=chosen.size).astype(np.int64)
        gaps[rng.random(chosen.size) < 0.05] = 0
        ts = int(rng.integers(1_100_000_000, 1_400_000_000)) + np.cumsum(gaps)
        for pos, idx in enumerate(order):
            ratings_rows.append((u + 1, int(movie_ids[chosen[idx]]), float(stars[idx]), int(ts[pos])))
    ratings_rows.sort(key=lambda r: (r[0], r[1]))  # MovieLens files are ordered by user, then movie

    meta_header = [
        "adult", "belongs_to_collection", "budget", "genres", "homepage", "id", "imdb_id", "original_language",
        "original_title", "overview", "popularity", "poster_path", "production_companies", "production_countries",
        "release_date", "revenue", "runtime", "spoken_languages", "status", "tagline", "title", "video",
        "vote_average", "vote_count",
    ]  # fmt: skip
    paths = [out_dir / n for n in ("movies_metadata.csv", "keywords.csv", "credits.csv", "links_small.csv",
                                   "ratings_small.csv")]  # fmt: skip
    _write_csv(paths[0], meta_header, meta_rows)
    _write_csv(paths[1], ["id", "keywords"], kw_rows)
    _write_csv(paths[2], ["cast", "crew", "id"], credit_rows)
    _write_csv(paths[3], ["movieId", "imdbId", "tmdbId"], link_rows, crlf=True)
    _write_csv(
        paths[4], ["userId", "movieId", "rating", "timestamp"],
        ((u, m, f"{r:.1f}", t) for u, m, r, t in ratings_rows), crlf=True,
    )  # fmt: skip
    return paths
