import gzip

import nibabel as nib
import numpy as np
import pytest

from mambacontrol.errors import InputFileError
from mambacontrol.io import Volume, load_nifti, save_nifti, write_text_atomic


def _image(rng, shape=(8, 9, 10)):
    return rng.normal(size=shape).astype(np.float32)


def test_round_trip_keeps_data_and_affine(tmp_path, rng):
    aff = np.array([[-1.2, 0, 0, 50], [0, 0, 1.1, -30], [0, 1.3, 0, 20], [0, 0, 0, 1]])
    data = _image(rng)
    path = save_nifti(tmp_path / "a.nii.gz", data, aff)
    vol = load_nifti(path)
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, aff, atol=1e-6)
    assert vol.spacing == pytest.approx((1.2, 1.3, 1.1))
    assert vol.voxel_volume == pytest.approx(1.2 * 1.3 * 1.1)


def test_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="file not found"):
        load_nifti(tmp_path / "nope.nii.gz")


def test_folder_is_refused(tmp_path):
    with pytest.raises(InputFileError, match="is a folder"):
        load_nifti(tmp_path)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.nii.gz"
    p.write_bytes(b"")
    with pytest.raises(InputFileError, match="empty file"):
        load_nifti(p)


def test_not_a_nifti(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello, not an image\n" * 50)
    with pytest.raises(InputFileError, match="not a NIfTI"):
        load_nifti(p)


def test_random_bytes_with_nifti_name(tmp_path, rng):
    p = tmp_path / "garbage.nii"
    p.write_bytes(rng.integers(0, 255, size=4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputFileError, match=r"garbage.nii: (not a NIfTI|corrupt)"):
        load_nifti(p)


def test_truncated_gzip(tmp_path, write_nifti, rng):
    good = write_nifti(_image(rng, (20, 20, 20)), "good.nii.gz")
    raw = good.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputFileError, match="corrupt or truncated"):
        load_nifti(bad)


def test_corrupt_gzip_stream(tmp_path):
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(gzip.compress(b"\x00" * 10)[:12] + b"\xff" * 64)
    with pytest.raises(InputFileError, match="truncated.nii.gz|corrupt.nii.gz"):
        load_nifti(bad)


def test_4d_single_volume_is_squeezed(write_nifti, rng):
    data = _image(rng, (6, 7, 8, 1))
    vol = load_nifti(write_nifti(data))
    assert vol.shape == (6, 7, 8)


def test_4d_many_volumes_refused(write_nifti, rng):
    with pytest.raises(InputFileError, match="is 4D"):
        load_nifti(write_nifti(_image(rng, (6, 7, 8, 3))))


def test_2d_refused(write_nifti, rng):
    with pytest.raises(InputFileError, match="not a 3D volume"):
        load_nifti(write_nifti(_image(rng, (6, 7))))


def test_non_finite_refused(write_nifti, rng):
    data = _image(rng)
    data[1, 2, 3] = np.nan
    data[2, 2, 3] = np.inf
    with pytest.raises(InputFileError, match="2 non-finite values"):
        load_nifti(write_nifti(data))


def test_constant_refused(write_nifti):
    with pytest.raises(InputFileError, match="is constant"):
        load_nifti(write_nifti(np.full((5, 5, 5), 3.0, dtype=np.float32)))


@pytest.mark.parametrize("voxel", [0.01, 25.0])
def test_implausible_voxel_size(write_nifti, rng, voxel):
    with pytest.raises(InputFileError, match="implausible voxel size"):
        load_nifti(write_nifti(_image(rng), affine=np.diag([voxel, 1.0, 1.0, 1.0])))


def test_labels_must_be_integers(write_nifti, rng):
    with pytest.raises(InputFileError, match="not a label map"):
        load_nifti(write_nifti(_image(rng)), labels=True)
    lab = load_nifti(write_nifti(rng.integers(0, 5, size=(5, 5, 5)).astype(np.float32), "l.nii.gz"),
                     labels=True)
    assert lab.data.dtype == np.int32


def test_error_is_one_line_naming_file(tmp_path):
    with pytest.raises(InputFileError) as exc:
        load_nifti(tmp_path / "missing_scan.nii.gz")
    msg = str(exc.value)
    assert "\n" not in msg and "missing_scan.nii.gz" in msg


def test_save_refuses_to_overwrite_input(write_nifti, rng):
    src = write_nifti(_image(rng))
    before = src.read_bytes()
    with pytest.raises(InputFileError, match="overwrite the input"):
        save_nifti(src, _image(rng), np.eye(4), inputs=[src])
    assert src.read_bytes() == before


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out.nii.gz"

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(RuntimeError):
        save_nifti(target, np.ones((3, 3, 3)), np.eye(4))
    assert list(tmp_path.iterdir()) == []


def test_atomic_text_write_replaces_whole_file(tmp_path):
    p = tmp_path / "a.json"
    write_text_atomic(p, "first")
    write_text_atomic(p, "second")
    assert p.read_text() == "second"
    assert [q.name for q in tmp_path.iterdir()] == ["a.json"]


def test_with_data_checks_shape(rng):
    v = Volume(_image(rng), np.eye(4))
    with pytest.raises(ValueError, match="shape"):
        v.with_data(np.zeros((2, 2, 2)))
