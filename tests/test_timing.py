"""Stage timing records: kept out of DVC outputs, appended to LLMSHRINK_TIMINGS for the GPU benchmark's wall split."""
import json
import time
from pathlib import Path

from llmshrink import timing


def test_stage_record_has_wall_clock_bounds_and_start_up(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "timings.jsonl"
    monkeypatch.setenv("LLMSHRINK_TIMINGS", str(out))
    before = time.time()
    with timing.stage("depth_prune"):
        with timing.part("depth_prune/score"):
            time.sleep(0.05)
    part, stage = (json.loads(line) for line in out.read_text().splitlines())
    assert part["stage"] == "depth_prune/score" and part["seconds"] >= 0.05 and "peak_gpu_bytes" not in part
    assert stage["stage"] == "depth_prune" and stage["seconds"] >= 0.05 and stage["peak_gpu_bytes"] == 0
    assert before - 0.01 <= stage["started_at"] <= stage["ended_at"] - 0.05 <= time.time()
    assert 0 < stage["startup_seconds"] <= timing.process_age()  # this process's age at the stage start


def test_no_file_without_the_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("LLMSHRINK_TIMINGS", raising=False)
    monkeypatch.chdir(tmp_path)
    with timing.stage("report"):
        pass
    assert list(tmp_path.iterdir()) == []
