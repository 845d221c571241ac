"""The training state a resumed run puts back, as safetensors tensors and JSON values and back again: an optimizer's
per-parameter tensors and hyperparameters, and one process's RNG states. Nothing is pickled, so reading a checkpoint
cannot run code that someone put in it.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def optimizer_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state_dict as tensors named "<parameter index>.<name>" (AdamW: step, exp_avg, exp_avg_sq) and
    the JSON rest: param_groups (hyperparameters and parameter indices) and any per-parameter value not a tensor."""
    tensors, values = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            (tensors if isinstance(value, torch.Tensor) else values)[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "values": values}


def optimizer_state(tensors: dict[str, torch.Tensor], rest: dict, *, like: list[dict]) -> dict:
    """The state_dict that `optimizer_tensors` split. JSON has no tuples: a hyperparameter that the live optimizer's
    param_groups (`like`) hold as one, as AdamW's betas, becomes one again, so the state equals the one saved."""
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *rest["values"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [
        {key: tuple(value) if isinstance(live.get(key), tuple) else value for key, value in group.items()}
        for group, live in zip(rest["param_groups"], like, strict=True)
    ]
    return {"state": state, "param_groups": groups}


def device_rng():
    """The torch module of this machine's accelerator (torch.cuda, torch.mps, ...), whose own RNG draws the dropout
    masks computed there; None without one."""
    if not hasattr(torch, "accelerator"):  # torch < 2.6
        return torch.cuda if torch.cuda.is_available() else None
    if not torch.accelerator.is_available():
        return None
    return torch.get_device_module(torch.accelerator.current_accelerator())


def rng_states() -> tuple[dict[str, torch.Tensor], dict]:
    """This process's RNG states, those accelerate's save_state kept: torch's on the CPU and on each accelerator
    device as uint8 tensors ("cpu", "device.<i>"), numpy's legacy MT19937 and Python's `random` as JSON."""
    tensors = {"cpu": torch.get_rng_state()}
    if (device := device_rng()) is not None:
        states = device.get_rng_state_all() if hasattr(device, "get_rng_state_all") else [device.get_rng_state()]
        tensors.update({f"device.{i}": state for i, state in enumerate(states)})
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    values = {
        "numpy": {"keys": keys.tolist(), "position": position, "has_gauss": has_gauss, "cached_gaussian": cached_gaussian},
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
    }
    return tensors, values


def set_rng_states(tensors: dict[str, torch.Tensor], values: dict) -> None:
    """Put back what `rng_states` returned. Device states saved on a machine with an accelerator are skipped on one
    without (a GPU run resumed on the CPU), as accelerate's load_state does."""
    torch.set_rng_state(tensors["cpu"])
    saved = [tensors[f"device.{i}"] for i in range(len(tensors) - 1)]
    device = device_rng() if saved else None
    if device is not None and hasattr(device, "set_rng_state_all"):
        device.set_rng_state_all(saved)
    elif device is not None:
        device.set_rng_state(saved[0])
    numpy = values["numpy"]
    np.random.set_state(("MT19937", np.asarray(numpy["keys"], dtype=np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))  # fmt: skip
    python = values["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
