import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse.csgraph as csgraph
import torch

from mambacontrol.atlas import load_atlas
from mambacontrol.errors import MambaControlError
from mambacontrol.graph import AnatomyGraph, fixed_sign_eigh
from mambacontrol.graph.anatomy import _canonical_basis, face_contacts


@pytest.fixture(scope="module")
def atlas2():
    return load_atlas(grid="2mm")


@pytest.fixture(scope="module")
def graph2(atlas2):
    return AnatomyGraph.from_atlas(atlas2)


def test_real_atlas_graph_is_symmetric_and_connected(graph2, atlas2):
    w = graph2.weights
    assert graph2.num_nodes == 134 and graph2.node_labels == [[lab] for lab in atlas2.label_ids]
    assert np.array_equal(w, w.T) and np.all(np.diag(w) == 0) and np.all(w >= 0)
    assert csgraph.connected_components(w, directed=False)[0] == 1
    assert 400 < graph2.num_edges < 2000
    # anatomy: hippocampus touches the amygdala on the same side, not the other hemisphere's
    n = graph2.label_to_node
    assert w[n[47], n[31]] > 0 and w[n[48], n[32]] > 0
    assert w[n[47], n[32]] == 0


def test_homologue_edges(atlas2, graph2):
    n = graph2.label_to_node
    pairs = {tuple(p) for p in graph2.homologue_pairs.tolist()}
    assert (n[48], n[47]) in pairs  # left hippocampus ↔ right hippocampus
    assert len(pairs) == 63  # every left region has its right copy
    plain = AnatomyGraph.from_atlas(atlas2, homologue_edges=False)
    assert len(plain.homologue_pairs) == 0
    added = graph2.weights - plain.weights
    assert np.count_nonzero(np.triu(added)) == 63 and added[n[48], n[47]] > 0


def test_pyg_data_matches_weights(graph2):
    d = graph2.data
    src, dst = d.edge_index.numpy()
    assert d.num_nodes == 134 and d.edge_index.shape[1] == 2 * graph2.num_edges
    np.testing.assert_allclose(d.edge_weight.numpy(), graph2.weights[src, dst], rtol=1e-6)
    assert set(zip(src.tolist(), dst.tolist())) == set(zip(dst.tolist(), src.tolist()))
    assert int(d.homologue.sum()) == 2 * 63


def test_contact_area_counts_faces():
    nodes = np.full((3, 2, 2), -1)
    nodes[0], nodes[1] = 0, 1  # two 2×2 slabs sharing four faces across x
    nodes[2, 0, 0] = 0  # one more face between node 1 and node 0 across x
    area = face_contacts(nodes, 2, (2.0, 3.0, 5.0))
    assert area[0, 1] == area[1, 0] == 5 * 3.0 * 5.0  # faces normal to x have area 3 × 5 mm²


def test_eigenbasis_range_orthonormal_and_reproducible(atlas2, graph2):
    vals, vecs = graph2.eigenvalues, graph2.eigenvectors
    assert vals[0] == pytest.approx(0.0, abs=1e-10) and vals.max() <= 2.0 and vals.min() >= 0.0
    assert np.all(np.diff(vals) >= 0)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(134), atol=1e-10)
    AnatomyGraph._cache.clear()
    again = AnatomyGraph.from_atlas(atlas2)
    assert again is not graph2
    assert np.array_equal(again.eigenvalues, vals) and np.array_equal(again.eigenvectors, vecs)
    assert AnatomyGraph.from_atlas(atlas2) is again  # cached


def test_sign_convention_ignores_lapack_signs(rng, monkeypatch):
    a = rng.normal(size=(6, 6))
    sym = a + a.T
    vals, vecs = fixed_sign_eigh(sym)
    for k in range(6):
        assert vecs[np.argmax(np.abs(vecs[:, k])), k] > 0
    eigh = np.linalg.eigh

    def flipped_eigh(m):  # another LAPACK build may return any column with the opposite sign
        w, v = eigh(m)
        return w, v * np.array([1, -1, -1, 1, -1, 1.0])

    monkeypatch.setattr(np.linalg, "eigh", flipped_eigh)
    vals2, vecs2 = fixed_sign_eigh(sym)
    assert np.array_equal(vals2, vals) and np.array_equal(vecs2, vecs)


def test_degenerate_eigenspace_basis_depends_only_on_the_span(rng):
    space = np.linalg.qr(rng.normal(size=(8, 3)))[0]
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    b1, b2 = _canonical_basis(space), _canonical_basis(space @ rot)
    np.testing.assert_allclose(b1, b2, atol=1e-10)
    np.testing.assert_allclose(b1.T @ b1, np.eye(3), atol=1e-10)
    # a cycle: pairs of equal eigenvalues
    ring = np.roll(np.eye(8), 1, 0) + np.roll(np.eye(8), -1, 0)
    vals, vecs = fixed_sign_eigh(np.eye(8) - ring / 2)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(8), atol=1e-10)
    np.testing.assert_allclose(vecs @ np.diag(vals) @ vecs.T, np.eye(8) - ring / 2, atol=1e-10)


@pytest.mark.parametrize("grouping,nodes", [("group", 69), ("lobe", 13), ("lateral_lobe", 26)])
def test_coarser_groupings_partition_the_labels(atlas2, grouping, nodes):
    g = AnatomyGraph.from_atlas(atlas2, grouping)
    assert g.num_nodes == nodes
    assert sorted(lab for ls in g.node_labels for lab in ls) == atlas2.label_ids
    assert csgraph.connected_components(g.weights, directed=False)[0] == 1
    assert g.node_volumes.sum() == pytest.approx(sum(atlas2.region_volumes().values()))
    assert g.identity.grouping == grouping


def test_gft_is_invertible_and_preserves_energy(graph2, rng):
    x = rng.normal(size=(2, 134, 5))
    xh = graph2.gft(x)
    np.testing.assert_allclose(graph2.igft(xh), x, atol=1e-10)
    np.testing.assert_allclose((xh**2).sum(), (x**2).sum())
    t = torch.from_numpy(x).float()
    torch.testing.assert_close(graph2.igft(graph2.gft(t)), t, atol=1e-5, rtol=1e-5)
    s = rng.normal(size=134)
    np.testing.assert_allclose(graph2.igft(graph2.gft(s)), s, atol=1e-10)
    with pytest.raises(MambaControlError, match="133 nodes"):
        graph2.gft(np.zeros((133, 2)))


def test_node_map_and_bad_input(atlas2, graph2):
    m = graph2.node_map(atlas2.labels)
    assert (m[atlas2.labels == 0] == -1).all()
    assert (m[atlas2.labels == 47] == graph2.label_to_node[47]).all()
    lab = np.zeros((2, 2, 2), dtype=np.int32)
    lab[0, 0, 0] = 9999  # a label of no node
    assert graph2.node_map(lab)[0, 0, 0] == -1
    with pytest.raises(MambaControlError, match="negative"):
        graph2.node_map(-lab)
    with pytest.raises(MambaControlError, match="grouping 'lobes' is unknown"):
        AnatomyGraph.from_atlas(atlas2, "lobes")


def test_eigenbasis_agrees_across_processes_and_thread_counts(tmp_path, graph2):
    """Another process with another BLAS thread count (as on another machine) gets the same
    basis."""
    out = tmp_path / "basis.npz"
    code = ("import numpy as np; from mambacontrol.atlas import load_atlas; "
            "from mambacontrol.graph import AnatomyGraph; "
            "g = AnatomyGraph.from_atlas(load_atlas(grid='2mm')); "
            f"np.savez(r'{out}', vals=g.eigenvalues, vecs=g.eigenvectors)")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    other = np.load(out)
    np.testing.assert_allclose(other["vals"], graph2.eigenvalues, atol=1e-12)
    np.testing.assert_allclose(other["vecs"], graph2.eigenvectors, atol=1e-9)
