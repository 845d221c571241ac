"""A checkpoint's state files (fusionrec/training/checkpoints.py, state_files.py): the optimizer, scheduler, gradient
scaler, loop and RNG states go through safetensors and JSON and come back such that the next step is the same.
A CPU run has no gradient scaler (accelerate makes one for fp16 on a GPU), so a stand-in accelerator carries one here.
Whole runs resumed exactly: tests/training/test_train.py and tests/training/test_kill_resume.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import get_scheduler

from fusionrec.training.checkpoints import TrainerState, read_state, write_process_state, write_training_state
from fusionrec.training.state_files import rng_states, set_rng_states


def stand_in_accelerator(scaler: torch.amp.GradScaler, *, step: int) -> SimpleNamespace:
    """What of an Accelerator the state files use, for one process."""
    return SimpleNamespace(unwrap_model=lambda model: model, scaler=scaler, process_index=0, num_processes=1, step=step)


def training(seed: int):
    """A small model with the loop's optimizer (AdamW, fused, two groups), a transformers schedule and an fp16 scaler."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    groups = [{"params": [model[0].weight], "weight_decay": 0.1},
              {"params": [model[0].bias, *model[1].parameters()], "weight_decay": 0.0}]  # fmt: skip
    optimizer = torch.optim.AdamW(groups, lr=1e-2, fused=True)
    scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=2, num_training_steps=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=2)
    return model, optimizer, scheduler, scaler


def take_step(model, optimizer, scheduler, scaler, *, index: int) -> None:
    inputs = torch.randn(8, 4, generator=torch.Generator().manual_seed(index))
    scaler.scale(torch.nn.functional.dropout(model(inputs), 0.5).square().mean()).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def test_a_resumed_optimizer_scheduler_and_scaler_take_the_same_next_step(tmp_path: Path):
    model, optimizer, scheduler, scaler = training(seed=0)
    for index in range(3):
        take_step(model, optimizer, scheduler, scaler, index=index)
    state = TrainerState()
    state.global_step, state.lr_scale, state.history = 3, 0.5, [{"step": 3, "train/loss": 0.25}]
    write_training_state(tmp_path, stand_in_accelerator(scaler, step=3), model, optimizer, scheduler)
    write_process_state(tmp_path, stand_in_accelerator(scaler, step=3))
    (tmp_path / "trainer_state.json").write_text(json.dumps(state.state_dict()))
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "model.safetensors", "optimizer.json", "optimizer.safetensors", "random_states_0.json",
        "random_states_0.safetensors", "scaler.json", "scheduler.json", "trainer_state.json",
    ]  # fmt: skip

    take_step(model, optimizer, scheduler, scaler, index=3)  # the uninterrupted run's next step

    resumed = training(seed=1)  # reseeded, other initial weights: all must come from the files
    accelerator, loaded = stand_in_accelerator(resumed[3], step=0), TrainerState()
    read_state(tmp_path, accelerator, *resumed[:3], loaded)
    assert accelerator.step == 3 and loaded.state_dict() == state.state_dict()
    take_step(*resumed, index=3)
    for name, value in model.state_dict().items():
        assert torch.equal(resumed[0].state_dict()[name], value), name
    assert resumed[1].state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]  # betas a tuple again
    assert resumed[2].state_dict() == scheduler.state_dict() and resumed[3].state_dict() == scaler.state_dict()

def draws() -> list:
    return [torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.normal(), random.random(), random.gauss(0, 1)]


def test_rng_states_come_back_from_safetensors_and_json_and_replay_the_same_draws(tmp_path: Path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    draws()  # mid-stream: numpy and Python each hold a cached Gaussian now
    tensors, values = rng_states()
    save_file(tensors, tmp_path / "rng.safetensors")
    (tmp_path / "rng.json").write_text(json.dumps(values))
    expected = draws()
    draws()
    set_rng_states(load_file(tmp_path / "rng.safetensors"), json.loads((tmp_path / "rng.json").read_text()))
    assert draws() == expected
