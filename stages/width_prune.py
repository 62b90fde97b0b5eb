"""Stage width_prune: WANDA on models/depth into models/width, sparsity in metrics/width.json."""
import time
from pathlib import Path

from transformers import AutoTokenizer

from llmshrink import models, wanda
from llmshrink.atomic import atomic_dir, copy_dir, write_json
from llmshrink.calib import token_windows
from llmshrink.params import choice, load_params

SRC, OUT, CALIB, METRICS = "models/depth", "models/width", "data/calibration.txt", "metrics/width.json"


def main() -> None:
    params = load_params()
    p = params["wanda"]
    dtype = choice("model.dtype", params["model"]["dtype"], models.DTYPES)
    if not choice("wanda.enabled", p["enabled"], (True, False)):
        copy_dir(SRC, OUT)
        write_json(METRICS, {"enabled": False, "pattern": "dense", "target": 0.0, "sparsity": 0.0, "modules": {}})
        print(f"{OUT}: copy of {SRC} (wanda.enabled=false)")
        return
    s = wanda.settings(p)
    model = models.load(SRC)
    tokenizer = AutoTokenizer.from_pretrained(SRC)
    calib = token_windows(tokenizer, Path(CALIB).read_text(encoding="utf-8"), s.samples, s.seq_len, params["seed"])
    start = time.perf_counter()
    pruned = wanda.prune(model, calib, s)
    seconds = time.perf_counter() - start
    with atomic_dir(OUT) as tmp:
        models.save(model, tokenizer, tmp, dtype)
    metrics = wanda.report(s, pruned)  # counted after the cast to the saved dtype
    write_json(METRICS, metrics)
    print(f"{OUT}: {s.pattern}, sparsity {metrics['sparsity']:.4f} over {len(pruned)} modules in {seconds:.1f} s")


if __name__ == "__main__":
    main()
