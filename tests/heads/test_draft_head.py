"""Draft head: shapes, identity start, distillation loss that learns, fallback policy."""
import pytest
import torch

from backbone.container import OmniModel, part
from backbone.sampling import SamplingParams
from heads.draft import DraftHead
from heads.lm import LMHead
from backbone.transformer import ModelArgs


def model_with_head(seed=0) -> OmniModel:
    torch.manual_seed(seed)
    args = ModelArgs.from_name("tiny", vocab_size=16)
    return OmniModel.build(args, heads={"lm": part(LMHead, dim=args.dim, vocab_size=16),
                                        "draft": part(DraftHead, dim=args.dim, vocab_size=16, unroll=2)}).eval()


def test_starts_as_the_identity_on_the_state():
    head = DraftHead(8, 10)
    f, e = torch.randn(3, 8), torch.randn(3, 8)
    torch.testing.assert_close(head(f, e), f)


def test_draft_shapes_greedy_and_sampled(seed):
    m = model_with_head()
    head = m.heads["draft"]
    h, tok = torch.randn(2, m.args.dim), torch.tensor([1, 2])
    t, lengths, q = head.sample(h, token=tok, gamma=5)
    assert t.shape == (2, 5) and lengths.tolist() == [5, 5] and q is None
    g = torch.Generator().manual_seed(0)
    t, lengths, q = head.sample(h, token=tok, gamma=3, params=SamplingParams(temperature=1.0), generator=g)
    assert t.shape == (2, 3) and q.shape == (2, 3, 16)
    torch.testing.assert_close(q.sum(-1), torch.ones(2, 3, dtype=q.dtype))
    t, lengths, _ = head.sample(h, token=tok, gamma=4, fallback=1.01)  # never sure enough: no draft
    assert t.shape[1] == 0 and lengths.tolist() == [0, 0]


def test_shares_the_models_embedding_and_lm_head_without_owning_them(tmp_path):
    """attach: the head uses the model's parts, but its state dict holds only its own weights,
    so a checkpoint keeps its keys and loads back (strict) with the head attached again."""
    m = model_with_head()
    emb, lm = m.heads["draft"].shared
    assert emb is m.backbone.tok_embeddings and lm is m.heads["lm"]
    assert all(k.startswith(("fuse.", "blocks.")) for k in m.heads["draft"].state_dict())
    back = OmniModel.from_pretrained(m.save_pretrained(tmp_path / "m"))
    assert back.heads["draft"].shared[1] is back.heads["lm"]
    assert set(back.state_dict()) == set(m.state_dict())
    with pytest.raises(RuntimeError, match="not attached"):
        DraftHead(8, 10).loss(torch.randn(1, 4, 8), torch.zeros(1, 4, dtype=torch.long))


def test_distillation_on_the_frozen_model_learns_its_next_tokens():
    """Through OmniModel.forward (the trainer's path) with only the head trainable: the loss
    falls, and the backbone and LM head do not move."""
    m = model_with_head().train()
    for name, p in m.named_parameters():
        p.requires_grad_(name.startswith("heads.draft."))
    before = {k: v.clone() for k, v in m.state_dict().items() if not k.startswith("heads.draft.")}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    ids = torch.randint(0, 16, (4, 24), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(60):
        loss, parts = m(ids, targets={"draft": ids})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # the soft cross-entropy cannot go below the model's own entropy (~log 16 for a random
    # model): ask for a clear fall, not a fraction of the start
    assert set(parts) == {"draft"} and losses[-1] < losses[0] - 0.3, losses[::10]
    after = m.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
