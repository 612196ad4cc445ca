"""Is a W8A8 variant the same function under another thread count or batch composition?

    python tests/bench/bench_w8a8_determinism.py --summary S.json --out DIR [--variant rtn-w8a8-sq] [--threads 1 2]
        [--model DIR]   # another checkpoint than the run's RL model (e.g. SmolLM2-sized)

For each thread count, a fresh process (torch.set_num_threads before any work) compresses the
run's RL checkpoint as the compress stage does and reports the dense twin's digest, then the
logits of the held-out prompts batched as evaluation batches them and one prompt at a time.
Printed: whether digests and logits match across thread counts and batchings, the largest logit
difference, and the share of greedy next tokens that differ.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def worker(summary: Path, variant: str, threads: int, out: Path, model_dir: Path | None) -> None:
    import torch

    torch.set_num_threads(threads)
    from components.artifacts import sha256_dir
    from components.compression.config import parse_variant
    from components.models import load_model
    from components.stages import compress as stage
    from components.stages.context import StageContext

    stages = json.loads(summary.read_text())["stages"]
    dataset = Path(next(iter(stages["curate"]["outputs"].values()))["uri"])
    rl = model_dir or Path(next(iter(stages["rl_train"]["outputs"].values()))["uri"]) / "model"
    folder = out / f"variant-t{threads}"
    stage.run(parse_variant(variant), 8, 32, rl, dataset, folder, StageContext())
    model = load_model(folder / "model").eval()
    from components.models import load_tokenizer
    from components.stages.curate import load_split

    tok = load_tokenizer(rl)
    held = stage.calibration_batches(tok, load_split(dataset, "eval"), 64, 32, batch_size=16)
    with torch.inference_mode():
        batched = [model(**b).logits for b in held]
        single = [torch.cat([model(input_ids=b["input_ids"][i:i + 1, : int(b["attention_mask"][i].sum())]).logits[:, -1]
                             for i in range(len(b["input_ids"]))]) for b in held]
    last = [lg[torch.arange(len(lg)), b["attention_mask"].sum(1) - 1] for lg, b in zip(batched, held)]
    torch.save({"batched_last": torch.cat(last), "single_last": torch.cat(single)}, out / f"logits-t{threads}.pt")
    (out / f"digest-t{threads}.txt").write_text(sha256_dir(folder))


def compare(out: Path, threads: list[int]) -> dict:
    import torch

    res = {"digests": {t: (out / f"digest-t{t}.txt").read_text() for t in threads}}
    lg = {t: torch.load(out / f"logits-t{t}.pt") for t in threads}
    a, b = threads[0], threads[-1]
    res["same_digest"] = len(set(res["digests"].values())) == 1
    for kind in ("batched_last", "single_last"):
        x, y = lg[a][kind], lg[b][kind]
        res[f"{kind}_equal_across_threads"] = bool(torch.equal(x, y))
        res[f"{kind}_max_abs_diff"] = float((x - y).abs().max())
        res[f"{kind}_argmax_differs"] = float((x.argmax(-1) != y.argmax(-1)).float().mean())
    x, y = lg[a]["batched_last"], lg[a]["single_last"]
    res["batched_vs_single_equal"] = bool(torch.equal(x, y))
    res["batched_vs_single_max_abs_diff"] = float((x - y).abs().max())
    res["batched_vs_single_argmax_differs"] = float((x.argmax(-1) != y.argmax(-1)).float().mean())
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--summary", type=Path, required=True)
    ap.add_argument("--variant", default="rtn-w8a8-sq")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--worker", type=int, default=None)
    ap.add_argument("--model", type=Path, default=None)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.worker is not None:
        return worker(a.summary, a.variant, a.worker, a.out, a.model)
    for t in a.threads:
        subprocess.run([sys.executable, __file__, "--summary", str(a.summary), "--variant", a.variant,
                        "--out", str(a.out), "--worker", str(t)] + (["--model", str(a.model)] if a.model else []),
                       check=True)
    print(json.dumps(compare(a.out, a.threads), indent=2))


if __name__ == "__main__":
    main()
