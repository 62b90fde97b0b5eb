"""Device policy: one free GPU per stage process under a DVC queue, accelerate's spreading for large models."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmshrink import hardware


def test_each_claim_takes_a_different_free_gpu_and_a_released_one_is_reused(tmp_path: Path) -> None:
    first, a = hardware.claim_gpu(tmp_path, 2)
    second, b = hardware.claim_gpu(tmp_path, 2)
    assert (first, second) == (0, 1)
    a.close()  # the stage on GPU 0 ends
    third, c = hardware.claim_gpu(tmp_path, 2, poll_s=0.01)
    assert third == 0
    b.close(), c.close()


def test_a_crashed_process_releases_its_gpu(tmp_path: Path) -> None:
    """The lock is the process's: another process that dies holding GPU 0 leaves it free."""
    code = (f"from llmshrink import hardware; i, h = hardware.claim_gpu({str(tmp_path)!r}, 2); print(i); "
            "import os; os._exit(3)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert (done.returncode, done.stdout.strip()) == (3, "0")
    index, handle = hardware.claim_gpu(tmp_path, 2)
    assert index == 0
    handle.close()


def test_pinning_is_off_without_the_lock_folder_or_a_second_gpu(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(hardware.GPU_LOCKS, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(hardware, "gpu_count", lambda: 4)
    assert hardware.pin_free_gpu() is None  # no LLMSHRINK_GPU_LOCKS
    monkeypatch.setenv(hardware.GPU_LOCKS, str(tmp_path))
    monkeypatch.setattr(hardware, "gpu_count", lambda: 1)
    assert hardware.pin_free_gpu() is None  # one GPU: nothing to choose


def test_pinning_sets_the_visible_gpu(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(hardware.GPU_LOCKS, str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # recorded, so the pin below is undone after the test
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(hardware, "gpu_count", lambda: 2)
    monkeypatch.setattr(hardware, "_pinned", [])
    busy, handle = hardware.claim_gpu(tmp_path, 2)  # another worker's stage holds GPU 0
    assert hardware.pin_free_gpu() == 1
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert hardware.pin_free_gpu() is None  # once per process
    hardware._pinned.pop().close(), handle.close()


def test_device_map_only_for_a_model_larger_than_one_gpu(monkeypatch) -> None:
    assert hardware.device_map(10**12, torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (80 * 2**30, 80 * 2**30))
    gpu = torch.device("cuda", 0)
    assert hardware.device_map(16 * 2**30, gpu) is None           # an 8B model in bf16 fits one GPU
    assert hardware.device_map(70 * 2**30, gpu) == "auto"         # beyond 80% of the free memory
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert hardware.device_map(70 * 2**30, gpu) is None            # one GPU: nothing to spread over


def test_lock_files_are_not_followed_nor_truncated_in_a_private_folder(tmp_path: Path) -> None:
    """A `gpu0.lock` symlink planted at another file leaves it whole; a folder others can write is refused."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    (locks / "gpu0.lock").symlink_to(victim)
    with pytest.raises(OSError):
        hardware.claim_gpu(locks, 1)
    assert victim.read_text() == "precious"
    (locks / "gpu0.lock").unlink()
    (locks / "gpu0.lock").write_text("kept")
    index, handle = hardware.claim_gpu(locks, 1)
    assert (index, (locks / "gpu0.lock").read_text()) == (0, "kept")
    handle.close()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp/llmshrink-gpus made by anyone
    with pytest.raises(ValueError, match=r"LLMSHRINK_GPU_LOCKS=.*shared' must be a folder of this user's"):
        hardware.claim_gpu(shared, 1)
    assert (hardware.lock_folder(tmp_path / "new").stat().st_mode & 0o777) == 0o700


def test_stamped_metrics_say_what_produced_them() -> None:
    stamped = hardware.stamped({"ppl": 1.5})
    assert stamped["ppl"] == 1.5
    assert torch.__version__.startswith(stamped["environment"]["versions"]["torch"])
    assert set(stamped["environment"]["versions"]) == set(hardware.VERSIONED)
    assert stamped["environment"]["hardware"]["cpus"] == os.cpu_count()
