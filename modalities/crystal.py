"""Crystal modality: canonical CIF text and its tokenizer (CrystaLLM, Antunes et al. 2024).

A structure becomes one line-oriented text the LM can learn:

1. pymatgen symmetrises it (``CifWriter(symprec=0.1)``, which refines to the standard setting);
2. the ``data_`` line carries the full-cell composition (``data_Sr1Ti1O3``), so a prompt fixes
   both the elements and the number of atoms;
3. the symmetry-operator loop is dropped: the space-group line already determines it, and
   :func:`restore_symmetry_ops` writes it back from pymatgen's tables before parsing;
4. numbers are rounded to 4 decimals, runs of blanks become one space;
5. optionally (``props=True``) a CrystaLLM block of per-element electronegativity, atomic radius
   and average ionic radius follows the header.

The tokenizer is a fixed vocabulary (CIF keywords, space-group symbols, element symbols, digits,
punctuation) matched longest-first, so canonical CIFs round-trip exactly. Space-group symbols
are tokens of their own, written with a ``_sg`` suffix inside the tokenizer only, so ``P1``
(a space group) never collides with ``P1`` (one phosphorus atom).
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import re
import sys
import warnings
from pathlib import Path

from tqdm import tqdm

from backbone.container import atomic_write_text

# pymatgen and spglib are imported where they are used: they take seconds to load, and the
# tokenizer and the prompts work without them.

TOKENIZER_FILE = "tokenizer.json"  # what modalities/text.load_tokenizer reads (text.py imports this module)

SG_KEY = "_symmetry_space_group_name_H-M"
HEADER_KEYS = [SG_KEY, "_cell_length_a", "_cell_length_b", "_cell_length_c", "_cell_angle_alpha",
               "_cell_angle_beta", "_cell_angle_gamma", "_symmetry_Int_Tables_number",
               "_chemical_formula_structural", "_chemical_formula_sum", "_cell_volume",
               "_cell_formula_units_Z"]
SITE_KEYS = ["_atom_site_type_symbol", "_atom_site_label", "_atom_site_symmetry_multiplicity",
             "_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z", "_atom_site_occupancy"]
PROP_KEYS = ["_atom_type_symbol", "_atom_type_electronegativity", "_atom_type_radius",
             "_atom_type_ionic_radius"]
OPS_KEYS = ["_symmetry_equiv_pos_site_id", "_symmetry_equiv_pos_as_xyz"]
KEYWORDS = ["data_", "loop_"] + HEADER_KEYS + SITE_KEYS + PROP_KEYS + OPS_KEYS
PUNCT = ["\n\n", "\n", " ", ".", "-", "+", "'", ",", "/", "(", ")", "x", "y", "z"]
DIGITS = list("0123456789")
END = "\n\n"  # CIFs are separated by one blank line; "\n\n" is one token, the stop token


@functools.cache
def elements() -> list[str]:
    from pymatgen.core import Element
    return [e.symbol for e in Element]


@functools.cache
def space_groups() -> dict[str, int]:
    """Every Hermann-Mauguin short symbol spglib reports (all 530 settings) -> IT number."""
    import spglib
    out = {}
    for hall in range(1, 531):
        t = spglib.get_spacegroup_type(hall)
        out.setdefault(t.international_short, t.number)
    return out


def _round(value: str, decimals: int = 4) -> str:
    s = f"{float(value):.{decimals}f}"
    return "0." + "0" * decimals if float(s) == 0 else s  # no "-0.0000"


def full_formula(composition) -> str:
    """pymatgen Composition -> ``Sr1Ti1O3`` (electronegativity order, explicit counts)."""
    return composition.formula.replace(" ", "")


def preprocess_cif(cif: str, symprec: float = 0.1, decimals: int = 4, props: bool = False) -> str:
    """Any CIF pymatgen reads -> canonical CrystaLLM text (ends with one newline).

    Raises ValueError with the parser's reason for malformed, empty or partially occupied CIFs.
    """
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifWriter
    if not isinstance(cif, str) or not cif.strip():
        raise ValueError("the CIF is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(cif, fmt="cif")
    except Exception as e:  # pymatgen raises many types for bad files
        raise ValueError(f"malformed CIF: {str(e).strip() or type(e).__name__}") from None
    if not structure.is_ordered:
        raise ValueError("the CIF has partial occupancies; only ordered structures are supported")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = str(CifWriter(structure, symprec=symprec))
    return canonicalize(raw, decimals, props)


def canonicalize(raw: str, decimals: int = 4, props: bool = False) -> str:
    """pymatgen ``CifWriter`` text -> canonical text (see module docstring)."""
    from pymatgen.core import Composition
    lines, out, i = [ln.strip() for ln in raw.strip().splitlines()], [], 0
    numeric = set(HEADER_KEYS[1:7] + ["_cell_volume"])
    while i < len(lines):
        ln = lines[i]
        if not ln or ln.startswith(("#", "data_")):  # the data_ line is rewritten below
            i += 1
        elif ln == "loop_":
            keys = []
            i += 1
            while i < len(lines) and lines[i].startswith("_"):
                keys.append(lines[i])
                i += 1
            rows = []
            while i < len(lines) and lines[i] and not lines[i].startswith(("_", "loop_", "data_")):
                rows.append(lines[i])
                i += 1
            if keys[0] == OPS_KEYS[0]:
                continue  # the space group stands for the operators (restore_symmetry_ops)
            out.append("loop_")
            out.extend(keys)
            for r in rows:
                f = r.split()
                if keys == SITE_KEYS:
                    f = f[:3] + [_round(x, decimals) for x in f[3:6]] + [f"{float(f[6]):g}"]
                out.append(" ".join(f))
        else:
            key, _, value = ln.partition(" ")
            value = value.strip()
            if key in numeric:
                value = _round(value, decimals)
            elif key == SG_KEY:  # CifWriter without symprec writes 'P 1'
                value = value.strip("'").replace(" ", "")
            out.append(f"{key} {value}")
            i += 1
    text = "\n".join(out) + "\n"
    sums = re.search(r"^_chemical_formula_sum (.+)$", text, re.M)
    comp = Composition(sums.group(1).strip("'"))
    text = f"data_{full_formula(comp)}\n" + text
    if props:
        text = add_props_block(text, comp, decimals)
    return text


def add_props_block(text: str, composition, decimals: int = 4) -> str:
    """Insert CrystaLLM's per-element property loop before the atom-site loop."""
    from pymatgen.core import Element
    rows = []
    for el in composition.elements:
        e = Element(el.symbol)
        vals = [e.X, float(e.atomic_radius or 0), float(e.average_ionic_radius or 0)]
        rows.append(" ".join([el.symbol] + [_round(str(v), decimals) for v in vals]))
    block = "\n".join(["loop_", *PROP_KEYS, *rows]) + "\n"
    k = text.index("loop_\n" + SITE_KEYS[0])
    return text[:k] + block + text[k:]


def restore_symmetry_ops(text: str) -> str:
    """Canonical text -> a full CIF: write the operator loop of the declared space group back.

    Raises ValueError when the space-group line is missing or names no known group.
    """
    from pymatgen.symmetry.groups import SpaceGroup
    m = re.search(rf"^{re.escape(SG_KEY)} (\S+)\s*$", text, re.M)
    if not m:
        raise ValueError("no space-group line")
    symbol = m.group(1).strip("'")
    if symbol not in space_groups():
        raise ValueError(f"unknown space group {symbol!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ops = SpaceGroup(symbol).symmetry_ops
    except Exception:
        ops = SpaceGroup.from_int_number(space_groups()[symbol]).symmetry_ops
    xyz = sorted({op.as_xyz_str() for op in ops}, key=lambda o: (o != "x, y, z", o))  # identity first
    loop = ["loop_", *OPS_KEYS] + [f"{i} '{o}'" for i, o in enumerate(xyz, 1)]
    k = text.find("loop_\n" + PROP_KEYS[0])
    k = k if k >= 0 else text.find("loop_\n" + SITE_KEYS[0])
    if k < 0:
        raise ValueError("no atom-site loop")
    return text[:k] + "\n".join(loop) + "\n" + text[k:]


def fix_volume(text: str, decimals: int = 4) -> str:
    """Rewrite ``_cell_volume`` from a, b, c and the angles (unchanged if they do not parse)."""
    try:
        a, b, c, al, be, ga = (float(re.search(rf"^{k} (\S+)$", text, re.M).group(1)) for k in HEADER_KEYS[1:7])
    except (AttributeError, ValueError):
        return text
    ca, cb, cg = (math.cos(math.radians(x)) for x in (al, be, ga))
    vol = a * b * c * math.sqrt(max(1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg, 0.0))
    return re.sub(r"^_cell_volume \S+$", f"_cell_volume {vol:.{decimals}f}", text, count=1, flags=re.M)


def cif_to_structure(text: str):
    """Canonical (or generated) text -> pymatgen Structure; ValueError if it does not parse."""
    from pymatgen.core import Structure
    full = restore_symmetry_ops(text)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Structure.from_str(full, fmt="cif")
    except Exception as e:
        raise ValueError(f"CIF does not parse: {str(e).strip() or type(e).__name__}") from None


# ---------------------------------------------------------------- prompts

_COMP_RE = re.compile(r"([A-Z][a-z]?)(\d*)")


def parse_composition(text: str, max_atoms: int | None = None):
    """``"SrTiO3"``, ``"Sr2Ti2O6"`` or ``"Sr1Ti1O3"`` -> pymatgen Composition of the cell.

    Counts must be whole numbers; parentheses, charges and fractions are rejected. Raises
    ValueError naming the unknown element or the malformed part.
    """
    from pymatgen.core import Composition
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the composition is empty; type a formula such as SrTiO3")
    s = text.strip()
    pos, counts = 0, {}
    for m in _COMP_RE.finditer(s):
        if m.start() != pos:
            break
        el, n = m.group(1), m.group(2)
        if el not in elements():
            raise ValueError(f"unknown element {el!r} in {s!r}")
        if n and int(n) == 0:
            raise ValueError(f"zero atoms of {el} in {s!r}")
        counts[el] = counts.get(el, 0) + (int(n) if n else 1)
        pos = m.end()
    if pos != len(s) or not counts:
        raise ValueError(f"malformed composition {s!r} at {s[pos:pos + 8]!r}: write element symbols "
                         "followed by whole-number counts, e.g. SrTiO3 or C24")
    total = sum(counts.values())
    if max_atoms is not None and total > max_atoms:
        raise ValueError(f"{s} has {total} atoms in the cell; this model handles at most {max_atoms}")
    return Composition(counts)


def make_prompt(composition: str, spacegroup: str | None = None, max_atoms: int | None = None) -> str:
    """The generation prompt: ``data_<full formula>\\n`` (+ the space-group line if given)."""
    prompt = f"data_{full_formula(parse_composition(composition, max_atoms))}\n"
    if spacegroup:
        sg = spacegroup.strip()
        if sg not in space_groups():
            raise ValueError(f"unknown space group {sg!r}: use a Hermann-Mauguin symbol such as "
                             "Pm-3m, P2_1/c or Fd-3m")
        prompt += f"{SG_KEY} {sg}\n"
    return prompt


# ---------------------------------------------------------------- tokenizer

class CIFTokenizer:
    """Fixed CIF vocabulary, longest match first; unknown text is a ValueError."""

    kind = "cif"

    def __init__(self, tokens: list[str] | None = None):
        if tokens is None:
            sg = [s + "_sg" for s in sorted(space_groups())]
            tokens = PUNCT + DIGITS + KEYWORDS + sg + elements()
        self.itos = list(tokens)
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        alts = sorted(self.itos, key=len, reverse=True)
        self._re = re.compile("|".join(re.escape(t) for t in alts))
        self._sg_line = re.compile(rf"^({re.escape(SG_KEY)} )(\S+)$", re.M)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def token_id(self, token: str) -> int:
        return self.stoi[token]

    @property
    def eos_id(self) -> int:
        return self.stoi[END]

    def encode(self, text: str) -> list[int]:
        """text -> ids. Raises ValueError at the first piece no token matches (with its line)."""
        text = self._sg_line.sub(lambda m: m.group(1) + m.group(2) + "_sg", text)
        ids, pos = [], 0
        while pos < len(text):
            m = self._re.match(text, pos)
            if m is None:
                line = text.count("\n", 0, pos) + 1
                piece = re.match(r"\S{1,12}|\s", text[pos:]).group(0)
                raise ValueError(f"unknown symbol {piece!r} on line {line} of the CIF")
            ids.append(self.stoi[m.group(0)])
            pos = m.end()
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(self.itos[i][:-3] if self.itos[i].endswith("_sg") else self.itos[i] for i in ids)

    def save(self, folder: str | os.PathLike):
        data = {"type": "cif", "tokens": self.itos}
        (Path(folder) / TOKENIZER_FILE).write_text(json.dumps(data, ensure_ascii=False))


# ---------------------------------------------------------------- corpus

def read_cif_csv(path: str | os.PathLike, column: str = "cif") -> list[str]:
    """The CIF strings of a CDVAE-style CSV (one structure per row, in column ``column``)."""
    csv.field_size_limit(1 << 30)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if column not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no {column!r} column (columns: {reader.fieldnames})")
        return [row[column] for row in reader]


def cif_corpus(files: list[str | os.PathLike], props: bool = False, symprec: float = 0.1,
               cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Canonical CIF texts of every structure in ``files`` (CSV), in file then row order.

    Structures pymatgen cannot read are skipped with a count on stderr. Preprocessing takes
    ~20 ms a structure, so the result is cached under ``cache_dir`` keyed by the files' paths,
    sizes and modification times and the options.
    """
    key = hashlib.sha1(json.dumps([[str(Path(f).resolve()), os.path.getsize(f), os.path.getmtime(f)]
                                   for f in files] + [props, symprec, 1]).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"cif-{key}.json" if cache_dir else None
    if cache and cache.is_file():
        return json.loads(cache.read_text())
    out, bad = [], 0
    for f in files:
        for cif in tqdm(read_cif_csv(f), desc=f"preprocessing {Path(f).parent.name}/{Path(f).name}",
                        leave=False, mininterval=2):
            try:
                out.append(preprocess_cif(cif, symprec=symprec, props=props))
            except ValueError:
                bad += 1
    if bad:
        print(f"skipped {bad} structures pymatgen could not read or symmetrise", file=sys.stderr)
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps(out))
    return out
