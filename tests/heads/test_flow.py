"""Flow-matching head (FlowAR / xAR, rectified flow): zero-init, gradients into z, a toy
conditional distribution, classifier-free guidance, temperature, reproducibility, argument
checks and the diffusers FlowMatch Euler step."""
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from heads.diffusion import MLPAdaLN
from heads.flow import FlowHead

from continuous_toy import (CODES, TARGETS, C, D, K, Probe, check_backprop_into_z,  # tests/heads/continuous_toy.py
                            check_cfg_one_equals_conditional, train_toy)


def tiny(**kw) -> FlowHead:
    torch.manual_seed(0)
    return FlowHead(dim=D, token_dim=C, width=32, depth=2, **kw)


@pytest.fixture(scope="module", params=["logit_normal", "uniform"])
def trained(request) -> FlowHead:
    """A head trained for 400 Adam steps on z = code k -> token TARGETS[k] + N(0, 0.05^2)."""
    torch.manual_seed(0)
    return train_toy(FlowHead(D, C, width=64, depth=2, time_sampling=request.param))


def test_shapes_and_zero_init_output_exactly_zero():
    head = tiny()
    assert isinstance(head.net, MLPAdaLN)            # the diffusion head's network, reused
    x, t, z = torch.randn(5, C), torch.rand(5) * 1000, torch.randn(5, D)
    assert torch.equal(head.net(x, t, z), torch.zeros(5, C))
    g = torch.Generator().manual_seed(0)
    out = head.sample(z, steps=3, generator=g)
    # zero velocity: the Euler steps never move x, so the sample is the initial noise
    torch.testing.assert_close(out, torch.randn(5, C, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (5, C) and out.dtype == z.dtype


def test_loss_is_the_rectified_flow_objective():
    head = tiny(diffusion_batch_mul=1)
    head.net = Probe()
    z, x0 = torch.randn(6, D), torch.randn(6, C)
    torch.manual_seed(1)
    got = head.loss(z, x0, drop_mask=torch.zeros(6, dtype=torch.bool))
    torch.manual_seed(1)                             # replay the same noise and sigma draws
    noise = torch.randn_like(x0)
    sigma = torch.sigmoid(torch.randn(6))[:, None]
    x_t = (1 - sigma) * x0 + sigma * noise
    want = ((head.net(x_t, 1000 * sigma[:, 0], z) - (noise - x0)) ** 2).mean()
    torch.testing.assert_close(got, want)


def test_loss_is_finite_and_backprops_into_z():
    check_backprop_into_z(tiny())


def test_learns_a_conditional_toy_distribution(trained):
    k = torch.arange(K).repeat_interleave(32)
    x = trained.sample(CODES[k], steps=25, cfg=1.0, generator=torch.Generator().manual_seed(1))
    err = (x - TARGETS[k]).norm(dim=-1)
    for j in range(K):                               # each code lands on its own target
        assert err[k == j].mean() < 0.5, (trained.time_sampling, j, err[k == j].mean())
    assert torch.cdist(TARGETS, TARGETS).add(torch.eye(K) * 99).min() > 3


def test_cfg_combines_cond_and_null_velocities():
    head = tiny()
    head.net = Probe()
    x, t, z = torch.randn(4, C), torch.full((4,), 500.0), torch.randn(4, D)
    null = head.null_z.detach().expand(4, D)
    cond, uncond = head.net(x, t, z), head.net(x, t, null)
    torch.testing.assert_close(head.model_output(x, t, z, torch.ones(4), null), cond)
    out = head.model_output(x, t, z, 3.0, null)      # extrapolates away from the null velocity
    torch.testing.assert_close(out, uncond + 3 * (cond - uncond))
    torch.testing.assert_close((out - uncond).norm(), 3 * (cond - uncond).norm())


def test_cfg_one_in_sampling_equals_conditional(trained):
    check_cfg_one_equals_conditional(trained)


def test_temperature_zero_is_deterministic(trained):
    z = CODES[torch.arange(K).repeat_interleave(16)]
    a = trained.sample(z, steps=10, temperature=0.0, generator=torch.Generator().manual_seed(0))
    b = trained.sample(z, steps=10, temperature=0.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    hot = trained.sample(z, steps=10, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert hot.view(K, 16, C).var(1).sum() > 0
    assert (a - TARGETS[torch.arange(K).repeat_interleave(16)]).norm(dim=-1).mean() < 0.5


def test_seeded_generator_reproduces(trained):
    z = CODES[[0, 1, 2]]
    s = lambda seed: trained.sample(z, steps=5, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(s(7), s(7))
    assert not torch.equal(s(7), s(8))


def test_euler_loop_matches_the_scheduler_grid():
    """The sampler walks diffusers' sigma grid 1 -> 0 with x <- x + (sigma_next - sigma) v."""
    head = tiny()
    head.net = Probe()
    z = torch.randn(2, D)
    got = head.sample(z, steps=4, generator=torch.Generator().manual_seed(0))
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    sched.set_timesteps(4)
    x = torch.randn(2, C, generator=torch.Generator().manual_seed(0))
    for i, t in enumerate(sched.timesteps):
        x = x + (sched.sigmas[i + 1] - sched.sigmas[i]) * head.net(x, t.expand(2), z)
    torch.testing.assert_close(got, x)
    assert sched.sigmas[0] == 1 and sched.sigmas[-1] == 0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="time sampling"):
        FlowHead(D, C, time_sampling="cosine")
    with pytest.raises(ValueError, match="diffusion_batch_mul"):
        FlowHead(D, C, diffusion_batch_mul=0)
    head = tiny()
    z = torch.randn(2, D)
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match="steps"):
            head.sample(z, steps=steps)
    with pytest.raises(ValueError, match="NaN"):
        head.sample(torch.tensor([[0.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        head.loss(torch.full((1, D), float("nan")), torch.zeros(1, C))
    with pytest.raises(ValueError, match="target"):
        head.loss(z, torch.zeros(3, C))
    with pytest.raises(ValueError, match="z_null"):
        head.sample(z, cfg=2.0, z_null=torch.randn(3, D))
