"""Stage benchmark: prefill and decode speed of every checkpoint, side by side in one process (interleaved
rounds), with ratios to the first checkpoint, peak memory and the machine it ran on."""
import argparse
from pathlib import Path

from llmshrink import benchmark, hardware, llamacpp, timing
from llmshrink.atomic import write_json
from llmshrink.params import load
from llmshrink.params.benchmark import Benchmark


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models_dir", help="folder of checkpoint folders, e.g. models")
    parser.add_argument("out", help="JSON to write, e.g. metrics/benchmark.json")
    parser.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint names; the first is the baseline")
    parser.add_argument("--baselines", nargs="*", default=[], help="which of them are baselines (unused here)")
    args = parser.parse_args(argv)
    p = load(Benchmark)
    paths = {name: Path(args.models_dir) / name for name in args.checkpoints}
    result = benchmark.run(paths, hardware.resolve_dtype(p.dtype), p.rounds, p.prompt_tokens, p.new_tokens,
                           list(p.batch_sizes))
    result["llama_cpp"] = llamacpp.compare(paths, p.rounds, p.prompt_tokens, p.new_tokens,
                                           result["machine"]["torch_threads"])
    write_json(args.out, hardware.stamped(result))
    for name, r in result["checkpoints"].items():
        print(f"{name:>8}: prefill {r['prefill_tok_s']:8.1f} tok/s ({r['prefill_vs_base']:.2f}x), "
              f"decode {r['decode_tok_s']:6.1f} tok/s ({r['decode_vs_base']:.2f}x)")
    for name, r in result["llama_cpp"].get("checkpoints", {}).items():
        print(f"llama.cpp {name:>8}: prefill {r['prefill_tok_s']:8.1f} tok/s, decode {r['decode_tok_s']:6.1f} tok/s, "
              f"peak {r['peak_mem_bytes'] / 2**20:.0f} MiB")
    if "skipped" in result["llama_cpp"]:
        print(f"llama.cpp skipped: {result['llama_cpp']['skipped']}")


if __name__ == "__main__":
    with timing.stage("benchmark"):
        main()
