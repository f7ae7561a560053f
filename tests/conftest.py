"""Shared fixtures: a fixed seed and a tiny randomly initialised model."""
import pytest
import torch

from backbone.container import OmniModel, part
from backbone.transformer import ModelArgs
from heads.lm import LMHead

TINY_VOCAB = 64


@pytest.fixture
def seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_model(seed) -> OmniModel:
    """2 layers, dim 32, 4 heads / 2 kv heads, block_size 64, tied LM head, eval mode."""
    args = ModelArgs.from_name("tiny", vocab_size=TINY_VOCAB)
    model = OmniModel.build(args, heads={"lm": part(LMHead, dim=args.dim, vocab_size=TINY_VOCAB)})
    return model.eval()


@pytest.fixture(scope="session")
def make_tiny_lm():
    """Factory: ``make_tiny_lm(vocab_size, **ModelArgs overrides)`` -> a seeded random tiny LM
    (for app and generator tests that need a checkpoint of a given vocabulary)."""
    def make(vocab_size: int, **overrides) -> OmniModel:
        torch.manual_seed(0)
        args = ModelArgs.from_name("tiny", vocab_size=vocab_size, **overrides)
        return OmniModel.build(args, heads={"lm": part(LMHead, dim=args.dim, vocab_size=vocab_size)})
    return make
