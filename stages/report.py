"""Stage report: metrics/eval/*.json into metrics/summary.csv and metrics/summary.md."""
from llmshrink import report

EVAL_DIR = "metrics/eval"


def main() -> None:
    metrics = report.read_metrics(EVAL_DIR)
    if not metrics:
        raise FileNotFoundError(f"no evaluation results in {EVAL_DIR}/")
    df = report.summary(metrics)
    report.write(df, "metrics/summary.csv", "metrics/summary.md")
    print(df[["checkpoint", "ppl", "exact_match", "disk_mb", "ppl_vs_base", "disk_vs_base"]].to_string(index=False))


if __name__ == "__main__":
    main()
