"""Diffusion loss head (MAR, Li et al. 2024): zero-init, gradients into z, a toy conditional
distribution learned with v- and eps-prediction, classifier-free guidance, temperature,
reproducibility, argument checks and the diffusers scheduler wiring."""
import pytest
import torch
from diffusers import DDPMScheduler

from backbone.container import OmniModel, part
from backbone.transformer import ModelArgs
from heads.diffusion import DiffusionHead, cfg_schedule, guide

from continuous_toy import (CODES, TARGETS, C, D, K, Probe, check_backprop_into_z,  # tests/heads/continuous_toy.py
                            check_cfg_one_equals_conditional, train_toy)


def tiny(**kw) -> DiffusionHead:
    torch.manual_seed(0)
    return DiffusionHead(dim=D, token_dim=C, width=32, depth=2, **kw)


@pytest.fixture(scope="module", params=["v_prediction", "epsilon"])
def trained(request) -> DiffusionHead:
    """A head trained for 400 Adam steps on z = code k -> token TARGETS[k] + N(0, 0.05^2)."""
    torch.manual_seed(0)
    return train_toy(DiffusionHead(D, C, width=64, depth=2, prediction=request.param))


def test_shapes_and_zero_init_output_exactly_zero():
    head = tiny()
    x, t, z = torch.randn(5, C), torch.randint(0, 1000, (5,)), torch.randn(5, D)
    assert torch.equal(head.net(x, t, z), torch.zeros(5, C))
    h, y = torch.randn(5, 32), torch.randn(5, 32)
    for block in head.net.blocks:                    # adaLN-Zero: every block is the identity
        assert torch.equal(block(h, y), h)
    out = head.sample(z, steps=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, C) and out.dtype == z.dtype and torch.isfinite(out).all()


def test_loss_is_finite_and_backprops_into_z():
    check_backprop_into_z(tiny())


def test_cond_drop_only_in_training():
    head = tiny(cond_drop=0.5)
    z = torch.randn(1000, D)
    dropped = (head.drop_cond(z) == head.null_z).all(-1).float().mean()
    assert 0.4 < dropped < 0.6
    assert torch.equal(head.eval().drop_cond(z), z)


def test_learns_a_conditional_toy_distribution(trained):
    k = torch.arange(K).repeat_interleave(32)
    for eta in (0.0, 1.0):                           # DDIM and DDPM-ancestral sampling
        x = trained.sample(CODES[k], steps=25, cfg=1.0, generator=torch.Generator().manual_seed(1), eta=eta)
        err = (x - TARGETS[k]).norm(dim=-1)
        for j in range(K):                           # each code lands on its own target
            assert err[k == j].mean() < 0.5, (trained.prediction, eta, j, err[k == j].mean())
    assert torch.cdist(TARGETS, TARGETS).add(torch.eye(K) * 99).min() > 3


def test_cfg_combines_cond_and_null_outputs():
    head = tiny()
    head.net = Probe()
    x, t, z = torch.randn(4, C), torch.full((4,), 500), torch.randn(4, D)
    null = head.null_z.detach().expand(4, D)
    cond, uncond = head.net(x, t, z), head.net(x, t, null)
    ones = torch.ones(4)                             # cfg=1 through the [cond; null] batch
    torch.testing.assert_close(head.model_output(x, t, z, ones, null), cond)
    out = head.model_output(x, t, z, 3.0, null)      # extrapolates away from the null output
    torch.testing.assert_close(out, uncond + 3 * (cond - uncond))
    torch.testing.assert_close((out - uncond).norm(), 3 * (cond - uncond).norm())
    ramp = torch.tensor([1.0, 2.0, 3.0, 4.0])        # per-row scales
    torch.testing.assert_close(head.model_output(x, t, z, ramp, null), guide(cond, uncond, ramp))
    torch.testing.assert_close(guide(cond, uncond, ramp)[2], guide(cond, uncond, 3.0)[2])


def test_cfg_one_in_sampling_equals_conditional(trained):
    check_cfg_one_equals_conditional(trained)


def test_cfg_schedule():
    assert cfg_schedule("constant", 4.0, 0.2) == 4.0
    assert [cfg_schedule("linear", 4.0, p) for p in (0.0, 0.5, 1.0)] == [1.0, 2.5, 4.0]
    with pytest.raises(ValueError, match="cfg schedule"):
        cfg_schedule("cosine", 4.0, 0.5)
    with pytest.raises(ValueError, match="progress"):
        cfg_schedule("linear", 4.0, 1.5)


def test_temperature_zero_is_deterministic(trained):
    z = CODES[torch.arange(K).repeat_interleave(16)]
    for eta in (0.0, 1.0):
        a = trained.sample(z, steps=10, temperature=0.0, generator=torch.Generator().manual_seed(0), eta=eta)
        b = trained.sample(z, steps=10, temperature=0.0, generator=torch.Generator().manual_seed(1), eta=eta)
        torch.testing.assert_close(a, b)
    hot = trained.sample(z, steps=10, temperature=1.0, generator=torch.Generator().manual_seed(0), eta=1.0)
    cold = trained.sample(z, steps=10, temperature=0.1, generator=torch.Generator().manual_seed(0), eta=1.0)
    assert cold.view(K, 16, C).var(1).sum() < hot.view(K, 16, C).var(1).sum()


def test_seeded_generator_reproduces(trained):
    z = CODES[[0, 1, 2]]

    def s(seed, eta):
        return trained.sample(z, steps=5, generator=torch.Generator().manual_seed(seed), eta=eta)
    for eta in (0.0, 1.0):
        assert torch.isfinite(s(7, eta)).all()    # eta = 1's first trailing step once gave sqrt(-0) = NaN
        assert torch.equal(s(7, eta), s(7, eta))
        assert not torch.equal(s(7, eta), s(8, eta))
    with pytest.raises(ValueError, match="eta"):
        s(7, 1.5)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="prediction type"):
        DiffusionHead(D, C, prediction="x0")
    with pytest.raises(ValueError, match="noise schedule"):
        DiffusionHead(D, C, schedule="sigmoid")
    with pytest.raises(ValueError, match="cond_drop"):
        DiffusionHead(D, C, cond_drop=1.0)
    head = tiny()
    z = torch.randn(2, D)
    for steps in (0, -1, 2.5, 1001):
        with pytest.raises(ValueError, match="steps"):
            head.sample(z, steps=steps)
    with pytest.raises(ValueError, match="NaN"):
        head.sample(torch.tensor([[0.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        head.loss(torch.full((1, D), float("nan")), torch.zeros(1, C))
    with pytest.raises(ValueError, match="target"):
        head.loss(z, torch.zeros(2, C + 1))
    with pytest.raises(ValueError, match="z must be"):
        head.sample(torch.randn(2, D + 1))
    with pytest.raises(ValueError, match="per-row cfg"):
        head.sample(z, cfg=torch.ones(3))
    with pytest.raises(ValueError, match="temperature"):
        head.sample(z, temperature=-1.0)


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
def test_schedulers_share_one_config(prediction):
    head = tiny(prediction=prediction, schedule="linear")
    train, sample = head.train_scheduler, head.sampling_scheduler()
    torch.testing.assert_close(train.alphas_cumprod, sample.alphas_cumprod)
    assert train.config.prediction_type == sample.config.prediction_type == prediction
    assert not train.config.clip_sample and not sample.config.clip_sample


def test_eta_one_is_the_ddpm_ancestral_step():
    """DDIM with eta=1 and temperature-scaled ``variance_noise`` takes DDPMScheduler's step."""
    head = tiny()
    ddim = head.sampling_scheduler()
    ddpm = DDPMScheduler(**head.scheduler_config, timestep_spacing=ddim.config.timestep_spacing)
    ddim.set_timesteps(10)
    ddpm.set_timesteps(10)
    torch.testing.assert_close(ddim.timesteps, ddpm.timesteps)
    x = torch.randn(3, C)
    for t in ddim.timesteps[:-1]:
        out = torch.randn(3, C)
        want = ddpm.step(out, t, x, generator=torch.Generator().manual_seed(int(t))).prev_sample
        noise = torch.randn(3, C, generator=torch.Generator().manual_seed(int(t)))
        x = ddim.step(out, int(t), x, eta=1.0, variance_noise=noise).prev_sample
        torch.testing.assert_close(x, want, atol=2e-4, rtol=1e-3)   # same formula, other rounding


def test_in_the_container_and_in_bfloat16(tmp_path):
    torch.manual_seed(0)
    args = ModelArgs.from_name("tiny", vocab_size=16)
    model = OmniModel.build(args, heads={"img": part(DiffusionHead, dim=args.dim, token_dim=C, width=32, depth=1)})
    ids, sel = torch.randint(0, 16, (2, 5)), torch.zeros(2, 5, dtype=torch.bool)
    sel[:, 2:] = True
    total, losses = model(ids, targets={"img": (sel, torch.randn(6, C))})
    total.backward()
    assert torch.isfinite(losses["img"])
    loaded = OmniModel.from_pretrained(model.save_pretrained(tmp_path), dtype=torch.bfloat16)
    z = loaded.backbone(input_ids=ids)[:, -1]                                  # (2, D) bf16
    out = loaded.heads["img"].sample(z, steps=4, cfg=2.0, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.bfloat16 and out.shape == (2, C) and torch.isfinite(out).all()
