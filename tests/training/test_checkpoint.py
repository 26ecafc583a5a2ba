import json
import random

import numpy as np
import pytest
import torch

from mambacontrol.errors import ModelError
from mambacontrol.training import checkpoint as ckpt_mod
from mambacontrol.training.checkpoint import (
    capture_rng_state,
    check_tensors_match,
    flatten_state,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    restore_rng_state,
    unflatten_state,
    write_checkpoint,
)


def assert_identical(a, b, path="state"):
    """Same structure, same Python types, bit-identical tensors and floats."""
    assert type(a) is type(b), f"{path}: {type(a)} vs {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_identical(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} vs {b!r}"


def trained_adamw():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    opt = torch.optim.AdamW([{"params": net[0].parameters(), "lr": 1e-3},
                             {"params": net[1].parameters(), "lr": 3e-4, "weight_decay": 0.0}],
                            betas=(0.8, 0.95))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)
    for _ in range(3):
        net(torch.randn(5, 3)).pow(2).mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return net, opt, sched


def test_adamw_and_scheduler_state_round_trip_exactly_through_files(tmp_path):
    net, opt, sched = trained_adamw()
    original = opt.state_dict()
    tree, tensors = flatten_state(original, "optimizer")
    assert set(original["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert "optimizer.state.0.exp_avg" in tensors and len(tensors) == 12   # 4 params x 3
    assert json.loads(json.dumps(tree)) == tree                           # tree is pure JSON
    s_tree, s_tensors = flatten_state(sched.state_dict())
    write_checkpoint(tmp_path, 3, {"opt": tree, "sched": s_tree}, {"optimizer": tensors})
    back = read_checkpoint(tmp_path / "step-000003")
    restored = unflatten_state(back.state["opt"], back.tensors["optimizer"])
    assert_identical(original, restored)
    assert restored["param_groups"][0]["betas"] == (0.8, 0.95)
    assert_identical(sched.state_dict(), unflatten_state(back.state["sched"], s_tensors))
    # and a fresh optimizer loaded with it takes the same next step
    net2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    net2.load_state_dict(net.state_dict())
    opt2 = torch.optim.AdamW([{"params": net2[0].parameters()}, {"params": net2[1].parameters()}])
    opt2.load_state_dict(restored)
    x = torch.randn(5, 3)
    for n, o in ((net, opt), (net2, opt2)):
        n(x).pow(2).mean().backward()
        o.step()
    for p, q in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p, q)


def test_flatten_refuses_unstorable_values_by_path():
    with pytest.raises(TypeError, match="groups.0.fn: a function cannot be stored"):
        flatten_state({"groups": [{"fn": lambda s: s}]})
    with pytest.raises(TypeError, match="dict key"):
        flatten_state({(1, 2): 3})


def test_rng_state_round_trip():
    tree, tensors = capture_rng_state(torch.device("cpu"))
    first = (random.random(), np.random.rand(), torch.rand(3))
    tree = json.loads(json.dumps(tree))
    restore_rng_state(tree, tensors, torch.device("cpu"))
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])
    assert tensors["torch"].dtype == torch.uint8


def test_keep_last_k_and_latest(tmp_path):
    for step in (5, 10, 15, 20):
        write_checkpoint(tmp_path, step, {}, {"w": {"a": torch.full((2,), float(step))}}, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [15, 20]
    assert latest_checkpoint(tmp_path).name == "step-000020"
    assert latest_checkpoint(tmp_path / "none") is None
    assert read_checkpoint(tmp_path / "step-000020").tensors["w"]["a"].tolist() == [20.0, 20.0]


def test_crash_mid_write_leaves_previous_checkpoint_usable(tmp_path, monkeypatch):
    write_checkpoint(tmp_path, 5, {"note": "good"}, {"a": {"x": torch.ones(3)}})
    real = ckpt_mod.save_file
    calls = []

    def dying(tensors, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real(tensors, path)

    monkeypatch.setattr(ckpt_mod, "save_file", dying)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(tmp_path, 10, {}, {"a": {"x": torch.ones(3)}, "b": {"y": torch.ones(1)}})
    assert [p.name for p in tmp_path.iterdir()] == ["step-000005"]     # no partial folder left
    assert read_checkpoint(latest_checkpoint(tmp_path)).state["note"] == "good"
    (tmp_path / ".step-000010.dead.tmp").mkdir()                        # a hard kill's leftovers
    monkeypatch.setattr(ckpt_mod, "save_file", real)
    write_checkpoint(tmp_path, 10, {}, {"a": {"x": torch.ones(3)}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000005", "step-000010"]


def test_shared_and_noncontiguous_tensors_are_stored(tmp_path):
    base = torch.arange(6.0).reshape(2, 3)
    write_checkpoint(tmp_path, 1, {}, {"t": {"a": base, "b": base, "c": base.t()}})
    back = read_checkpoint(tmp_path / "step-000001").tensors["t"]
    assert torch.equal(back["b"], base) and torch.equal(back["c"], base.t())


@pytest.fixture
def saved(tmp_path):
    path = write_checkpoint(tmp_path, 7, {"stage": "x"},
                            {"model.net": {"w": torch.randn(64, 64)},
                             "optimizer": {"m": torch.ones(2)}})
    return path


def test_truncated_file_is_refused(saved):
    file = saved / "model.net.safetensors"
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(ModelError,
                       match="model.net.safetensors: .* bytes, .* were written \\(truncated"):
        read_checkpoint(saved)


def test_altered_bytes_are_refused(saved):
    file = saved / "model.net.safetensors"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch.*delete this folder"):
        read_checkpoint(saved)


def test_missing_files_and_bad_json_are_refused(saved):
    (saved / "optimizer.safetensors").unlink()
    with pytest.raises(ModelError, match="optimizer.safetensors is missing"):
        read_checkpoint(saved)
    (saved / "state.json").write_text("{not json")
    with pytest.raises(ModelError, match="state.json: corrupt"):
        read_checkpoint(saved)
    (saved / "state.json").unlink()
    with pytest.raises(ModelError, match="not a checkpoint \\(state.json is missing\\)"):
        read_checkpoint(saved)


def test_tensor_mismatch_messages(tmp_path):
    check_tensors_match("model", {"w": torch.zeros(2)}, {"w": torch.ones(2)}, tmp_path)
    with pytest.raises(ModelError,
                       match="model tensor w has shape \\(3,\\) in the checkpoint, \\(2,\\)"):
        check_tensors_match("model", {"w": torch.zeros(2)}, {"w": torch.ones(3)}, tmp_path)
    with pytest.raises(ModelError, match="missing \\['v'\\], unexpected \\['u'\\]"):
        check_tensors_match("model", {"v": torch.zeros(2)}, {"u": torch.ones(2)}, tmp_path)
