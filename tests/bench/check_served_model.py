"""Which model answers at a deployed endpoint? (run after `make run`)

    python tests/bench/check_served_model.py [--summary .posttrain/last-summary.json] [--n 20]

Sends the first ``--n`` held-out prompts of the run's curated split to the endpoint in the run
summary (greedy, through the ``openai`` client), generates greedy answers locally with the
transformers engine from the base checkpoint and from the folder the deployment serves, and prints
how many endpoint answers are identical to each and how many are correct. An endpoint that serves
the RL-trained model matches the served folder on every prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from openai import OpenAI

    from components.engines.base import SamplingParams
    from components.engines.transformers_engine import TransformersEngine
    from components.models import load_model, load_tokenizer
    from components.prompts import messages_for
    from components.scoring import RewardScorer
    from components.stages.curate import load_split

    ap = argparse.ArgumentParser()
    ap.add_argument("--summary", type=Path, default=ROOT / ".posttrain/last-summary.json")
    ap.add_argument("--n", type=int, default=20)
    a = ap.parse_args()
    summary = json.loads(a.summary.read_text())
    dep = summary["stages"]["deploy"]["deployment"]
    dataset = next(iter(summary["stages"]["curate"]["outputs"].values()))["uri"]
    base = next(iter(summary["stages"]["prepare_model"]["outputs"].values()))["uri"]
    rows = load_split(dataset, "eval")[: a.n]
    client = OpenAI(base_url=dep["endpoint"], api_key="none")
    answers = {"endpoint": [
        client.chat.completions.create(model=dep["served_model_name"], messages=messages_for(r), max_tokens=16,
                                       temperature=0).choices[0].message.content
        for r in rows
    ]}  # fmt: skip
    for name, folder in (("base", base), ("served folder", dep["served_dir"])):
        eng = TransformersEngine(load_model(Path(folder)), load_tokenizer(Path(folder)))
        out = eng.generate([messages_for(r) for r in rows], 1, SamplingParams(temperature=0, max_new_tokens=16))
        answers[name] = [g[0].text for g in out.groups]
    score = RewardScorer()
    print(f"endpoint {dep['endpoint']} serves {dep['model_name']} v{dep['version']} ({dep['registered']}, {dep['served_format']})")
    for name, texts in answers.items():
        same = sum(x == y for x, y in zip(texts, answers["endpoint"]))
        correct = sum(score(r, t) for r, t in zip(rows, texts))
        print(f"{name:14s} identical to the endpoint: {same}/{len(rows)}   correct: {correct:.0f}/{len(rows)}")


if __name__ == "__main__":
    main()
