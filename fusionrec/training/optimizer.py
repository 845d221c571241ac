"""The optimizer: AdamW, and how it treats the tables of movies, users and feature values.

A row of such a table gets a gradient only when its movie, user or feature value is in the batch. Under dense Adam the
moments carry that one gradient on for tens of steps: once the bias correction has faded, a row updated once moves
~lr / sqrt(1 - beta2) = ~30 lr per coordinate, so the rarest movies get the largest id rows. Two remedies, both
measured in bench/README.md: `--embedding-lr-scale` (the tables learn at a fraction of the rate) and
`--table-updates lazy` (a table row's moments and weights change only at the steps it has a gradient, TensorFlow's
LazyAdam and torch's SparseAdam; a row seen at every step is updated exactly as before).
"""

from __future__ import annotations

import torch

SPARSE_TABLES = ("id_embedding", "user_embedding", "categorical_embeddings", "bag_embeddings", "match_embeddings")


class TableAdamW(torch.optim.AdamW):
    """AdamW whose groups marked `lazy` update only the rows that have a gradient this step; the other groups take
    the fused AdamW step. The state is AdamW's (step, exp_avg, exp_avg_sq per parameter), so checkpoints read and
    write as before."""

    def __init__(self, groups: list[dict], **defaults) -> None:
        super().__init__(groups, **defaults)
        # GradScaler (fp16) unscales the gradients and skips steps with infs itself: the lazy rows need it done first
        self._step_supports_amp_scaling = False

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group.get("lazy"):
                for parameter in group["params"]:
                    if parameter.grad is not None:
                        self._lazy_step(parameter, group)
                        parameter.grad = None  # done: AdamW's own step below skips it
        return super().step(closure)

    def _lazy_step(self, parameter: torch.Tensor, group: dict) -> None:
        state = self.state[parameter]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32, device=parameter.device)
            state["exp_avg"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
        state["step"] += 1
        rows = touched_rows(parameter.grad)
        if rows.numel() == 0:
            return
        (beta1, beta2), step = group["betas"], float(state["step"])
        gradient = parameter.grad[rows]
        exp_avg = state["exp_avg"][rows].lerp_(gradient, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
        state["exp_avg"][rows], state["exp_avg_sq"][rows] = exp_avg, exp_avg_sq
        denominator = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(group["eps"])
        weights = parameter[rows].mul_(1 - group["lr"] * group["weight_decay"])
        parameter[rows] = weights.addcdiv_(exp_avg, denominator, value=-group["lr"] / (1 - beta1**step))


def touched_rows(gradient: torch.Tensor) -> torch.Tensor:
    """The rows of a table's gradient that are not all zero. One matrix-vector product against a fixed random probe
    (4 ms for 270,000 x 64 on one core, where a comparison and a row-wise any take ~35): a row with a gradient sums
    to exactly 0 against random weights only by a coincidence of the last bit, where a probe of ones would meet the
    mean-free gradients that a LayerNorm sends back."""
    probe = torch.randn(gradient.shape[1], generator=torch.Generator().manual_seed(0), dtype=gradient.dtype)
    return torch.mv(gradient, probe.to(gradient.device)).ne(0).nonzero().squeeze(1)


def build_optimizer(model: torch.nn.Module, args) -> torch.optim.Optimizer:
    """AdamW, no weight decay on biases and norms; the SPARSE_TABLES in a group of their own when they learn at
    another rate (`--embedding-lr-scale`) or lazily (`--table-updates lazy`). With neither, the two groups of before
    the options, so the checkpoints written then still resume."""
    lazy = args.table_updates == "lazy"
    separate = lazy or args.embedding_lr_scale != 1.0
    decay, no_decay, tables = [], [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_plain = parameter.dim() < 2 or "norm" in name or name.endswith(".bias") or "latents" in name
        is_table = separate and any(f".{table}" in f".{name}" for table in SPARSE_TABLES)
        (tables if is_table else no_decay if is_plain else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if tables:
        groups.append({"params": tables, "weight_decay": args.weight_decay, "lazy": lazy,
                       "lr": args.learning_rate * args.embedding_lr_scale})
    # fused: one kernel per parameter instead of a chain of element-wise ops, the same update; the user and movie id
    # tables are dense, so at the full Kaggle size (17M+ parameters) the for-loop AdamW took ~20% of a CPU step
    return TableAdamW(groups, lr=args.learning_rate, fused=True)
