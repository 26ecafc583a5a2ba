import pytest
import torch

from mambacontrol.graph import AnatomyGraph, GraphFourierRefine, SpectralFilterBank
from mambacontrol.graph.spectral import heat_responses, wavelet_responses


@pytest.fixture(scope="module")
def basis(atlas4):
    g = AnatomyGraph.from_atlas(atlas4)
    return torch.tensor(g.eigenvalues), torch.tensor(g.eigenvectors)


def test_wavelets_are_band_pass_with_unit_peak():
    lam = torch.linspace(0, 2, 2001, dtype=torch.float64)
    resp = wavelet_responses(lam, [1.0, 2.0, 4.0])
    assert resp.shape == (4, 2001)
    assert resp[0, 0] == 1.0 and torch.all(resp[1:, 0] == 0)  # low-pass keeps DC, wavelets drop it
    for row, s in zip(resp[1:], [1.0, 2.0, 4.0]):
        assert lam[row.argmax()].item() == pytest.approx(1 / s, abs=1e-3)
        assert row.max().item() == pytest.approx(1.0, abs=1e-6)
    heat = heat_responses(lam, [0.5, 3.0])
    assert torch.all(heat[:, 1:] < heat[:, :-1]) and torch.all(heat[1] <= heat[0])


def test_filter_bank_separates_frequencies(basis):
    vals, vecs = basis
    bank = SpectralFilterBank([1.0, 4.0], kind="wavelet")
    dc = vecs[:, :1][None]  # (1, R, 1): the zero-frequency eigenvector
    out = bank(dc, vals, vecs)
    assert out.shape == (1, vecs.shape[0], 3)
    torch.testing.assert_close(out[..., 0], dc[..., 0])  # the low-pass passes it whole
    assert out[..., 1:].abs().max() < 1e-9  # band-pass filters remove it
    # the eigenvector nearest λ = 1 is the scale-1 wavelet's peak
    k = int((vals - 1.0).abs().argmin())
    mode = vecs[:, k : k + 1][None]
    y = bank(mode, vals, vecs)
    expected = (vals[k] * torch.exp(1 - vals[k])).item()
    torch.testing.assert_close(y[..., 1], mode[..., 0] * expected)
    heat = SpectralFilterBank([2.0], kind="heat")
    assert heat.num_filters == 1 and heat(mode, vals, vecs).shape == (1, vecs.shape[0], 1)


def test_filter_bank_arguments():
    with pytest.raises(ValueError, match="positive"):
        SpectralFilterBank([1.0, 0.0])
    with pytest.raises(ValueError, match="kind 'box'"):
        SpectralFilterBank([1.0], kind="box")


def test_fourier_refine_identity_at_init_and_acts_per_frequency(basis):
    vals, vecs = basis
    r = vecs.shape[0]
    x = torch.randn(2, r, 3, dtype=torch.float64)
    full = GraphFourierRefine(3, r).double()
    assert torch.equal(full(x, vecs), x)
    with torch.no_grad():
        full.gain.fill_(-1.0)  # a gain of −1 on every frequency removes the signal
    assert full(x, vecs).abs().max() < 1e-10
    low = GraphFourierRefine(3, 10).double()
    with torch.no_grad():
        low.gain.fill_(1.0)  # doubles the 10 lowest frequencies, leaves the rest
    y_hat = vecs.T @ low(x, vecs)
    x_hat = vecs.T @ x
    torch.testing.assert_close(y_hat[:, :10], 2 * x_hat[:, :10])
    torch.testing.assert_close(y_hat[:, 10:], x_hat[:, 10:])
    with pytest.raises(ValueError):
        GraphFourierRefine(3, 0)
