"""A saved config records the sha256 of the modeling_fusionrec.py that saved it; loading a checkpoint saved by other
code logs one warning per process and recorded hash."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from pathlib import Path

from tiny import tiny_config

import configuration_fusionrec
from modeling_fusionrec import FusionModel

MODELING = Path(configuration_fusionrec.__file__).with_name("modeling_fusionrec.py")


def saved(folder: Path, recorded: str | None = None) -> Path:
    FusionModel(tiny_config(use_text=False)).save_pretrained(folder)
    if recorded is not None:
        path = folder / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "modeling_sha256": recorded}))
    return folder


def warnings_in(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "configuration_fusionrec" and r.levelno == logging.WARNING]


def test_save_pretrained_records_the_modeling_file_hash_and_the_same_code_loads_quietly(tmp_path, caplog):
    folder = saved(tmp_path / "model")
    recorded = json.loads((folder / "config.json").read_text())["modeling_sha256"]
    assert recorded == hashlib.sha256(MODELING.read_bytes()).hexdigest()
    with caplog.at_level(logging.WARNING):
        FusionModel.from_pretrained(folder)
    assert not warnings_in(caplog)


def test_a_checkpoint_of_other_code_warns_once_per_process_and_hash(tmp_path, caplog):
    first, second = secrets.token_hex(32), secrets.token_hex(32)
    a = saved(tmp_path / "a", first)
    b = saved(tmp_path / "b", second)
    with caplog.at_level(logging.WARNING):
        for folder in (a, a, b, a, b):
            FusionModel.from_pretrained(folder)
    messages = warnings_in(caplog)
    assert len(messages) == 2, messages
    current = hashlib.sha256(MODELING.read_bytes()).hexdigest()
    assert first[:12] in messages[0] and second[:12] in messages[1]
    assert all(current[:12] in message for message in messages)
