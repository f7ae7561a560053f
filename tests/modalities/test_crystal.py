"""Canonical CIF text, the CIF tokenizer, prompts (modalities/crystal.py)."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from modalities.crystal import (CIFTokenizer, SG_KEY, cif_to_structure, make_prompt, parse_composition,
                                preprocess_cif, restore_symmetry_ops, space_groups)
from modalities.text import load_tokenizer

SAMPLE = json.loads((Path(__file__).parent / "data" / "crystals_test_sample.json").read_text())
RAW = SAMPLE["perov_5"] + SAMPLE["carbon_24"]


@pytest.fixture(scope="module")
def canon():
    return [preprocess_cif(c) for c in RAW]


@pytest.fixture(scope="module")
def tok():
    return CIFTokenizer()


def test_canonical_form(canon):
    for c in canon:
        first = c.split("\n", 1)[0]
        assert re.fullmatch(r"data_([A-Z][a-z]?\d+)+", first)           # full-cell counts
        assert "_symmetry_equiv_pos_as_xyz" not in c                     # operators dropped
        assert not re.search(r"\d\.\d{5,}", c)                           # 4 decimals at most
        assert "  " not in c and c.endswith("\n") and "\n\n" not in c and "-0.0000" not in c
    # perov_5 CIFs are 5-atom cells, carbon_24 all carbon
    assert all(c.startswith("data_C") and re.match(r"data_C\d+\n", c) for c in canon[4:])


def test_restored_cif_is_the_same_structure(canon):
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure
    m = StructureMatcher()
    for raw, c in zip(RAW, canon):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            orig = Structure.from_str(raw, fmt="cif")
        s = cif_to_structure(c)
        assert s.composition.reduced_composition == orig.composition.reduced_composition
        assert m.fit(s, orig)
        full = restore_symmetry_ops(c)
        assert "loop_\n_symmetry_equiv_pos_site_id\n_symmetry_equiv_pos_as_xyz\n1 'x, y, z'\n" in full


def test_preprocessing_is_idempotent_up_to_rounding(canon):
    # the same lines and words; numbers move at most in the last digit (the volume is recomputed
    # from the rounded cell)
    for c in canon:
        again = preprocess_cif(restore_symmetry_ops(c))
        words, words2 = c.split(), again.split()
        assert len(words) == len(words2)
        for a, b in zip(words, words2):
            if re.fullmatch(r"-?\d+\.\d+", a):
                assert abs(float(a) - float(b)) <= 2e-3 * max(1.0, abs(float(a))), (a, b)
            else:
                assert a == b


def test_tokenizer_round_trips_exactly(canon, tok, tmp_path):
    for c in canon:
        ids = tok.encode(c)
        assert tok.decode(ids) == c
        assert len(ids) < len(c)  # keywords and space groups are single tokens
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.kind == "cif" and again.itos == tok.itos and again.encode(canon[0]) == tok.encode(canon[0])


def test_tokenizer_longest_match_and_space_group_tokens(tok):
    ids = tok.encode(f"data_P1Cs1\n{SG_KEY} P1\n")
    pieces = [tok.itos[i] for i in ids]
    assert pieces == ["data_", "P", "1", "Cs", "1", "\n", SG_KEY, " ", "P1_sg", "\n"]
    assert tok.decode(ids) == f"data_P1Cs1\n{SG_KEY} P1\n"
    assert [tok.itos[i] for i in tok.encode("1\n\ndata_")] == ["1", "\n\n", "data_"]
    assert tok.itos[tok.eos_id] == "\n\n"
    assert len(space_groups()) >= 230 and {"Pm-3m", "P2_1/c", "Fd-3m", "P6_3/mmc"} <= set(space_groups())


def test_tokenizer_unknown_symbol_is_a_clear_error(tok):
    with pytest.raises(ValueError, match=r"unknown symbol '\?\?' on line 2"):
        tok.encode("data_C1\n??\n")
    with pytest.raises(ValueError, match="unknown symbol"):
        tok.encode(f"{SG_KEY} Q9\n")


def test_props_block(canon):
    c = preprocess_cif(RAW[0], props=True)
    assert "_atom_type_electronegativity" in c and c.index("_atom_type_symbol") < c.index("_atom_site_type_symbol")
    assert CIFTokenizer().decode(CIFTokenizer().encode(c)) == c
    assert cif_to_structure(c).composition == cif_to_structure(canon[0]).composition


@pytest.mark.parametrize("text, formula", [("SrTiO3", "Sr1Ti1O3"), ("Sr2Ti2O6", "Sr2Ti2O6"), ("C24", "C24"),
                                           (" O3TiSr ", "Sr1Ti1O3"), ("CC", "C2")])
def test_prompts(text, formula):
    assert make_prompt(text) == f"data_{formula}\n"
    assert make_prompt(text, "Pm-3m") == f"data_{formula}\n{SG_KEY} Pm-3m\n"


@pytest.mark.parametrize("text, message", [
    ("", "composition is empty"), ("   ", "composition is empty"), (None, "composition is empty"),
    ("Xx2O", "unknown element 'Xx'"), ("Sr(TiO3)", "malformed composition"), ("3Sr", "malformed composition"),
    ("SrTiO3.5", "malformed composition"), ("srtio3", "malformed composition"), ("Sr0Ti", "zero atoms of Sr"),
    ("C100", "at most 40"),
])
def test_bad_compositions(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_composition(text, max_atoms=40)


def test_bad_space_group_and_cif():
    with pytest.raises(ValueError, match="unknown space group 'Pm3x'"):
        make_prompt("SrTiO3", "Pm3x")
    for bad in ["", "data_x\nnonsense", "_cell_length_a 3\n"]:
        with pytest.raises(ValueError, match="CIF"):
            preprocess_cif(bad)
    with pytest.raises(ValueError, match="space-group line"):
        restore_symmetry_ops("data_C1\n")
    with pytest.raises(ValueError, match="unknown space group"):
        cif_to_structure(f"data_C1\n{SG_KEY} Zz\n")
