"""Validity checks (modalities/crystal_checks.py): ground truth passes, each corruption is caught
with its own reason, and no text makes the checker raise."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from modalities.crystal import preprocess_cif
from modalities.crystal_checks import check_cif, nearest_neighbour_ratios

SAMPLE = json.loads((Path(__file__).parent / "data" / "crystals_test_sample.json").read_text())


@pytest.fixture(scope="module")
def perov():
    return preprocess_cif(SAMPLE["perov_5"][3])


@pytest.fixture(scope="module")
def carbon():
    return preprocess_cif(SAMPLE["carbon_24"][0])


def test_ground_truth_is_valid():
    for raw in SAMPLE["perov_5"] + SAMPLE["carbon_24"]:
        v = check_cif(preprocess_cif(raw))
        assert v.valid, v.reasons
        assert v.structure is not None and v.bond_range[0] >= 0.6


def _sub(text, pattern, repl):
    out = re.sub(pattern, repl, text, count=1, flags=re.M)
    assert out != text, pattern
    return out


@pytest.mark.parametrize("corrupt, reason", [
    (lambda t: _sub(t, r"^_chemical_formula_sum .*$", "_chemical_formula_sum 'Ba1 Ti1 O3'"), "formula"),
    (lambda t: _sub(t, r"^data_\S+", "data_Ba9"), "formula"),
    (lambda t: _sub(t, r"^(\S+ \S+) 1 ", r"\1 2 "), "sites"),
    (lambda t: _sub(t, r"^_cell_length_a \S+", "_cell_length_a 0.3000"), "cell"),
    (lambda t: _sub(t, r"^_cell_length_b \S+", "_cell_length_b 90.0000"), "cell"),  # 2 atoms per 1000 Å^3
    (lambda t: _sub(t, r"^_cell_angle_beta \S+", "_cell_angle_beta 179.0000"), "cell"),
    (lambda t: _sub(t, r"^_symmetry_space_group_name_H-M \S+", "_symmetry_space_group_name_H-M Zz9"), "parse"),
    (lambda t: t[: t.index("loop_")], "sites"),
])
def test_each_corruption_has_its_reason(perov, corrupt, reason):
    v = check_cif(corrupt(perov))
    assert not v.valid
    assert any(r.startswith(reason) for r in v.reasons), v.reasons


def test_wrong_space_group_is_caught(carbon):
    # declare a lower-symmetry group than the structure has: the ops expand to the same atoms,
    # but the analyser finds the true group
    sg = re.search(r"^_symmetry_space_group_name_H-M (\S+)$", carbon, re.M).group(1)
    assert sg != "P1"
    v = check_cif(_sub(carbon, r"^_symmetry_space_group_name_H-M \S+", "_symmetry_space_group_name_H-M P1"))
    assert any(r.startswith(("space group", "sites")) for r in v.reasons), v.reasons


def test_overlapping_atoms_fail_the_bond_check():
    from pymatgen.core import Lattice, Structure
    s = Structure(Lattice.cubic(4.0), ["C", "C"], [[0, 0, 0], [0.05, 0, 0]])
    assert nearest_neighbour_ratios(s).min() < 0.6
    isolated = Structure(Lattice.cubic(12.0), ["C", "C"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert nearest_neighbour_ratios(isolated).max() > 2.6
    from pymatgen.io.cif import CifWriter
    from modalities.crystal import canonicalize
    v = check_cif(canonicalize(str(CifWriter(s))))
    assert any(r.startswith("bonds") for r in v.reasons), v.reasons


@pytest.mark.parametrize("junk", ["", "data_", "loop_\n_atom_site_type_symbol\n", "\x00\x01", "data_C1\n" * 50,
                                  "data_C1\n_cell_length_a nan\n_cell_length_b inf\n"])
def test_junk_never_raises(junk):
    v = check_cif(junk)
    assert not v.valid and v.reasons
