"""Diffusion loss head for continuous tokens (MAR: Li et al. 2024, "Autoregressive Image
Generation without Vector Quantization").

Each hidden state z (N, D) conditions a small denoising MLP over one continuous token x0
(N, C), e.g. a VAE latent patch; the head models p(x0 | z) by diffusion instead of a softmax.
The network is MAR's ``SimpleMLPAdaLN``: residual MLP blocks modulated (AdaLN, DiT: Peebles &
Xie 2023) by c = z_proj(z) + t_embed(t), with the modulation and the output layer zero-initialised
so every block starts as the identity and the untrained head outputs exactly 0.

Choices (see ``DiffusionHead``): v-prediction by default (Salimans & Ho 2022; MMAR, Yang et al.
2024, argue it is the numerically stable target for a diffusion-loss head), no learned variance;
the noise schedule, ``add_noise``/``get_velocity`` and the sampler steps come from diffusers
(``DDPMScheduler`` for training, ``DDIMScheduler`` for sampling, built from one shared config).
``ContinuousHead`` (null embedding, classifier-free guidance) is shared with heads/flow.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor, nn

PREDICTIONS = ("v_prediction", "epsilon")
SCHEDULES = ("squaredcos_cap_v2", "linear")
CFG_SCHEDULES = ("constant", "linear")


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017, as in DiT/MAR). t (N,) float -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class TimestepEmbedder(nn.Module):
    """t (N,) -> (N, W): sinusoidal features then a 2-layer MLP."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class ResBlock(nn.Module):
    """x + gate * MLP(AdaLN(x)); shift/scale/gate come from the condition y. x, y (N, W)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        shift, scale, gate = self.ada(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class MLPAdaLN(nn.Module):
    """MAR's ``SimpleMLPAdaLN``: (x_t (N, C), t (N,), z (N, D)) -> model output (N, C).

    ``depth`` residual blocks of ``width``; AdaLN modulation and the final projection are zero
    at init (DiT's adaLN-Zero), so each block is the identity and the output is exactly 0."""

    def __init__(self, token_dim: int, cond_dim: int, width: int = 256, depth: int = 3):
        super().__init__()
        self.t_embed = TimestepEmbedder(width)
        self.z_proj = nn.Linear(cond_dim, width)
        self.in_proj = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, token_dim)
        self.reset_parameters()

    def reset_parameters(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.t_embed.mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        for lin in [b.ada[-1] for b in self.blocks] + [self.final_ada[-1], self.out]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        y = self.t_embed(t) + self.z_proj(z)                                  # (N, W) condition
        h = self.in_proj(x)
        for block in self.blocks:
            h = block(h, y)
        shift, scale = self.final_ada(y).chunk(2, dim=-1)
        return self.out(modulate(self.final_norm(h), shift, scale))


def cfg_schedule(kind: str, scale: float, progress: float) -> float:
    """CFG scale for a token generated at ``progress`` in [0, 1] (fraction already generated).
    "constant": ``scale``; "linear": 1 -> ``scale`` as progress goes 0 -> 1 (MAR's linear
    schedule, Li et al. 2024, Sec. 5; early tokens get little guidance)."""
    if kind not in CFG_SCHEDULES:
        raise ValueError(f"unknown cfg schedule {kind!r}; choose one of {CFG_SCHEDULES}")
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    return float(scale) if kind == "constant" else 1.0 + (float(scale) - 1.0) * progress


def guide(cond: Tensor, uncond: Tensor, cfg: float | Tensor) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022) on the model output (v, eps or velocity):
    uncond + cfg (cond - uncond). cond, uncond (N, C); cfg a float or (N,) per-row scales."""
    if isinstance(cfg, Tensor):
        cfg = cfg.to(cond)[:, None]
    return uncond + cfg * (cond - uncond)


class ContinuousHead(nn.Module):
    """Shared by the diffusion and flow heads: the MLP-AdaLN network, the learned null embedding
    for classifier-free guidance, input checks and the guided model call."""

    def __init__(self, dim: int, token_dim: int, width: int, depth: int, diffusion_batch_mul: int,
                 cond_drop: float):
        super().__init__()
        if diffusion_batch_mul < 1:
            raise ValueError(f"diffusion_batch_mul must be >= 1, got {diffusion_batch_mul}")
        if not 0.0 <= cond_drop < 1.0:
            raise ValueError(f"cond_drop is a probability in [0, 1), got {cond_drop}")
        self.dim, self.token_dim, self.mul, self.cond_drop = dim, token_dim, diffusion_batch_mul, cond_drop
        self.net = MLPAdaLN(token_dim, dim, width, depth)
        self.null_z = nn.Parameter(torch.randn(dim) * 0.02)                   # (D,) "no condition"

    def check_z(self, z: Tensor) -> None:
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must be (N, {self.dim}), got {tuple(z.shape)}")
        if not torch.isfinite(z).all():
            raise ValueError("z contains NaN or inf")

    def check_target(self, z: Tensor, target: Tensor) -> None:
        self.check_z(z)
        if target.shape != (z.shape[0], self.token_dim):
            raise ValueError(f"target must be ({z.shape[0]}, {self.token_dim}), got {tuple(target.shape)}")

    def drop_cond(self, z: Tensor, drop_mask: Tensor | None = None) -> Tensor:
        """CFG training: rows where ``drop_mask`` (N,) bool is set get ``null_z``. Without a mask,
        in training mode each row is dropped with probability ``cond_drop``."""
        if drop_mask is None:
            if not (self.training and self.cond_drop > 0):
                return z
            drop_mask = torch.rand(z.shape[0], device=z.device) < self.cond_drop
        return torch.where(drop_mask.to(z.device)[:, None], self.null_z.to(z.dtype), z)

    def repeat(self, z: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """MAR trains ``diffusion_batch_mul`` noise levels per z: (N, .) -> (N * mul, .)."""
        return z.repeat(self.mul, 1), target.float().repeat(self.mul, 1)

    def prepare(self, z: Tensor, steps: int, cfg: float | Tensor, temperature: float,
                z_null: Tensor | None) -> tuple[float | Tensor, Tensor | None]:
        """Check sampling arguments; returns (cfg, z_null) with z_null (N, D) when guiding."""
        self.check_z(z)
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if isinstance(cfg, Tensor):
            if cfg.shape != (z.shape[0],):
                raise ValueError(f"a per-row cfg must have shape ({z.shape[0]},), got {tuple(cfg.shape)}")
        elif cfg == 1.0 and z_null is None:
            return 1.0, None                                                  # plain conditional
        if z_null is None:
            z_null = self.null_z.to(z.dtype).expand_as(z)
        elif z_null.shape != z.shape:
            raise ValueError(f"z_null must have z's shape {tuple(z.shape)}, got {tuple(z_null.shape)}")
        return cfg, z_null

    def model_output(self, x: Tensor, t: Tensor, z: Tensor, cfg: float | Tensor = 1.0,
                     z_null: Tensor | None = None) -> Tensor:
        """Guided network output (N, C) float32. x (N, C), t (N,), z (N, D). With ``z_null`` the
        [cond; null] batch runs in one call and is combined by ``guide``."""
        dtype = self.null_z.dtype
        if z_null is None:
            return self.net(x.to(dtype), t, z.to(dtype)).float()
        out = self.net(torch.cat([x, x]).to(dtype), torch.cat([t, t]), torch.cat([z, z_null]).to(dtype))
        cond, uncond = out.float().chunk(2)
        return guide(cond, uncond, cfg)


class DiffusionHead(ContinuousHead):
    """MAR's diffusion loss (``DiffLoss``). z (N, D) hidden states, tokens (N, token_dim).

    - Training: DDPMScheduler (``train_timesteps``, ``schedule`` "squaredcos_cap_v2" as MAR's
      cosine schedule, or "linear") with ``add_noise``; target v (``get_velocity``) or eps.
      t ~ U{0, T-1}, ``diffusion_batch_mul`` draws per z; each z is replaced by ``null_z`` with
      probability ``cond_drop`` (in training mode) for classifier-free guidance.
    - Sampling: DDIMScheduler, same betas and prediction type (timestep spacing: see
      ``sampling_scheduler``); eta = 1 gives DDPM ancestral sampling.
    """

    def __init__(self, dim: int, token_dim: int, width: int = 256, depth: int = 3,
                 prediction: str = "v_prediction", train_timesteps: int = 1000, diffusion_batch_mul: int = 4,
                 schedule: str = "squaredcos_cap_v2", cond_drop: float = 0.1):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction!r}; choose one of {PREDICTIONS}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {schedule!r}; choose one of {SCHEDULES}")
        if train_timesteps < 2:
            raise ValueError(f"train_timesteps must be >= 2, got {train_timesteps}")
        super().__init__(dim, token_dim, width, depth, diffusion_batch_mul, cond_drop)
        self.prediction, self.train_timesteps = prediction, train_timesteps
        # one config for both schedulers: same betas, same prediction type, no x0 clipping
        self.scheduler_config = dict(num_train_timesteps=train_timesteps, beta_schedule=schedule,
                                     prediction_type=prediction, clip_sample=False)
        self.train_scheduler = DDPMScheduler(**self.scheduler_config)

    def sampling_scheduler(self) -> DDIMScheduler:
        """A fresh DDIM scheduler (schedulers keep per-run state, so one per ``sample`` call).

        v: "trailing" spacing (Lin et al. 2024), first step at t = T-1, the pure-noise end.
        eps: "leading" spacing (first step at T - T/steps): at t = T-1 the cosine schedule has
        alpha_bar ~ 2e-9 and x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) multiplies
        the eps error by ~2e4 (the instability MMAR avoids with v-prediction)."""
        spacing = "trailing" if self.prediction == "v_prediction" else "leading"
        return DDIMScheduler(**self.scheduler_config, set_alpha_to_one=True, timestep_spacing=spacing)

    def loss(self, z: Tensor, target: Tensor, drop_mask: Tensor | None = None) -> Tensor:
        """Mean squared error on v (or eps). z (N, D), target (N, token_dim) -> scalar.
        ``drop_mask`` (N,) bool overrides the random CFG drop (rows that get ``null_z``)."""
        self.check_target(z, target)
        z, x0 = self.repeat(self.drop_cond(z, drop_mask), target)            # (N*mul, D), (N*mul, C)
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.train_timesteps, (x0.shape[0],), device=x0.device)
        x_t = self.train_scheduler.add_noise(x0, noise, t)
        want = self.train_scheduler.get_velocity(x0, noise, t) if self.prediction == "v_prediction" else noise
        return F.mse_loss(self.model_output(x_t, t, z), want)

    @torch.no_grad()
    def sample(self, z: Tensor, steps: int = 25, cfg: float | Tensor = 1.0, temperature: float = 1.0,
               generator: torch.Generator | None = None, z_null: Tensor | None = None, eta: float = 0.0) -> Tensor:
        """z (N, D) -> tokens (N, token_dim) in z's dtype.

        cfg: float or (N,) per-row scales (see ``cfg_schedule``); the [cond; null] batch uses
        ``z_null`` (N, D) if given (e.g. the backbone run without the condition, as MAR does),
        else the learned ``null_z``. eta: 0 = DDIM (deterministic ODE, Song et al. 2021),
        1 = DDPM ancestral sampling (same posterior variance as DDPMScheduler's "fixed_small").
        temperature scales the initial noise x_T ~ N(0, temperature^2 I) and, with eta > 0,
        the per-step noise (MAR scales the per-step noise; with eta = 0 there is none, so the
        initial noise is the only place it can act). temperature 0 is deterministic given z.
        """
        cfg, z_null = self.prepare(z, steps, cfg, temperature, z_null)
        if steps > self.train_timesteps:
            raise ValueError(f"steps ({steps}) must not exceed train_timesteps ({self.train_timesteps})")
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        # DDIM's direction term is sqrt(1 - alpha_prev - sigma^2); at eta = 1 on the first trailing
        # step it is exactly sqrt(0), and float32 rounding of sigma^2 can make it sqrt(-1e-8) = NaN.
        # 1e-4 below 1 keeps it real and changes the sampler negligibly.
        eta = min(float(eta), 1 - 1e-4)
        n, shape = z.shape[0], (z.shape[0], self.token_dim)

        # 1. scheduler and timesteps (descending, on z's device)
        scheduler = self.sampling_scheduler()
        scheduler.set_timesteps(steps, device=z.device)

        # 2. initial noise, scaled by temperature
        x = temperature * torch.randn(shape, generator=generator, device=z.device, dtype=torch.float32)

        # 3. denoising loop
        for t in scheduler.timesteps:
            # 3a. model output (v or eps) with classifier-free guidance
            out = self.model_output(x, t.expand(n), z, cfg, z_null)
            # 3b. per-step noise (eta > 0 only), scaled by temperature
            noise = None
            if eta > 0:
                noise = temperature * torch.randn(shape, generator=generator, device=z.device, dtype=torch.float32)
            # 3c. x_t -> x_{t-1}
            x = scheduler.step(out, int(t), x, eta=eta, variance_noise=noise).prev_sample
        return x.to(z.dtype)
