"""A text-to-image checkpoint that plans first (apps/t2i/layout.py, ``data.layout``): training rows,
the grammar-constrained plan, images, captions without the plan, init_from with a grown vocabulary."""
import pytest
import torch
from test_t2i import tiny_cfg  # tests/apps/test_t2i.py

from apps.t2i import recipe
from apps.t2i.data import BOI, BOS, EOI, WordVocab, grammar_words
from apps.t2i.layout import LayoutGrammar
from apps.t2i.model import ImageModel
from backbone.container import OmniModel
from modalities.image import PatchTokenizer
from modalities.shape_layout import LAYOUT_LEN, LAYOUT_WORDS, NONE, parse_layout


def layout_cfg(tmp_path, steps=2) -> dict:
    cfg = tiny_cfg(tmp_path, steps)
    cfg["data"]["layout"] = True
    cfg["model"]["args"]["block_size"] = 128
    return cfg


@pytest.fixture(scope="module")
def planner_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2i_layout")
    recipe.run(layout_cfg(out), out=str(out / "model"))
    return out / "model"


@pytest.fixture(scope="module")
def planner(planner_dir):
    return ImageModel.from_pretrained(planner_dir)


def vocab():
    return WordVocab(grammar_words(), LAYOUT_WORDS, LAYOUT_LEN)


def test_vocab_keeps_the_plan_out_of_prompts_and_captions(tmp_path):
    v = vocab()
    with pytest.raises(ValueError, match="'x3'"):
        v.encode("a red circle x3")
    plan = [v.stoi[w] for w in ["red", "circle", "s12", "x3", "y4"] + [NONE] * 15]
    ids = [v.mark, *plan, *v.encode("a red circle")]
    assert v.decode(ids) == "a red circle" and v.split_layout(ids) == (plan, v.encode("a red circle"))
    v.save(tmp_path)
    assert WordVocab.load(tmp_path).itos == v.itos and WordVocab.load(tmp_path).layout_len == LAYOUT_LEN


def test_training_rows_put_the_plan_after_the_caption_or_the_image():
    v, tok = vocab(), PatchTokenizer()
    task = recipe.ShapesT2ITask(v, tok, batch_size=16, caption_frac=0.5, caption_drop=0.0)
    ids = task.train_batch(0, 0, slice(0, 16))["input_ids"]
    seen = set()
    for row in ids.tolist():
        mark = row.index(v.mark)
        if row[1] == BOI:                                     # captioning: <bos> <boi> img <eoi> <layout> plan caption
            assert row[mark - 1] == EOI
            seen.add("cap")
        else:                                                 # text-to-image: <bos> caption <layout> plan <boi>
            assert row[0] == BOS and row[mark + 1 + LAYOUT_LEN] == BOI
            seen.add("gen")
        parse_layout([v.itos[i] for i in row[mark + 1:mark + 1 + LAYOUT_LEN]])   # a valid plan
    assert seen == {"cap", "gen"}


def test_grammar_allows_one_word_class_per_slot():
    v = vocab()
    g = LayoutGrammar(v)
    names = lambda m: {v.itos[i] for i in m.nonzero()[:, 0].tolist()}  # noqa: E731
    first = g.allowed([[]])[0]
    assert names(first) == {"red", "orange", "yellow", "green", "blue", "purple"}           # no 'none' first
    row = [v.stoi[w] for w in ["red", "circle", "s14"]]
    assert names(g.allowed([row])[0]) == {f"x{i}" for i in range(1, 18)}                     # 14 px fits x1..x17
    row = [v.stoi[w] for w in ["red", "circle", "s14", "x3", "y4"]]
    assert NONE in names(g.allowed([row])[0])
    ended = row + [v.stoi[NONE]]
    assert names(g.allowed([ended])[0]) == {NONE}


def test_a_planner_writes_valid_plans_and_draws(planner):
    images, plans = planner.text_to_image(["a red circle to the left of a blue square", "three green crosses"],
                                          steps=2, return_layouts=True, seed=3)
    assert images.shape == (2, 3, 32, 32) and len(plans) == 2
    for p in plans:
        assert len(p) == LAYOUT_LEN and len(parse_layout(p)) >= 1            # the grammar holds, untrained
    again, same = planner.text_to_image(["a red circle to the left of a blue square", "three green crosses"],
                                        steps=2, return_layouts=True, seed=3)
    assert torch.equal(images, again) and plans == same
    assert planner.text_to_image("a red circle", steps=2).shape == (1, 3, 32, 32)   # images only by default
    with pytest.raises(ValueError, match="layout_temperature"):
        planner.text_to_image("a red circle", steps=2, layout_temperature=-1)


def test_a_planner_captions_without_its_plan(planner):
    images = torch.rand(2, 3, 32, 32)
    caps = planner.caption(images)
    assert all(not (set(c.split()) & set(LAYOUT_WORDS)) for c in caps)
    plans = planner.read_layouts(images)
    assert all(len(p) == LAYOUT_LEN for p in plans)
    lp = planner.caption_logprob(images, ["a red circle", "two blue squares"])
    lp_plan = planner.caption_logprob(images, ["a red circle", "two blue squares"],
                                      [[planner.vocab.itos[i] for i in p] for p in plans])
    assert lp.shape == lp_plan.shape == (2,) and (lp_plan < lp).all()          # the plan's words cost too
    best = planner.text_to_image(["a red circle"], steps=2, rerank=2)
    assert best.shape == (1, 3, 32, 32)


def test_prompt_room_counts_the_plan(planner):
    room = planner.model.args.block_size - 64 - 2 - (1 + LAYOUT_LEN)
    with pytest.raises(ValueError, match=f"at most {room}"):
        planner.check_prompt(" ".join(["a red circle and a blue square"] * 10))


def test_init_from_grows_the_vocabulary(tmp_path):
    base = tmp_path / "base"
    recipe.run(tiny_cfg(tmp_path / "b"), out=str(base))
    cfg = layout_cfg(tmp_path / "l")
    cfg["model"]["init_from"] = str(base)
    v = vocab()
    model = recipe.build_model(cfg, v, PatchTokenizer())
    src, old = OmniModel.from_pretrained(base), WordVocab.load(base)
    rows = torch.tensor([v.stoi[w] for w in old.itos])
    emb, src_emb = model.backbone.tok_embeddings.weight, src.backbone.tok_embeddings.weight
    assert torch.equal(emb[rows], src_emb) and torch.equal(model.heads["lm"].proj.weight[rows],
                                                           src.heads["lm"].proj.weight)
    new = model.state_dict()
    assert all(torch.equal(new[k], w) for k, w in src.state_dict().items() if w.shape == new[k].shape)
    cfg["model"]["args"]["dim"] = 64
    with pytest.raises(ValueError, match="backbone config differs"):
        recipe.build_model(cfg, v, PatchTokenizer())


def test_the_app_and_the_cli_show_the_plan(planner, planner_dir, tmp_path, capsys):
    from types import SimpleNamespace

    from apps.t2i.app import make_generate_fn
    from apps.t2i.model import cli_text_to_image
    gallery = make_generate_fn(planner)("two blue squares", 2, 2, 3.0, 1.0, 0)
    assert len(gallery) == 2 and all(label.startswith("two blue squares #") and " | plan: " in label
                                     for _, label in gallery)
    out = tmp_path / "x.png"
    a = SimpleNamespace(n=2, rerank=1, out=str(out), model=str(planner_dir), device="cpu", prompt="two blue squares",
                        steps=2, cfg=3.0, temperature=1.0, seed=0)
    cli_text_to_image(a)
    lines = capsys.readouterr().out.splitlines()
    assert out.is_file() and lines[1].startswith("plan 1: ") and lines[2].startswith("plan 2: ")
    with pytest.raises(ValueError, match="layout_temperature must be in"):
        cli_text_to_image(SimpleNamespace(**{**vars(a), "layout_temperature": float("nan")}))


def test_the_api_worker_returns_each_image_with_its_plan(planner_dir):
    from apps.api.workers import ImageWorker
    w = ImageWorker("planner", str(planner_dir))
    try:
        out = w._run((2, 3.0, 1.0, 1, (5, "k")), ["a red circle", "two blue squares"])
        assert len(out) == 2 and all(png.startswith(b"\x89PNG") and " px at (" in plan for png, plan in out)
        again = w._run((2, 3.0, 1.0, 1, (5, "k")), ["a red circle", "two blue squares"])
        assert again == out                                        # seeded: the same images and plans
    finally:
        w.close()
