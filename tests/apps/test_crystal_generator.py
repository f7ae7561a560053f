"""The crystal generator and ``omniar crystal`` on a tiny random CIF model (no shipped weights)."""
from __future__ import annotations

import csv

import pytest
import torch

from modalities.crystal import CIFTokenizer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, make_tiny_lm):
    tok = CIFTokenizer()
    folder = tmp_path_factory.mktemp("cif-ckpt")
    make_tiny_lm(tok.vocab_size, block_size=256).save_pretrained(folder, tokenizer=tok)
    return folder


@pytest.fixture(scope="module")
def gen(ckpt):
    from apps.crystal.model import CrystalGenerator
    return CrystalGenerator.from_pretrained(str(ckpt))


def test_generate_ranks_and_explains(gen):
    cands = gen.generate("SrTiO3", n=3, seed=0, max_new_tokens=40)
    assert len(cands) == 3
    for c in cands:
        assert c.cif.startswith("data_Sr1Ti1O3\n")
        assert not c.valid and c.reasons  # a random model writes nonsense; every failure says why
    keys = [(not c.valid, -c.logprob) for c in cands]
    assert keys == sorted(keys)
    again = gen.generate("SrTiO3", n=3, seed=0, max_new_tokens=40)
    assert [c.cif for c in again] == [c.cif for c in cands]  # seeded


def test_prompt_with_space_group_and_sample_batch(gen):
    out = gen.sample(gen.prompt("C8", "Fd-3m"), n=2, seed=1, max_new_tokens=5)
    assert all(t.startswith("data_C8\n_symmetry_space_group_name_H-M Fd-3m\n") for t, _, _ in out)
    assert all(ids[:len(gen.tok.encode(gen.prompt("C8", "Fd-3m")))] == gen.tok.encode(gen.prompt("C8", "Fd-3m"))
               for _, _, ids in out)


def test_logprobs_match_a_manual_forward(gen):
    text = gen.prompt("SrTiO3") + "_cell_length_a 3.9"
    ids = gen.tok.encode(text)
    lp = gen.logprobs([ids], 3)[0]
    with torch.no_grad():
        logits = gen.model.heads["lm"](gen.model(torch.tensor([ids[:-1]])))
        ref = torch.log_softmax(logits.float(), -1)[0, torch.arange(2, len(ids) - 1), torch.tensor(ids[3:])].mean()
    assert abs(lp - float(ref)) < 1e-5


@pytest.mark.parametrize("comp, sg, message", [
    ("Xx3", None, "unknown element 'Xx'"), ("Sr(Ti", None, "malformed composition"),
    ("C500", None, "this model handles at most"), ("", None, "composition is empty"),
    ("SrTiO3", "Pq", "unknown space group"),
])
def test_bad_input(gen, comp, sg, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        gen.generate(comp, n=2, spacegroup=sg)


def test_not_a_crystal_model_is_refused(tmp_path, make_tiny_lm):
    from apps.crystal.model import CrystalGenerator
    from modalities.text import CharTokenizer
    tok = CharTokenizer.train("abc")
    make_tiny_lm(tok.vocab_size).save_pretrained(tmp_path, tokenizer=tok)
    with pytest.raises(ValueError, match="not a crystal model"):
        CrystalGenerator.from_pretrained(str(tmp_path))


def test_cli_writes_cifs_and_summary(ckpt, tmp_path, capsys):
    from apps.cli import main
    out = tmp_path / "out"
    assert main(["crystal", "SrTiO3", "--n", "2", "--model", str(ckpt), "-o", str(out), "--max-new-tokens", "30"]) == 0
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["rank"] for r in rows] == ["1", "2"] and all(r["reasons"] for r in rows)
    assert sorted(p.name for p in out.glob("*.cif")) == ["SrTiO3_01.cif", "SrTiO3_02.cif"]
    assert "0/2 valid" in capsys.readouterr().out
    assert main(["crystal", "Qq2", "--model", str(ckpt), "-o", str(out)]) == 2
    assert "unknown element 'Qq'" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["crystal", "SrTiO3", "--n", "1", "--model", str(ckpt), "-o", str(tmp_path / "afile"),
                 "--max-new-tokens", "5"]) == 2
    assert "is an existing file" in capsys.readouterr().err


def test_rank_candidates_orders_valid_then_votes_then_likelihood():
    from pymatgen.core import Lattice, Structure
    from apps.crystal.model import Candidate, rank_candidates
    from modalities.crystal_checks import Validity
    cubic = lambda a: Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                                [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]])
    rock = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [.5, .5, .5]])
    good = lambda s: Validity(structure=s)
    cands = [Candidate("a", good(rock), -0.1, True, 0), Candidate("b", good(cubic(3.9)), -0.3, True, 1),
             Candidate("c", good(cubic(3.95)), -0.2, True, 2), Candidate("d", Validity(["bonds: x"]), -0.01, True, 3)]
    assert [c.cif for c in rank_candidates(cands)] == ["a", "c", "b", "d"]
    assert [c.cif for c in rank_candidates(cands, "consensus")] == ["c", "b", "a", "d"]
    assert [c.cif for c in rank_candidates(cands[::-1], "consensus")] == ["c", "b", "a", "d"]  # order-free


def test_full_cif_recomputes_the_volume():
    import re
    from apps.crystal.model import Candidate
    from modalities.crystal import preprocess_cif
    from modalities.crystal_checks import check_cif
    import json
    from pathlib import Path
    raw = json.loads((Path(__file__).parents[1] / "modalities" / "data" / "crystals_test_sample.json").read_text())
    text = preprocess_cif(raw["carbon_24"][0])
    vol = re.search(r"^_cell_volume (\S+)$", text, re.M).group(1)
    wrong = text.replace(f"_cell_volume {vol}", "_cell_volume 1.0000")
    v = check_cif(wrong)
    assert v.valid and v.volume_error > 0.9  # the declared volume is redundant text, reported, not a failure
    full = Candidate(wrong, v, 0.0, True).full_cif()
    assert abs(float(re.search(r"^_cell_volume (\S+)$", full, re.M).group(1)) - float(vol)) < 0.01
    assert "_symmetry_equiv_pos_as_xyz" in full
