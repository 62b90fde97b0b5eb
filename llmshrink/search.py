"""Recipe search: give it byte budgets, get the best `gptq_gguf` recipe for each, proven against the baselines.

    python -m llmshrink.search [--out metrics/search.json] [--profiles profiles]

Two levels of cost (`search` in params.yaml):
1. **Screen** every candidate (a budget of `search.budgets` × a largest format of `search.types`): its formats
   per matrix by `allocate` (sensitivities measured once for every format), its file bytes exactly, and its
   quality as the KL to the base on `search.screen_windows` calibration windows (not the evaluation's text) of
   the model with every matrix rounded to its format, in memory (seconds a candidate).
2. **Evaluate** the best `search.full` screened candidates of each budget for real: the `gptq_gguf` file made
   with those settings, scored as `evaluate` scores (KL to the base and perplexity on the evaluation's windows,
   95% intervals), with paired differences against the baselines of the committed run (`kquant_base`,
   `gptq_base`). Each result is kept under `results/search/`, so an interrupted search resumes.

The winner of each budget is written as a profile (`profiles/search-<budget>.txt`, one `section.key=value` a
line) for `dvc exp run $(sed 's/^/-S /' profiles/search-0.3.txt)`. The result records how well the screen
predicted the evaluation (Spearman's rank correlation over the candidates that got both).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from llmshrink import allocate, gguf_gptq, imatrix, kl, models, timing
from llmshrink.atomic import atomic_file, write_json
from llmshrink.calib import token_windows
from llmshrink.compare import committed, paired, score
from llmshrink.params import InputError, load, load_seed
from llmshrink.params.evaluation import Eval
from llmshrink.params.gguf import GptqGguf
from llmshrink.params.search import Search

BASELINES = ("kquant_base", "gptq_base")


def candidates(p: Search, method: str) -> list[dict[str, Any]]:
    """Every (budget, largest format) pair of the search space with the `gptq_gguf.method`, named."""
    return [{"name": f"b{b:g}-{t}-{method}", "budget": b, "type": t, "method": method} for b in p.budgets
            for t in p.types]


@torch.no_grad()
def _log_probs(model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(w[None], use_cache=False).logits.log_softmax(-1)[0, :-1] for w in windows])


@torch.no_grad()
def screen(model: torch.nn.Module, names: dict[str, str], rounded: dict[str, dict[str, torch.Tensor]],
           formats: dict[str, str], windows: torch.Tensor, reference: torch.Tensor) -> float:
    """KL(base ‖ model with every matrix rounded to its format) per token on `windows`; the weights are restored."""
    modules = dict(model.named_modules())
    kept = {n: modules[n].weight.data for n in names}
    try:
        for n, t in names.items():
            modules[n].weight.data = rounded[t][formats[t]].to(kept[n].dtype)
        ours = _log_probs(model, windows)
    finally:
        for n, w in kept.items():
            modules[n].weight.data = w
    return float((reference.exp() * (reference - ours)).sum(-1).mean())


def screen_all(src: Path, matrix: Path, text: str, p: Search, gp: GptqGguf, seed: int
               ) -> list[dict[str, Any]]:
    """Every candidate with its formats, exact bytes, summed damage and screening KL (or why it cannot fit)."""
    model = models.load(src, "float32")
    windows = token_windows(models.load_tokenizer(src), text, gp.fisher_samples + p.screen_windows, gp.seq_len, seed)
    names = gguf_gptq.tensor_names(model)
    weights = gguf_gptq.matrices(model, names)
    fishers = allocate.fisher(model, windows[: gp.fisher_samples], names)
    importance = {t: torch.from_numpy(v) for t, v in imatrix.read_imatrix(matrix).items()}
    rounded = allocate.round_all(weights, importance, gguf_gptq.formats_up_to(max(p.types, key=_bits)))
    damage = allocate.sensitivities(weights, fishers, rounded)
    held = windows[gp.fisher_samples:]
    reference = _log_probs(model, held)
    with tempfile.TemporaryDirectory() as tmp:
        fixed = gguf_gptq.fixed_bytes(src, matrix, weights, Path(tmp))
    rows, source_bytes = [], models.dir_bytes(src)
    for c in tqdm(candidates(p, gp.method), desc="screen"):
        formats = gguf_gptq.formats_up_to(c["type"])
        try:
            chosen, info = allocate.plan(weights, {t: {f: d[f] for f in formats} for t, d in damage.items()},
                                         formats, fixed, int(c["budget"] * source_bytes))
        except InputError as err:
            rows.append({**c, "fits": False, "why": str(err)})
            continue
        rows.append({**c, "fits": True, "bytes": info["predicted_bytes"], "vs_base": info["predicted_bytes"] / source_bytes,
                     "damage": info["damage"], "formats": info["formats"],
                     "screen_kl": screen(model, names, rounded, chosen, held, reference)})
    return rows


def _bits(fmt: str) -> int:
    return allocate.tensor_bytes((1, gguf_gptq.BLOCK), fmt, 1)


def evaluate(c: dict[str, Any], root: Path, text: str, gp: GptqGguf, ep: Eval, seed: int,
             cache: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The candidate's gptq_gguf file made and scored (cached in `cache`): its row and per-window values."""
    done = cache / f"{c['name']}.json"
    if done.is_file():
        kept = json.loads(done.read_text())
        return kept["row"], kept["windows"]
    texts = json.loads((root / "data" / "perplexity.json").read_text())
    ref = kl.load_reference(root / "results" / "reference.safetensors")
    with tempfile.TemporaryDirectory() as tmp:
        p = dataclasses.replace(gp, enabled=True, type=c["type"], budget=c["budget"], embedding_type="auto")
        made = gguf_gptq.make(root / "models" / "base", Path(tmp) / "out", root / "results" / "imatrix" / "base" /
                              imatrix.FILE_NAME, p, text, seed)
        row, windows = score(Path(tmp) / "out", texts, ref, ep)
    row |= {"tensor_types": made["tensor_types"], "predicted_bytes": made["predicted_bytes"]}
    write_json(done, {"row": row, "windows": windows})
    return row, windows


def profile(c: dict[str, Any]) -> str:
    """The candidate as `section.key=value` lines for `dvc exp run -S`."""
    return f"gptq_gguf.enabled=true\ngptq_gguf.method={c['method']}\ngptq_gguf.budget={c['budget']:g}\n" \
           f"gptq_gguf.type={c['type']}\ngptq_gguf.embedding_type=auto\n"


def run(root: Path, out: Path, profiles: Path) -> dict[str, Any]:
    """The whole search on the committed run under `root`; writes `out` and one profile per budget."""
    path = root / "params.yaml"
    p, gp, ep, seed = load(Search, path), load(GptqGguf, path), load(Eval, path), load_seed(path)
    text = (root / "data" / "calibration.txt").read_text(encoding="utf-8")
    src, matrix = root / "models" / "base", root / "results" / "imatrix" / "base" / imatrix.FILE_NAME
    with timing.part("search/screen"):
        rows = screen_all(src, matrix, text, p, gp, seed)
    base = {name: committed(name, root) for name in BASELINES}
    winners: dict[str, Any] = {}
    for budget in p.budgets:
        fitting = sorted((r for r in rows if r["budget"] == budget and r["fits"]), key=lambda r: r["screen_kl"])
        for r in fitting[: p.full]:
            with timing.part(f"search/evaluate {r['name']}"):
                full, windows = evaluate(r, root, text, gp, ep, seed, root / "results" / "search")
            r["full"] = full
            r["against"] = {b: paired(windows, base[b][1]) for b in BASELINES}
        evaluated = [r for r in fitting if "full" in r]
        if evaluated:
            best = min(evaluated, key=lambda r: r["full"]["kl_news"][0])
            winners[f"{budget:g}"] = best["name"]
            with atomic_file(profiles / f"search-{budget:g}.txt") as f:
                f.write(profile(best))
    both = [r for r in rows if "full" in r]
    rho = spearmanr([r["screen_kl"] for r in both], [r["full"]["kl_news"][0] for r in both]).statistic \
        if len(both) >= 3 else None
    result = {"candidates": rows, "winners": winners, "screen_vs_full_spearman": rho, "evaluated": len(both),
              "baselines": {b: base[b][0] for b in BASELINES}}
    write_json(out, result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("."), help="repository with a finished dvc repro")
    parser.add_argument("--out", type=Path, default=Path("metrics/search.json"))
    parser.add_argument("--profiles", type=Path, default=Path("profiles"))
    args = parser.parse_args(argv)
    result = run(args.root, args.out, args.profiles)
    print(json.dumps({"winners": result["winners"], "spearman": result["screen_vs_full_spearman"]}))


if __name__ == "__main__":
    main()
