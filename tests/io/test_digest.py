import hashlib

from mambacontrol.io.digest import sha256_file


def test_sha256_of_a_file_larger_than_one_block(tmp_path):
    data = bytes(range(256)) * 20000              # 5 MB: more than one 4 MiB block
    path = tmp_path / "scan.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1] + b"\x00")
    assert sha256_file(path) != hashlib.sha256(data).hexdigest()
