"""A tiny release folder (weights, remote code, catalog, handler) and its Space folder, as release.py writes them,
with the Space's app.py and handler.py importable as `app` and `handler`."""

from __future__ import annotations

import os
import sys

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


@pytest.fixture(scope="session")
def space(tmp_path_factory) -> dict:
    from tiny import save_tiny_release, save_tiny_t5

    from fusionrec.space import add_handler, build_space
    from modeling_fusionrec import FusionModel

    root = tmp_path_factory.mktemp("serving")
    release = save_tiny_release(root / "release", encoder=save_tiny_t5(root / "t5"))
    config = FusionModel.config_class.from_pretrained(release)
    add_handler(release, config)
    folder = build_space(root / "space", repo="me/fusionrec-test", config=config, num_movies=config.num_movies)
    sys.path.insert(0, str(folder))
    return {"release": release, "folder": folder}
