"""What W8A8 costs the RL checkpoint of a finished run, with and without SmoothQuant.

    python tests/bench/bench_w8a8.py [--summary .posttrain/last-summary.json] [--variants none rtn-w8a8 rtn-w8a8-sq]

Takes the run's RL checkpoint and curated splits, compresses with each variant (calibration as the
compress stage does it: 32 training prompts with answers, 64 tokens), and prints greedy pass@1 on
the held-out split (the evaluate stage's prompts, 16 new tokens) next to the uncompressed model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "bench"))


def main() -> None:
    from bench_compression_full import evaluate

    from components.compression.apply import compress_model
    from components.compression.config import parse_variant
    from components.models import load_model, load_tokenizer
    from components.stages.compress import calibration_batches
    from components.stages.curate import load_split

    ap = argparse.ArgumentParser()
    ap.add_argument("--summary", type=Path, default=ROOT / ".posttrain/last-summary.json")
    ap.add_argument("--variants", nargs="+", default=["none", "rtn-w8a8", "rtn-w8a8-sq"])
    a = ap.parse_args()
    stages = json.loads(a.summary.read_text())["stages"]
    dataset = next(iter(stages["curate"]["outputs"].values()))["uri"]
    rl = Path(next(iter(stages["rl_train"]["outputs"].values()))["uri"]) / "model"
    tok = load_tokenizer(rl)
    calib = calibration_batches(tok, load_split(dataset, "train"), 32, 64)
    held = load_split(dataset, "eval")
    out = {}
    for spec in a.variants:
        model = load_model(rl).eval()
        if spec != "none":
            compress_model(model, parse_variant(spec), calib)
        out[spec] = round(evaluate(spec, model, tok, held, 16)["greedy_pass1"], 4)
        print(f"{spec:14s} greedy pass@1 {out[spec]:.1%} on {len(held)} held-out prompts", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
