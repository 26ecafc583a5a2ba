"""Phase timings charge a GPU's asynchronous work to the phase that launched it."""

import torch

from mambacontrol.pipeline.timings import PhaseTimes


def test_cuda_phases_wait_for_the_gpu_at_both_ends(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    clock = PhaseTimes("cuda:0")
    with clock.phase("sampling"):
        assert calls == ["cuda:0"]  # queued work from before is not charged to this phase
    assert calls == ["cuda:0", "cuda:0"]
    assert set(clock.seconds) == {"sampling"}


def test_cpu_phases_never_touch_cuda(monkeypatch):
    def refuse(device=None):
        raise AssertionError("synchronize called for a CPU phase")

    monkeypatch.setattr(torch.cuda, "synchronize", refuse)
    for device in (None, "cpu", torch.device("cpu")):
        clock = PhaseTimes(device)
        with clock.phase("encoding"):
            pass
        with clock.phase("encoding"):
            pass
        assert list(clock.seconds) == ["encoding"] and clock.seconds["encoding"] >= 0
