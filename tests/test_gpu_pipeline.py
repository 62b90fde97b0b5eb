"""How benchmarks/gpu_pipeline.py merges a run into its results file."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_pipeline", ROOT / "benchmarks" / "gpu_pipeline.py")
gpu_pipeline = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_pipeline)


def test_finished_run_replaces_unfinished_one_of_its_shape(tmp_path: Path) -> None:
    out = tmp_path / "gpu_pipeline.json"
    gpu_pipeline.write_run(out, {"shape": "a", "ok": True, "total_seconds": 1})
    gpu_pipeline.write_run(out, {"shape": "b", "ok": False, "total_seconds": 2})
    gpu_pipeline.write_run(out, {"shape": "a", "ok": False, "total_seconds": 3})
    result = json.loads(out.read_text())
    assert [(r["shape"], r["total_seconds"]) for r in result["runs"]] == [("a", 1), ("b", 2)]
    assert [(r["shape"], r["total_seconds"]) for r in result["unfinished"]] == [("a", 3)]
    gpu_pipeline.write_run(out, {"shape": "a", "ok": True, "total_seconds": 4})
    result = json.loads(out.read_text())
    assert [(r["shape"], r["total_seconds"]) for r in result["runs"]] == [("b", 2), ("a", 4)]
    assert "unfinished" not in result
