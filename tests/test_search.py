"""The recipe search's screen: exact bytes within each budget, a ranking that repeats for a fixed seed, and a
clear refusal where a budget cannot fit."""
import dataclasses
from pathlib import Path

import pytest

from llmshrink import imatrix, llamacpp, models, search
from llmshrink.calib import token_windows
from llmshrink.params import read
from llmshrink.params.gguf import GptqGguf
from llmshrink.params.search import Search

QUANTIZER = llamacpp.tool("llama-quantize").is_file()


def test_profile_is_dvc_exp_run_settings_the_schema_accepts() -> None:
    lines = search.profile({"budget": 0.3, "type": "q5_0", "method": "rtn"}).split()
    assert lines == ["gptq_gguf.enabled=true", "gptq_gguf.method=rtn", "gptq_gguf.budget=0.3", "gptq_gguf.type=q5_0",
                     "gptq_gguf.embedding_type=auto"]
    raw = read(Path(__file__).resolve().parents[1] / "params.yaml")["gptq_gguf"]
    GptqGguf(**raw | {"method": "rtn", "budget": 0.3, "type": "q5_0", "embedding_type": "auto"})


def test_search_params_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match="search.types"):
        Search(budgets=[0.3], types=["q4_k_m"], screen_windows=2, full=1)
    with pytest.raises(ValueError, match="search.budgets"):
        Search(budgets=[1.5], types=["q4_1"], screen_windows=2, full=1)


@pytest.mark.skipif(not QUANTIZER, reason="llama-quantize not built (`make edge`)")
def test_screen_fits_each_budget_exactly_and_repeats(tiny_dir: Path, prose: str, tmp_path: Path) -> None:
    matrix = tmp_path / "imatrix.gguf"
    windows = token_windows(models.load_tokenizer(tiny_dir), prose[:20_000], 4, 32, 0)
    imatrix.write_imatrix(matrix, imatrix.imatrix(models.load(tiny_dir), windows), "prose", 32)
    p = Search(budgets=[0.05, 0.25, 0.3], types=["q4_1", "q8_0"], screen_windows=2, full=1)
    gp = GptqGguf(enabled=True, method="rtn", type="q8_0", embedding_type="auto", embedding_gptq=False,
                         samples=4,
                         seq_len=32, damp_percent=0.01, budget=0.3, fisher_samples=2)
    rows = search.screen_all(tiny_dir, matrix, prose[:20_000], p, gp, seed=0)
    assert [r["name"] for r in rows] == [c["name"] for c in search.candidates(p, "rtn")]
    assert all(not r["fits"] and "at least" in r["why"] for r in rows if r["budget"] == 0.05)
    fitting = [r for r in rows if r["fits"]]
    assert len(fitting) == 4 and all(r["vs_base"] <= r["budget"] for r in fitting)
    assert all(r["screen_kl"] > 0 for r in fitting)
    again = search.screen_all(tiny_dir, matrix, prose[:20_000], p, dataclasses.replace(gp), seed=0)
    assert [(r["name"], r.get("bytes"), r.get("screen_kl")) for r in again] == \
           [(r["name"], r.get("bytes"), r.get("screen_kl")) for r in rows]
