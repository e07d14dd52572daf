"""Molecules: encoding, GDSS's decoding with the charge rule and valency correction, metrics, NSPDK."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("rdkit")
from rdkit import Chem  # noqa: E402

from diffalign.graphs import molecules as M  # noqa: E402
from diffalign.graphs.nspdk import features, mol_to_graph, nspdk_mmd  # noqa: E402

QM9_LIKE = ["CCO", "C#N", "CC(=O)N", "c1ccoc1", "OC1CC1F", "CN=C=O", "C1=CC=CN1"]


def canon(s):
    return Chem.MolToSmiles(Chem.MolFromSmiles(s))


def test_encode_decode_round_trip():
    types, bonds = M.encode(QM9_LIKE, "QM9")
    assert types.shape == (7, 9) and bonds.shape == (7, 9, 9)
    np.testing.assert_array_equal(bonds, np.swapaxes(bonds, 1, 2))
    x = M.dense_features(types, 4)
    dec = M.decode(*M.quantize(x, bonds.astype(np.float32)), "QM9")
    assert dec.valid_without_correction == 7
    assert dec.smiles == [canon(s) for s in QM9_LIKE]
    # continuous values decode through the thresholds 0.5 / 1.5 / 2.5 and X > 0.5
    noisy = M.decode(*M.quantize(x * 0.9 + 0.04, bonds * 1.1 - 0.2), "QM9")
    assert noisy.smiles == dec.smiles


def test_charge_rule_and_valency_correction():
    # an N with four single bonds exceeds valence 3 by one: it becomes [N+], valid without correction
    x = np.zeros((5, 4))
    x[0, 1] = 1  # N
    x[1:, 0] = 1  # C
    adj = np.zeros((5, 5))
    adj[0, 1:] = adj[1:, 0] = 1
    dec = M.decode(*M.quantize(x[None], adj[None]), "QM9")
    assert dec.valid_without_correction == 1 and dec.smiles == [canon("C[N+](C)(C)C")]
    # a carbon with five bonds cannot be fixed by a charge: the correction lowers a bond
    x = np.zeros((6, 4))
    x[:, 0] = 1
    adj = np.zeros((6, 6))
    adj[0, 1:] = adj[1:, 0] = 1
    dec = M.decode(*M.quantize(x[None], adj[None]), "QM9")
    assert dec.valid_without_correction == 0
    mol = Chem.MolFromSmiles(dec.smiles[0])
    assert mol is not None and max(a.GetDegree() for a in mol.GetAtoms()) == 4
    # the largest fragment is kept
    assert M.largest_fragment(Chem.MolFromSmiles("C.CCCO")).GetNumAtoms() == 4


def test_validity_uniqueness_novelty_definitions():
    train = {canon(s) for s in ["CCO", "CCN"]}
    m = M.validity_uniqueness_novelty(["CCO", "OCC", "CCC", None, "C1CC1"], train, valid_without_correction=3)
    assert m["validity"] == pytest.approx(4 / 5)
    assert m["uniqueness"] == pytest.approx(3 / 4)  # CCO and OCC are the same molecule
    assert m["novelty"] == pytest.approx(2 / 3)  # CCC and C1CC1 are new, CCO is not
    assert m["validity_wo_correction"] == pytest.approx(3 / 4)  # over the 4 decoded molecules, as GDSS


def test_load_split_uses_the_index_file(tmp_path):
    mol_dir = tmp_path / "molecules"
    mol_dir.mkdir()
    rows = ["CCO", "CCN", "CCC", "C#N", "CO"]
    (mol_dir / "qm9.csv").write_text(",SMILES1\n" + "".join(f"{i},{s}\n" for i, s in enumerate(rows)))
    (mol_dir / "valid_idx_qm9.json").write_text(json.dumps({"valid_idxs": ["001", "003"]}))
    train, test = M.load_split("QM9", str(tmp_path))
    assert test == ["CCN", "C#N"] and train == ["CCO", "CCC", "CO"]
    with pytest.raises(ValueError, match="unknown molecule data set"):
        M.load_split("PCBA", str(tmp_path))
    with pytest.raises(ValueError, match="invalid SMILES"):
        M.encode(["C1CC"], "QM9")
    with pytest.raises(ValueError, match="not one of QM9's types"):
        M.encode(["CCS"], "QM9")


def test_nspdk_is_invariant_and_zero_on_identical_sets():
    mols = [Chem.MolFromSmiles(s) for s in ["CC(=O)Nc1ccc(O)cc1", "CCO", "C#N"]]
    f = features(*mol_to_graph(mols[0]))
    assert abs(sum(v * v for v in f.values()) - 1.0) < 1e-9  # unit norm
    # renumbering the atoms changes nothing
    perm = list(reversed(range(mols[0].GetNumAtoms())))
    renum = Chem.RenumberAtoms(mols[0], perm)
    assert features(*mol_to_graph(renum)) == pytest.approx(f)
    graphs = [mol_to_graph(m) for m in mols]
    assert nspdk_mmd(graphs, graphs) == pytest.approx(0.0, abs=1e-12)
    other = [mol_to_graph(Chem.MolFromSmiles(s)) for s in ["CCCCCC", "c1ccccc1", "CC(C)C"]]
    assert nspdk_mmd(graphs, other) > 0.05


def test_fcd_matches_the_reference_package_on_a_fixed_pair():
    """fcd_torch (what MOSES and so GDSS's evaluation use) gives 2.01325 on this pair."""
    pytest.importorskip("fcd_torch")
    gen = ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCC", "C1CCCCC1", "CN", "OCCO", "CC#N", "CC(C)O"]
    ref = ["CCC", "CO", "c1ccncc1", "CC(=O)N", "CCCCC", "C1CCCC1", "CNC", "OCC(O)CO", "C#N", "CC(C)C"]
    assert M.fcd(gen, ref) == pytest.approx(2.0132487, abs=1e-4)


def test_quantized_samples_decode_later_and_score_through_evaluate(tmp_path):
    """A sampler can save quantized molecules without RDKit; `graphs evaluate` decodes and scores
    the .npz exactly as it would the continuous output (bonds to absent atoms are dropped)."""
    from diffalign.cli import main

    data = os.path.join(os.path.dirname(__file__), "data")
    train, test = M.load_split("QM9", data)
    types, bonds = M.encode(test[:40], "QM9")
    x = M.dense_features(types, 4) * 0.8 + 0.05
    adj = bonds * 0.9 + 0.1
    adj[:, -1, :] = adj[:, :, -1] = 1.0  # stray bond values to a padding row must not count
    q_types, q_bonds = M.quantize(x, adj)
    np.testing.assert_array_equal(q_types, types)
    np.testing.assert_array_equal(q_bonds * (types[:, :, None] >= 0), bonds)
    path = M.save_quantized(str(tmp_path / "s.npz"), q_types, q_bonds, "QM9")
    np.testing.assert_array_equal(M.load_quantized(path, "QM9")[1], q_bonds)
    with pytest.raises(ValueError, match="holds QM9 molecules"):
        M.load_quantized(path, "ZINC250k")
    out = tmp_path / "eval"
    assert main(["graphs", "evaluate", "--dataset", "QM9", "--data-dir", data, "--samples", path, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["validity_wo_correction"] == 1.0 and m["uniqueness"] == 1.0
    assert m["novelty"] == 1.0  # test molecules are not in the training split
    assert m["nspdk"] < 0.05 and m["num_generated"] == 40
    decoded = (out / "samples_decoded.smi").read_text().split()
    assert decoded == [canon(s) for s in test[:40]]
