"""Stage report: every checkpoint's metrics (with intervals), its side-by-side speed and its paired differences
against base and the checkpoint it was made from, into summary CSV / Markdown, a comparisons CSV and static plots."""
import argparse
import json
from pathlib import Path

from llmshrink import kv_cache, models, plots, report, timing
from llmshrink.params import load, load_seed
from llmshrink.params.kv import Kv
from llmshrink.params.model import Model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("eval_dir", help="folder of <checkpoint>.json metrics, e.g. metrics/eval")
    parser.add_argument("items_dir", help="folder of <checkpoint>.json per-item results, e.g. results/items")
    parser.add_argument("benchmark", help="side-by-side speed of the benchmark stage, e.g. metrics/benchmark.json")
    parser.add_argument("models", help="folder of the checkpoints (their configs size the KV cache), e.g. models")
    parser.add_argument("out_dir", help="folder for summary.csv, summary.md, comparisons.csv and plots/report/, e.g. metrics")
    parser.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint names in pipeline order")
    parser.add_argument("--baselines", nargs="*", default=[], help="which of them are baselines of the untouched base")
    parser.add_argument("--made_from", nargs="*", default=[], metavar="CHECKPOINT=SOURCE",
                        help="the checkpoint each one is made from, its 'previous step' (default: the one listed before it)")
    args = parser.parse_args(argv)
    made_from = report.lineage(args.made_from)
    seed, source = load_seed(), load(Model).source
    metrics, items = report.read(args.eval_dir, args.items_dir, args.checkpoints)
    if not metrics:
        raise FileNotFoundError(f"no evaluation results in {args.eval_dir}/ with per-item results in {args.items_dir}/")
    speed = json.loads(Path(args.benchmark).read_text(encoding="utf-8"))["checkpoints"]
    configs = {name: models.read_config(Path(args.models) / name) for name in metrics}
    cache_bytes, deployment = kv_cache.deployment(load(Kv), configs)
    df, comp = report.summary(metrics, speed, cache_bytes), report.comparisons(items, args.baselines, made_from, seed)
    out = Path(args.out_dir)
    report.write(df, comp, report.markdown(df, comp, metrics, args.baselines, source, deployment),
                 out / "summary.csv", out / "comparisons.csv", out / "summary.md")
    plots.write(df, metrics, out / "plots" / "report")
    print((out / "summary.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    with timing.stage("report"):
        main()
