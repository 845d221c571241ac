"""A trained model meets an updated dataset (`prepare_dataset.py --update`): its id tables grow to the new sizes so it
reads the new folder at once, for inference or to continue training (`train_accelerate.py --init-from`).

Stored rows are copied bit for bit. New rows start as what the model already knows for an id it never trained on:
a new movie's id row is drawn like MovieIdEmbedding's initialisation (near zero) and its training count is zero
(so its id gate is closed and the movie is read from its content, as cold movies are), a new user's row is the unknown user's (index 0, which user-id dropout and typed
histories train), and a new vocabulary token's row is the out-of-vocabulary row (index 1: before the update the
token would have been encoded as <oov>); a new value's match-channel row (`config.match_features`) is random, so
that it matches itself and not the other new values. A model may only grow to a folder whose lineage records the model's sizes:
an unrelated dataset still stops with one line.
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from fusionrec.data.loading import check_compatible
from fusionrec.data.update import ancestor_sizes

GROWN_FIELDS = ("num_movies", "num_users", "categorical_vocab_sizes", "multi_valued_vocab_sizes")


def grown_config(config, spec: dict, *, dataset_dir: str | os.PathLike):
    """`config` when it matches the dataset's feature spec; a copy with the dataset's sizes when the dataset was
    updated from the model's data; otherwise the one-line DatasetError of `check_compatible`."""
    from configuration_fusionrec import FusionRecConfig

    target = FusionRecConfig.from_feature_spec(spec)
    signature, wanted = config.feature_signature(), target.feature_signature()
    if signature == wanted:
        return config
    sizes = {field: signature[field] for field in GROWN_FIELDS}
    if signature["numeric_feature_names"] != wanted["numeric_feature_names"] or not any(
        sizes == {field: ancestor[field] for field in GROWN_FIELDS} for ancestor in ancestor_sizes(spec)
    ):
        check_compatible(config, spec, dataset_dir=dataset_dir)
    grown = copy.deepcopy(config)
    for field in GROWN_FIELDS:
        setattr(grown, field, getattr(target, field))
    return grown


def grow_embedding(table: nn.Embedding, size: int, new_rows: torch.Tensor) -> nn.Embedding:
    """The same class of table with `size` rows: the stored rows, then `new_rows`."""
    weight = torch.cat((table.weight.detach(), new_rows.to(table.weight.device, table.weight.dtype)))
    if weight.shape[0] != size:
        raise ValueError(f"cannot grow a {table.num_embeddings}-row table to {size} rows with {len(new_rows)} new rows")
    return type(table).from_pretrained(weight, freeze=not table.weight.requires_grad, padding_idx=table.padding_idx)


def copies_of_row(table: nn.Embedding, row: int, size: int) -> torch.Tensor:
    return table.weight.detach()[row].expand(size - table.num_embeddings, -1).clone()


def grow_model(model, spec: dict, *, dataset_dir: str | os.PathLike, seed: int = 0):
    """Grow `model`'s movie, user and vocabulary tables in place to the dataset's sizes (see the module docstring)
    and update its config; a model that already matches is returned unchanged."""
    target = grown_config(model.config, spec, dataset_dir=dataset_dir)
    if target is model.config:
        return model
    config, oov = model.config, int(spec.get("oov_index", 1))
    tower = model.movie_tower
    if config.use_id_embedding:
        generator = torch.Generator().manual_seed(seed)
        count = target.num_movies - config.num_movies
        rows = torch.randn(count, config.hidden_size, generator=generator) * config.initializer_range
        tower.id_embedding = grow_embedding(tower.id_embedding, target.num_movies, rows)
        if config.count_gated_ids:  # a new movie has no training ratings yet: its id gate starts closed
            tower.movie_counts = torch.cat((tower.movie_counts, tower.movie_counts.new_zeros(count)))
    users = model.user_tower.user_embedding
    model.user_tower.user_embedding = grow_embedding(users, target.num_users, copies_of_row(users, 0, target.num_users))
    if config.use_content_features:
        for tables, sizes in (
            (tower.categorical_embeddings, target.categorical_vocab_sizes),
            (tower.bag_embeddings, target.multi_valued_vocab_sizes),
        ):
            for name, table in tables.items():
                tables[name] = grow_embedding(table, sizes[name], copies_of_row(table, oov, sizes[name]))
        generator = torch.Generator().manual_seed(seed)  # one stream: each feature's new rows differ from another's
        for name, table in getattr(tower, "match_embeddings", {}).items():
            # random rows, not the pooled one's: two new values would otherwise match each other fully
            rows = torch.randn(target.categorical_vocab_sizes[name] - table.num_embeddings, config.match_dim,
                               generator=generator)
            tower.match_embeddings[name] = grow_embedding(table, target.categorical_vocab_sizes[name], rows)
    for field in GROWN_FIELDS:
        setattr(config, field, getattr(target, field))
    return model
