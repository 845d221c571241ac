"""The MovieLens source: latest and 100K layouts, missing files."""

from __future__ import annotations

import math

import pytest
from prepared_files import read_movies, read_sequences

from fusionrec.data.prepare import prepare
from fusionrec.errors import PrepareError


def test_movielens_latest_layout(tmp_path):
    data = tmp_path / "ml-latest-small"
    data.mkdir()
    (data / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n1,6,4.0,964982224\n"
        "2,1,3.0,964982703\n2,3,2.5,964982703\n2,50,5.0,964982703\n"  # equal timestamps: file order kept
    )
    (data / "movies.csv").write_text(
        "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '3,"Grumpier Old Men (1995)",Comedy|Romance\n6,Heat (1995),Action|Crime|Thriller\n'
        '50,"Usual Suspects, The (1995)",(no genres listed)\n99,Unrated (2001),Drama\n'
    )
    (data / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n3,0113228,15602\n6,0113277,\n")
    (data / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n1,1,pixar,1\n2,1,Pixar,2\n1,1,fun,3\n2,6,heist,4\n"
    )
    summary = prepare("movielens", tmp_path / "out", data, min_counts={"keywords": 1})
    assert summary.counts["ratings_kept"] == 6 and summary.counts["users"] == 2 and summary.num_movies == 4
    movies = read_movies(tmp_path / "out").to_pandas().set_index("movie_id")
    assert movies.loc[1, "title"] == "Toy Story" and movies.loc[1, "year"] == 1995
    assert list(movies.loc[1, "genres"]) == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert list(movies.loc[50, "genres"]) == [] and movies.loc[50, "title"] == "Usual Suspects, The"
    assert movies.loc[1, "tmdb_id"] == 862 and movies.loc[1, "imdb_id"] == "tt0114709"
    vocab = summary.feature_spec["multi_valued_features"]["keywords"]["vocab"]
    assert [vocab[i] for i in movies.loc[1, "bag_keywords"]] == ["pixar", "fun"]  # tags by count, then text
    assert math.isnan(movies.loc[1, "numeric"][0]) and movies.loc[1, "numeric"][6] == 1995.0
    seqs = read_sequences(tmp_path / "out").to_pandas().set_index("user_id")
    index_of = {m: i for i, m in enumerate(movies.index)}
    assert list(seqs.loc[2, "movie_index"]) == [index_of[1], index_of[3], index_of[50]]
    assert "license: other" in (tmp_path / "out" / "README.md").read_text()


def test_movielens_100k_layout(tmp_path):
    data = tmp_path / "ml-100k"
    data.mkdir()
    (data / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t4\t881250940\n"
                                 "22\t377\t1\t878887116\n22\t242\tx\t878887116\n")  # fmt: skip
    flags_242 = "|".join(["0"] * 5 + ["1"] + ["0"] * 13)  # Comedy
    flags_302 = "|".join(["0"] * 6 + ["1"] + ["0"] * 9 + ["1", "0", "0"])  # Crime, Thriller
    (data / "u.item").write_bytes(
        (f"242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|{flags_242}\n"
         f"302|L.A. Confidential (1997)|01-Jan-1997||http://x|{flags_302}\n"
         f"377|Caf\xe9 Society (1995)|01-Jan-1995||http://x|{flags_242}\n").encode("latin-1")
    )  # fmt: skip
    (data / "u.user").write_text("196|49|M|writer|55105\n")
    summary = prepare("movielens", tmp_path / "out", data)
    assert summary.counts["ratings_read"] == 5 and summary.skipped == {"ratings/bad_rating": 1}
    assert summary.counts["users"] == 3 and summary.num_movies == 3
    movies = read_movies(tmp_path / "out").to_pandas().set_index("movie_id")
    assert movies.loc[242, "title"] == "Kolya" and movies.loc[242, "year"] == 1997
    assert list(movies.loc[302, "genres"]) == ["Crime", "Thriller"]
    assert movies.loc[377, "title"] == "Caf\xe9 Society"
    seqs = read_sequences(tmp_path / "out").to_pandas().set_index("user_id")
    index_of = {m: i for i, m in enumerate(movies.index)}
    assert list(seqs.loc[196, "movie_index"]) == [index_of[302], index_of[242]]  # time order
    assert list(seqs.loc[196, "loo_test_position"] for _ in [0]) == [-1]


def test_movielens_missing_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match="ratings.csv"):
        prepare("movielens", tmp_path / "out", tmp_path / "empty")
    (tmp_path / "empty" / "u.data").write_text("1\t1\t3\t1\n")
    with pytest.raises(PrepareError, match="u.item"):
        prepare("movielens", tmp_path / "out", tmp_path / "empty")
