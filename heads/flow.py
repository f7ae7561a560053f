"""Flow-matching head for continuous tokens (FlowAR, Ren et al. 2024; xAR, Ren et al. 2025):
the diffusion head's MLP-AdaLN network (heads/diffusion.py) trained with a rectified-flow
velocity target (Liu et al. 2022, "Flow Straight and Fast"; Lipman et al. 2023).

Convention (diffusers FlowMatch, SD3: Esser et al. 2024): x_sigma = (1 - sigma) x0 + sigma eps,
sigma in [0, 1] (0 = data, 1 = noise), velocity target v = eps - x0, network time input
t = 1000 sigma (the scale the shared sinusoidal timestep embedding is built for).
Training sigma: logit-normal (SD3's "lognorm(0, 1)", which weights the middle of the path) or
uniform. Sampling: diffusers ``FlowMatchEulerDiscreteScheduler`` supplies the sigma grid
(1 -> 0, shift 1) and its ``step`` does the Euler update x <- x + (sigma_next - sigma) v.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import Tensor

from heads.diffusion import ContinuousHead

TIME_SAMPLINGS = ("logit_normal", "uniform")
NUM_TRAIN_TIMESTEPS = 1000  # t = 1000 sigma, as in diffusers' flow-matching schedulers


class FlowHead(ContinuousHead):
    """Rectified-flow head. z (N, D) hidden states, tokens (N, token_dim).

    Same interface, classifier-free guidance (``null_z``, ``cond_drop``) and network as
    ``heads.diffusion.DiffusionHead``; ``diffusion_batch_mul`` sigmas are drawn per z."""

    def __init__(self, dim: int, token_dim: int, width: int = 256, depth: int = 3, diffusion_batch_mul: int = 4,
                 time_sampling: str = "logit_normal", cond_drop: float = 0.1):
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time sampling {time_sampling!r}; choose one of {TIME_SAMPLINGS}")
        super().__init__(dim, token_dim, width, depth, diffusion_batch_mul, cond_drop)
        self.time_sampling = time_sampling

    def sample_sigma(self, n: int, device: torch.device) -> Tensor:
        """(n,) training noise levels in (0, 1)."""
        if self.time_sampling == "uniform":
            return torch.rand(n, device=device)
        return torch.sigmoid(torch.randn(n, device=device))                    # logit-normal(0, 1)

    def loss(self, z: Tensor, target: Tensor, drop_mask: Tensor | None = None) -> Tensor:
        """Mean squared error on the velocity eps - x0. z (N, D), target (N, token_dim) ->
        scalar. ``drop_mask`` (N,) bool overrides the random CFG drop."""
        self.check_target(z, target)
        z, x0 = self.repeat(self.drop_cond(z, drop_mask), target)             # (N*mul, D), (N*mul, C)
        noise = torch.randn_like(x0)
        sigma = self.sample_sigma(x0.shape[0], x0.device)
        x_t = (1 - sigma[:, None]) * x0 + sigma[:, None] * noise
        v = self.model_output(x_t, NUM_TRAIN_TIMESTEPS * sigma, z)
        return F.mse_loss(v, noise - x0)

    @torch.no_grad()
    def sample(self, z: Tensor, steps: int = 25, cfg: float | Tensor = 1.0, temperature: float = 1.0,
               generator: torch.Generator | None = None, z_null: Tensor | None = None) -> Tensor:
        """z (N, D) -> tokens (N, token_dim) in z's dtype, by ``steps`` Euler steps of the ODE.

        cfg: float or (N,) per-row scales, applied to the velocity; the null rows use ``z_null``
        (N, D) if given, else ``null_z``. The ODE is deterministic, so temperature scales the
        initial noise x_1 ~ N(0, temperature^2 I); temperature 0 is deterministic given z.
        """
        cfg, z_null = self.prepare(z, steps, cfg, temperature, z_null)
        n = z.shape[0]

        # 1. scheduler and its sigma grid 1 -> 0 (timesteps = 1000 sigma, on z's device)
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)
        scheduler.set_timesteps(steps, device=z.device)

        # 2. initial noise at sigma = 1, scaled by temperature
        x = temperature * torch.randn((n, self.token_dim), generator=generator, device=z.device,
                                      dtype=torch.float32)

        # 3. Euler loop
        for t in scheduler.timesteps:
            # 3a. velocity with classifier-free guidance
            v = self.model_output(x, t.expand(n), z, cfg, z_null)
            # 3b. x_sigma -> x_sigma_next = x + (sigma_next - sigma) v
            x = scheduler.step(v, t, x).prev_sample
        return x.to(z.dtype)
