"""Writes tests/model/reference/: a tiny trained FusionModel with text (save_pretrained), one batch, and the outputs
and parameter gradients the model code of that time gives for it. Made with the code before issue 23's training-step
rewrite (commit c4d91df: SDPA Perceiver over projected keys and values, dense collision mask, masked-mean bags), so
tests/model/test_step_rewrite.py checks that today's code loads that checkpoint and computes the same function.

    git archive c4d91df | tar -x -C /tmp/before && PYTHONPATH=/tmp/before:/tmp/before/tests \\
        python tests/model/reference/make_reference.py tests/model/reference
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tiny import history_batch, tiny_config

from modeling_fusionrec import FusionModel


def flat(batch: dict) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in batch.items():
        for name, inner in (value.items() if isinstance(value, dict) else [("", value)]):
            for sub, tensor in (inner.items() if isinstance(inner, dict) else [("", inner)]):
                out[".".join(part for part in (key, name, sub) if part)] = tensor.contiguous()
    return out


def main(folder: Path) -> None:
    torch.manual_seed(0)
    config = tiny_config(movie_id_dropout=0.0)
    model = FusionModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = history_batch(config, seed=0)
    for _ in range(3):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.eval().zero_grad()
    batch = history_batch(config, batch=5, length=10, seed=1)
    out = model(**batch)
    out.loss.backward()
    model.save_pretrained(folder / "model")
    results = {name: getattr(out, name).detach() for name in ("loss", "retrieval_loss", "user_vectors", "movie_vectors",
                                                               "rating_predictions")}  # fmt: skip
    results |= {f"grad.{name}": p.grad for name, p in model.named_parameters() if p.grad is not None}
    save_file(flat(batch), str(folder / "batch.safetensors"))
    save_file(results, str(folder / "outputs.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
