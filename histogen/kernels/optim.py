"""AdamWEMA: torch.optim.AdamW with an EMA of the weights updated in the same pass."""
from __future__ import annotations

from collections import defaultdict

import torch

from histogen.kernels.dispatch import backend
from histogen.kernels.reference import adamw_ema_reference


def _dense(t: torch.Tensor) -> bool:
    """Elements fill numel() consecutive slots in some dimension order (contiguous, channels_last...)."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda d: d[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


class AdamWEMA(torch.optim.Optimizer):
    """AdamW (the semantics of torch.optim.AdamW, no amsgrad/maximize) followed, for every updated
    parameter, by ema = ema * d + param * (1 - d) with d = min(ema_decay, (1 + t) / (ema_warmup + t))
    at step t: the warm-up lets a short run's EMA leave the initial weights (with 0.999 alone, 70 % of
    the EMA after 300 steps is still the initialisation); ema_warmup 0 is the plain decay. One fused Triton pass per
    parameter group on CUDA (see histogen.kernels), the PyTorch reference elsewhere.

    State per parameter, all fp32 and kept outside the model: step, exp_avg, exp_avg_sq, ema
    (starting at the parameter's value), and for bf16/fp16 parameters an fp32 master copy that the
    update applies to (the parameter receives its rounded value; the EMA follows the master).
    `ema_parameters()` and `copy_ema_to()` give the EMA weights for sampling.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 ema_decay: float = 0.999, ema_warmup: int = 10):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0: {lr}, {eps}, {weight_decay}")
        if not all(0 <= b < 1 for b in betas) or not 0 <= ema_decay <= 1:
            raise ValueError(f"betas must be in [0, 1) and ema_decay in [0, 1]: {betas}, {ema_decay}")
        if ema_warmup < 0:
            raise ValueError(f"ema_warmup must be >= 0: {ema_warmup}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      ema_decay=ema_decay, ema_warmup=ema_warmup))

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            if not _dense(p):
                raise ValueError(f"AdamWEMA needs dense parameters; got shape {tuple(p.shape)}, strides {p.stride()}")
            state["step"] = torch.tensor(0.0)  # a CPU tensor, as in torch.optim.AdamW
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
            state["ema"] = p.detach().to(torch.float32, copy=True)
            if p.dtype != torch.float32:
                state["master"] = p.detach().to(torch.float32, copy=True)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # One update per (device, dtype, step count): steps differ only for parameters
            # that had no gradient on some steps (skipped, as torch.optim.AdamW skips them).
            buckets = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamWEMA does not support sparse gradients")
                state = self._state(p)
                state["step"] += 1
                buckets[(p.device, p.dtype, int(state["step"]))].append(p)
            for (_, _, step), params in buckets.items():
                self._update(params, group, step)
        return loss

    def _update(self, params, group, step: int):
        states = [self.state[p] for p in params]
        grads = [p.grad for p in params]
        exp_avgs, exp_avg_sqs, emas = ([s[k] for s in states] for k in ("exp_avg", "exp_avg_sq", "ema"))
        masters = [s.get("master") for s in states]
        beta1, beta2 = group["betas"]
        # Python floats whatever was given (ints, tensors): one kernel signature, no device sync.
        hyper = dict(lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2), eps=float(group["eps"]),
                     weight_decay=float(group["weight_decay"]),
                     ema_decay=min(float(group["ema_decay"]), (1 + step) / (group.get("ema_warmup", 0) + step)))
        if backend(params[0]) == "triton":
            from histogen.kernels.adamw_ema import adamw_ema_triton

            adamw_ema_triton(params, grads, exp_avgs, exp_avg_sqs, emas, masters, step, **hyper)
            return
        weights = [p if w is None else w for p, w in zip(params, masters)]
        adamw_ema_reference(weights, grads, exp_avgs, exp_avg_sqs, emas, step, **hyper)
        for p, w in zip(params, masters):
            if w is not None:
                p.copy_(w)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        # Optimizer.load_state_dict casts floating state to each parameter's dtype; ours is fp32
        # whatever the parameter (moments, EMA, masters), so take it again as saved.
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(saved_ids, params):
            for key, value in state_dict["state"].get(i, {}).items():
                # In the parameter's memory format (a channels_last run saves contiguous tensors).
                self.state[p][key] = (value.clone() if key == "step"
                                      else torch.empty_like(p, dtype=torch.float32).copy_(value))

    def ema_parameters(self) -> list[torch.Tensor]:
        """The EMA weights (fp32), one per parameter in param-group order; a parameter never
        stepped is its own EMA."""
        params = [p for g in self.param_groups for p in g["params"]]
        return [self.state[p]["ema"] if p in self.state else p.detach().to(torch.float32, copy=True) for p in params]

    @torch.no_grad()
    def copy_ema_to(self, params) -> None:
        """Copy the EMA weights into `params` (e.g. `sampling_model.parameters()` of a copy of the
        trained model: same order as the parameters given to the optimizer)."""
        params, emas = list(params), self.ema_parameters()
        if len(params) != len(emas) or any(p.shape != e.shape for p, e in zip(params, emas)):
            raise ValueError("copy_ema_to needs the parameters in the order and shapes given to the optimizer")
        for p, e in zip(params, emas):
            p.copy_(e)
