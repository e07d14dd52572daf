"""Molecules as GDSS graphs (RDKit): SMILES <-> (X, A), decoding with valency correction, metrics.

Encoding (GDSS / MoFlow): kekulized molecules with implicit hydrogens; X one-hot atom type
(QM9: C, N, O, F; ZINC250k: C, N, O, F, P, S, Cl, Br, I) with all-zero rows for padding;
A the bond order (0 none, 1 single, 2 double, 3 triple) as one real channel.

Decoding (GDSS ``sampler.py`` and ``utils/mol_utils.py``): bond orders by the thresholds
0.5 / 1.5 / 2.5; an atom exists when one of its channels exceeds 0.5 (the first such channel
gives its type); bonds are added one by one and an N, O or S atom whose valence exceeds its
allowed valence by exactly one gets a +1 charge. A molecule is "valid without correction" if
it then passes RDKit's valence check. Otherwise the valency correction (from MoFlow) lowers
the highest-order bond of the first offending atom, one order at a time, until it passes.
Finally the largest fragment (longest SMILES) is kept. GDSS finds the offending atom by
parsing RDKit's exception text; here RDKit's ``DetectChemistryProblems`` names it.

Requires RDKit (``pip install 'diffalign[molecules]'``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

ATOMS = {"QM9": (6, 7, 8, 9), "ZINC250k": (6, 7, 8, 9, 15, 16, 17, 35, 53)}
MAX_ATOMS = {"QM9": 9, "ZINC250k": 38}
SMILES_COLUMN = {"QM9": "SMILES1", "ZINC250k": "smiles"}
ATOM_VALENCY = {6: 4, 7: 3, 8: 2, 9: 1, 15: 3, 16: 2, 17: 1, 35: 1, 53: 1}


def _chem():
    try:
        from rdkit import Chem, RDLogger
    except ImportError as e:
        raise ImportError("molecules need RDKit: pip install 'diffalign[molecules]'") from e
    RDLogger.DisableLog("rdApp.*")
    return Chem


def read_smiles_csv(path: str, column: str) -> list[str]:
    """One column of a CSV file (the shared QM9 / ZINC250k files), without pandas."""
    import csv

    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty: expected a CSV file with a header row holding {column!r}")
        if column not in header:
            raise ValueError(f"{path} has no column {column!r} (columns: {header})")
        i = header.index(column)
        return [row[i].strip() for row in reader]


def load_split(dataset: str, data_dir: str | None = None) -> tuple[list[str], list[str]]:
    """(train, test) SMILES with GDSS's split: test = the rows in ``valid_idx_<name>.json``."""
    from .data import resolve

    if dataset not in ATOMS:
        raise ValueError(f"unknown molecule data set {dataset!r}; expected one of {tuple(ATOMS)}")
    smiles = read_smiles_csv(resolve(data_dir, "molecules", f"{dataset.lower()}.csv"), SMILES_COLUMN[dataset])
    with open(resolve(data_dir, "molecules", f"valid_idx_{dataset.lower()}.json")) as f:
        idx = json.load(f)
    if isinstance(idx, dict):
        idx = idx["valid_idxs"]
    test_idx = sorted({int(i) for i in idx})
    if not smiles:
        raise ValueError(f"the {dataset} SMILES file in {data_dir or 'the data directory'} has no rows")
    outside = [i for i in (test_idx[:1] + test_idx[-1:]) if not 0 <= i < len(smiles)]
    if outside:
        raise ValueError(f"valid_idx_{dataset.lower()}.json names row {outside[0]}, outside the {len(smiles)} rows "
                         f"of {dataset.lower()}.csv: the two files do not belong together")
    test_set = set(test_idx)
    return [s for i, s in enumerate(smiles) if i not in test_set], [smiles[i] for i in test_idx]


def encode(smiles: list[str], dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """(atom type index per node, -1 for padding: (M, N) int8; bond orders: (M, N, N) int8)."""
    if dataset not in ATOMS:
        raise ValueError(f"unknown molecule data set {dataset!r}; expected one of {tuple(ATOMS)}")
    if isinstance(smiles, str):
        raise TypeError(f"encode takes a list of SMILES strings, got the single string {smiles!r}")
    if len(smiles) == 0:
        raise ValueError("no SMILES to encode: the list is empty")
    chem = _chem()
    atoms, n = ATOMS[dataset], MAX_ATOMS[dataset]
    index = {a: i for i, a in enumerate(atoms)}
    types = np.full((len(smiles), n), -1, np.int8)
    bonds = np.zeros((len(smiles), n, n), np.int8)
    order = {chem.BondType.SINGLE: 1, chem.BondType.DOUBLE: 2, chem.BondType.TRIPLE: 3}
    for m, s in enumerate(smiles):
        if not isinstance(s, str) or not s.strip():
            raise ValueError(f"empty SMILES at row {m}: {s!r} (a molecule needs at least one atom)")
        mol = chem.MolFromSmiles(s)
        if mol is None:
            raise ValueError(f"invalid SMILES at row {m}: {s!r}")
        if mol.GetNumAtoms() == 0:
            raise ValueError(f"empty SMILES at row {m}: {s!r} (a molecule needs at least one atom)")
        chem.Kekulize(mol, clearAromaticFlags=True)
        if mol.GetNumAtoms() > n:
            raise ValueError(f"{s!r} has {mol.GetNumAtoms()} heavy atoms, more than {dataset}'s {n}")
        for a in mol.GetAtoms():
            if a.GetAtomicNum() not in index:
                raise ValueError(f"{s!r} has atom {a.GetSymbol()}, not one of {dataset}'s types")
            types[m, a.GetIdx()] = index[a.GetAtomicNum()]
        for b in mol.GetBonds():
            i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
            bonds[m, i, j] = bonds[m, j, i] = order[b.GetBondType()]
    return types, bonds


def load_encoded(dataset: str, data_dir: str | None = None, cache_dir: str | None = None):
    """Encoded train split and both SMILES lists, cached as ``.npz`` (RDKit parsing takes minutes)."""
    train, test = load_split(dataset, data_dir)
    cache_dir = cache_dir or os.environ.get("DIFFALIGN_CACHE", os.path.expanduser("~/.cache/diffalign"))
    # keyed by the training SMILES themselves: a different file (a test fixture, a new split)
    # never reads, or overwrites, another one's cache
    digest = hashlib.sha256("\n".join(train).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"{dataset}-train-{digest}.npz")
    if os.path.exists(path):
        with np.load(path) as d:
            if int(d["count"]) == len(train):
                return d["types"], d["bonds"], train, test
    types, bonds = encode(train, dataset)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, types=types, bonds=bonds, count=np.int64(len(train)))
    os.replace(tmp, path)
    return types, bonds, train, test


def dense_features(types: np.ndarray, num_types: int, dtype=np.float32) -> np.ndarray:
    """One-hot atom types (M, N, F), all-zero rows for padding."""
    return (types[..., None] == np.arange(num_types)).astype(dtype)


def _valence_problem(mol):
    """(atom index, explicit valence) of the first atom RDKit finds over its valence, or None."""
    chem = _chem()
    for p in chem.DetectChemistryProblems(mol, sanitizeOps=chem.SanitizeFlags.SANITIZE_PROPERTIES):
        if p.GetType() == "AtomValenceException":
            atom = mol.GetAtomWithIdx(p.GetAtomIdx())
            return atom.GetIdx(), int(round(sum(b.GetBondTypeAsDouble() for b in atom.GetBonds())))
    return None


def quantize(x: np.ndarray, adj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Continuous (X, A) -> (atom type index, -1 where no atom: (..., N) int8; bond orders 0-3
    between existing atoms: (..., N, N) int8), by GDSS's rules: an atom exists when a channel
    exceeds 0.5 and takes the first such channel; bond orders by thresholds 0.5 / 1.5 / 2.5.
    Needs no RDKit: a sampler can save this and any machine can decode it later."""
    on = np.asarray(x) > 0.5
    exists = on.any(-1)
    types = np.where(exists, on.argmax(-1), -1).astype(np.int8)
    order = np.digitize(np.asarray(adj), [0.5, 1.5, 2.5]).astype(np.int8)  # <0.5 -> 0 ... >=2.5 -> 3
    order *= (exists[..., :, None] & exists[..., None, :])
    return types, order


def construct(types: np.ndarray, bonds: np.ndarray, dataset: str):
    """An RDKit RWMol from one quantized molecule, before any correction (GDSS ``construct_mol``:
    bonds read from the lower triangle, in order, with the +1 charge rule)."""
    chem = _chem()
    atoms = ATOMS[dataset]
    keep = np.where(types >= 0)[0]
    mol = chem.RWMol()
    for i in keep:
        mol.AddAtom(chem.Atom(int(atoms[types[i]])))
    order = np.asarray(bonds)[np.ix_(keep, keep)]
    bond = {1: chem.BondType.SINGLE, 2: chem.BondType.DOUBLE, 3: chem.BondType.TRIPLE}
    for start, end in zip(*np.nonzero(order)):
        if start > end:
            mol.AddBond(int(start), int(end), bond[int(order[start, end])])
            problem = _valence_problem(mol)
            if problem is not None:
                idx, v = problem
                an = mol.GetAtomWithIdx(idx).GetAtomicNum()
                if an in (7, 8, 16) and v - ATOM_VALENCY[an] == 1:
                    mol.GetAtomWithIdx(idx).SetFormalCharge(1)
    return mol


def correct(mol):
    """(corrected mol, valid_without_correction): MoFlow's valency correction."""
    chem = _chem()
    bond = {1: chem.BondType.SINGLE, 2: chem.BondType.DOUBLE, 3: chem.BondType.TRIPLE}
    valid = _valence_problem(mol) is None
    while True:
        problem = _valence_problem(mol)
        if problem is None:
            return mol, valid
        bonds = sorted(((int(b.GetBondType()), b.GetBeginAtomIdx(), b.GetEndAtomIdx())
                        for b in mol.GetAtomWithIdx(problem[0]).GetBonds()), key=lambda t: -t[0])
        if not bonds:
            return mol, valid
        t, s, e = bonds[0]
        mol.RemoveBond(s, e)
        if t - 1 >= 1:
            mol.AddBond(s, e, bond[t - 1])


def largest_fragment(mol):
    """Keep the largest fragment (the longest SMILES piece), as GDSS's ``valid_mol_can_with_seg``."""
    chem = _chem()
    if mol is None:
        return None
    smi = chem.MolToSmiles(mol, isomericSmiles=True)
    if "." in smi:
        smi = max(smi.split("."), key=len)
    return chem.MolFromSmiles(smi)


@dataclasses.dataclass
class Decoded:
    smiles: list  # corrected, largest fragment, canonical; None where RDKit could not parse
    valid_without_correction: int
    total: int


def decode(types: np.ndarray, bonds: np.ndarray, dataset: str) -> Decoded:
    """Quantized molecules (see ``quantize``) -> corrected canonical SMILES of the largest fragment."""
    chem = _chem()
    if types.ndim != 2 or bonds.shape != types.shape + types.shape[-1:]:
        raise ValueError(f"expected atom types (M, N) and bond orders (M, N, N), got {types.shape} and {bonds.shape}")
    if types.max(initial=-1) >= len(ATOMS[dataset]) or bonds.min(initial=0) < 0 or bonds.max(initial=0) > 3:
        raise ValueError(f"atom types must be -1..{len(ATOMS[dataset]) - 1} and bond orders 0..3 for {dataset}")
    out, ok = [], 0
    for ti, bi in zip(types, bonds):
        mol, valid = correct(construct(ti, bi, dataset))
        ok += int(valid)
        frag = largest_fragment(mol)
        out.append(chem.MolToSmiles(frag) if frag is not None else None)
    return Decoded(out, ok, len(types))


def save_quantized(path: str, types: np.ndarray, bonds: np.ndarray, dataset: str) -> str:
    """Quantized molecules as ``.npz`` (``atom_types``, ``bond_orders``, ``dataset``), written
    atomically; ``diffalign graphs evaluate`` scores such a file."""
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, atom_types=types.astype(np.int8), bond_orders=bonds.astype(np.int8),
                        dataset=np.array(dataset))
    os.replace(tmp, path)
    return path


def load_quantized(path: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    from .data import read_npz

    d = read_npz(path, ("atom_types", "bond_orders"), ("dataset",), "a quantized-molecule file")
    if "dataset" in d and str(d["dataset"]) != dataset:
        raise ValueError(f"{path} holds {d['dataset']} molecules, not {dataset}")
    return d["atom_types"], d["bond_orders"]


def canonical(smiles) -> list:
    chem = _chem()
    res = []
    for s in smiles:
        m = chem.MolFromSmiles(s) if s else None
        res.append(chem.MolToSmiles(m) if m is not None else None)
    return res


def validity_uniqueness_novelty(generated: list, train_canonical: set, valid_without_correction: int | None = None) -> dict:
    """MOSES's definitions: validity = parsable fraction; unique@k = distinct / k over the valid
    (k = their number); novelty = distinct valid not in the training set / distinct valid."""
    can = canonical(generated)
    valid = [s for s in can if s is not None]
    uniq = set(valid)
    out = {
        "validity": len(valid) / max(len(generated), 1),
        "uniqueness": len(uniq) / max(len(valid), 1),
        "novelty": len(uniq - train_canonical) / max(len(uniq), 1),
    }
    if valid_without_correction is not None:  # over the decoded molecules, as GDSS counts them
        out["validity_wo_correction"] = valid_without_correction / max(sum(s is not None for s in generated), 1)
    return out


def fcd(generated: list, reference: list) -> float:
    """Frechet ChemNet Distance (Preuer et al. 2018) with ``fcd_torch``, the package MOSES (and so
    GDSS's evaluation) uses; it ships the ChemNet weights. NaN when it is not installed
    (``pip install 'diffalign[fcd]'``)."""
    try:
        from fcd_torch import FCD
    except ImportError:
        return float("nan")
    gen = [s for s in canonical(generated) if s]
    if len(gen) < 2:
        return float("nan")
    key = hash(tuple(reference))
    if key not in _FCD_REFERENCE:  # ChemNet's statistics of a reference set, computed once per process
        ref = [s for s in canonical(reference) if s]
        _FCD_REFERENCE[key] = FCD(device="cpu", n_jobs=1).precalc(ref) if len(ref) >= 2 else None
    if _FCD_REFERENCE[key] is None:
        return float("nan")
    return float(FCD(device="cpu", n_jobs=1)(gen=gen, pref=_FCD_REFERENCE[key]))


_FCD_REFERENCE: dict = {}
