"""Stage report: the evaluation JSONs of every checkpoint into a summary CSV and Markdown table."""
import argparse

from llmshrink import report, timing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("eval_dir", help="folder of <checkpoint>.json evaluation results, e.g. metrics/eval")
    parser.add_argument("benchmark", help="side-by-side speed of the benchmark stage, e.g. metrics/benchmark.json")
    parser.add_argument("csv", help="summary CSV to write, e.g. metrics/summary.csv")
    parser.add_argument("md", help="summary Markdown to write, e.g. metrics/summary.md")
    parser.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint names in pipeline order")
    args = parser.parse_args(argv)
    metrics = report.read_metrics(args.eval_dir, args.checkpoints, args.benchmark)
    if not metrics:
        raise FileNotFoundError(f"no evaluation results in {args.eval_dir}/")
    df = report.summary(metrics)
    report.write(df, args.csv, args.md)
    print(df[["checkpoint", "ppl", "exact_match", "disk_mb", "ppl_vs_base", "disk_vs_base"]].to_string(index=False))


if __name__ == "__main__":
    with timing.stage("report"):
        main()
