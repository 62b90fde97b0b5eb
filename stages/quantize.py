"""Stage quantize: GPTQ of models/lora into models/gptq with GPTQModel (a copy when gptq.enabled is false)."""
from pathlib import Path

from llmshrink import quantize
from llmshrink.atomic import write_json
from llmshrink.params import load_params

SRC, OUT, METRICS = "models/lora", "models/gptq", "metrics/gptq.json"


def main() -> None:
    params = load_params()
    text = Path("data/calibration.txt").read_text(encoding="utf-8")
    metrics = quantize.gptq(SRC, OUT, params["gptq"], text, params["seed"])
    write_json(METRICS, metrics)
    print(f"{OUT}: {metrics}")


if __name__ == "__main__":
    main()
