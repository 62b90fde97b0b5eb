"""Stage eora: models/gptq plus an EoRA adapter (models/eora/adapter) fitted against models/lora."""
from pathlib import Path

from llmshrink import quantize
from llmshrink.atomic import write_json
from llmshrink.params import load_params

REFERENCE, QUANTIZED, OUT, METRICS = "models/lora", "models/gptq", "models/eora", "metrics/eora.json"


def main() -> None:
    params = load_params()
    text = Path("data/calibration.txt").read_text(encoding="utf-8")
    metrics = quantize.eora(REFERENCE, QUANTIZED, OUT, params["eora"], text, params["seed"])
    write_json(METRICS, metrics)
    print(f"{OUT}: {metrics}")


if __name__ == "__main__":
    main()
