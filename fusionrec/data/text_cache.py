"""The frozen text encoder runs once per movie text: token states (float16) cached on disk, keyed by encoder name,
revision, max length and text hash, and reused by training and every command.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm.auto import tqdm

from fusionrec.errors import CommandError, first_line
from fusionrec.io import atomic_save_safetensors, atomic_write_text, make_folder

logger = logging.getLogger(__name__)


def default_cache_root() -> Path:
    return Path(os.environ.get("FUSIONREC_CACHE", Path.home() / ".cache" / "fusionrec")) / "text"


def text_cache_dir(cache_root: str | os.PathLike, *, encoder_name: str, revision: str | None, max_length: int) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{encoder_name}@{revision or 'default'}")[-80:]
    digest = hashlib.sha256(f"{encoder_name}\0{revision}\0{max_length}".encode()).hexdigest()[:12]
    return Path(cache_root) / f"{slug}-{max_length}-{digest}"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def encoder_problem(name: str, error: BaseException) -> str:
    """Why a text encoder did not load, in a few words (a local folder that is gone reads as such, not as a bad
    Hub repo id)."""
    path = Path(name).expanduser()
    if (path.is_absolute() or name.startswith((".", "~"))) and not path.exists():
        return f"no folder {path}"
    return first_line(error)[:200]


def read_cache(index_path: Path, states_path: Path) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """The cache's index and tensors; a damaged or inconsistent cache (a truncated file, a kill between its two
    files) is logged and treated as empty, so it is rebuilt instead of stopping the run."""
    if not (index_path.is_file() and states_path.is_file()):
        return {}, {}
    try:
        known = json.loads(index_path.read_text(encoding="utf-8"))
        stored = load_file(states_path)
        rows = len(stored["lengths"])
        if stored["states"].shape[0] != rows or not all(isinstance(v, int) and 0 <= v < rows for v in known.values()):
            raise ValueError(f"{len(known)} index entries for {rows} rows")
    except (OSError, ValueError, KeyError, AttributeError, SafetensorError) as error:
        logger.warning("text cache %s is damaged (%s); rebuilding it", states_path.parent, first_line(error)[:200])
        return {}, {}
    return known, stored


def build_text_cache(
    texts: list[str],
    *,
    cache_root: str | os.PathLike,
    encoder_name: str,
    revision: str | None,
    max_length: int,
    batch_size: int = 64,
    show_progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states (movies, max_length, hidden) float16 and lengths for `texts`, computed only for texts not yet in
    the cache (keyed by encoder name, revision, max length and text hash). The cache file is replaced atomically."""
    from modeling_fusionrec import encode_texts, load_text_encoder

    directory = text_cache_dir(cache_root, encoder_name=encoder_name, revision=revision, max_length=max_length)
    index_path, states_path = directory / "index.json", directory / "states.safetensors"
    known, stored = read_cache(index_path, states_path)
    hashes = [text_hash(text) for text in texts]
    missing = sorted({h: t for h, t in zip(hashes, texts, strict=True) if h not in known}.items())
    if missing:
        try:
            encoder, tokenizer = load_text_encoder(encoder_name, revision=revision)
        except (OSError, ValueError) as error:
            raise CommandError(
                f"text encoder {encoder_name!r} (named by the model's config) cannot be loaded "
                f"({encoder_problem(encoder_name, error)}); put it back there, or give the --cache-dir that holds its "
                "cached token states."
            ) from None
        offset = len(stored["lengths"]) if stored else 0  # rows, not index entries: a kill may fall between the files
        hidden = getattr(encoder.config, "d_model", None) or encoder.config.hidden_size
        # One tensor filled in place: the cache of a 45k-movie catalog is 1.1 GB, and a list + torch.cat would hold it twice.
        all_states = torch.zeros(offset + len(missing), max_length, hidden, dtype=torch.float16)
        all_lengths = torch.zeros(offset + len(missing), dtype=torch.long)
        if stored:
            all_states[:offset], all_lengths[:offset] = stored["states"], stored["lengths"]
        stored = {}
        batches = range(0, len(missing), batch_size)
        for start in tqdm(batches, desc="text cache", unit="batch", disable=not show_progress):
            chunk = [text for _, text in missing[start : start + batch_size]]
            states, mask = encode_texts(chunk, encoder=encoder, tokenizer=tokenizer, max_length=max_length, batch_size=batch_size)
            part = slice(offset + start, offset + start + len(chunk))
            all_states[part, : states.shape[1]] = states
            all_lengths[part] = mask.sum(dim=1)
        known.update({h: offset + i for i, (h, _) in enumerate(missing)})
        stored = {"states": all_states, "lengths": all_lengths}
        make_folder(directory)
        atomic_save_safetensors(stored, states_path)
        atomic_write_text(index_path, json.dumps(known, sort_keys=True))
    rows = torch.tensor([known[h] for h in hashes], dtype=torch.long)
    if torch.equal(rows, torch.arange(len(stored["lengths"]))):
        return stored["states"], stored["lengths"]  # the usual case (one catalog per cache): no second copy
    return stored["states"][rows], stored["lengths"][rows]
