import pytest
import torch

from mambacontrol.data.covariates import COVARIATE_NAMES, CovariateNorm, encode_covariates


def test_single_and_batched():
    v = encode_covariates(80.0, 2.0, "F", "AD")
    assert v.shape == (1, len(COVARIATE_NAMES)) and v.dtype == torch.float32
    assert v[0].tolist() == pytest.approx([1.0, 0.5, 1.0, 0.0, 0.0, 1.0])
    b = encode_covariates([60, 70], [1, 4], ["M", "female"], ["0", "MCI"])
    assert torch.allclose(b, torch.tensor([[-1, 0.25, 0, 1, 0, 0], [0, 1, 1, 0, 1, 0.0]]))


def test_broadcast_scalar_over_batch_and_custom_norm():
    v = encode_covariates([70, 75, 80], 1.0, "M", "CN", CovariateNorm(age_mean=75, age_std=5))
    assert v[:, 0].tolist() == pytest.approx([-1, 0, 1])
    assert CovariateNorm.from_dict(CovariateNorm(1, 2, 3).to_dict()) == CovariateNorm(1, 2, 3)


def test_bad_values():
    with pytest.raises(ValueError, match="diagnosis"):
        encode_covariates(70, 1, "F", "XX")
    with pytest.raises(ValueError, match="lengths differ"):
        encode_covariates([70, 71], 1, ["F", "M", "F"], "CN")
