"""Promise: a compressed variant is the same content, and scores the same, whatever the thread
count of the process that made and evaluated it (W8A8 with SmoothQuant, the variant whose score
moved between two runs of the default recipe). Each thread count runs in its own process, as two
machines would; the digest is the compress stage's, the figures the evaluate stage's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = r'''
import json, sys
from pathlib import Path
import torch
threads, model_dir, data_dir, out = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
torch.set_num_threads(threads)
assert torch.get_num_threads() == threads
from components.artifacts import sha256_dir
from components.compression.config import parse_variant
from components.recipe import EvaluateConfig
from components.stages import compress, evaluate
from components.stages.context import StageContext
from components.stages.curate import load_split
folder = out / f"variant-{threads}"
compress.run(parse_variant("rtn-w8a8-sq"), 16, 32, model_dir, data_dir, folder, StageContext())
rows = load_split(data_dir, "eval")
report = evaluate.evaluate_model("v", folder / "model", rows, EvaluateConfig(k=2, max_new_tokens=8), "cpu", torch.float32)
figures = {k: getattr(report, k) for k in ("greedy_pass1", "pass_at_1_sampled", "pass_at_k", "mean_output_tokens")}
texts = [d["greedy_text"] for d in report.model_dump()["details"]]
(out / f"result-{threads}.json").write_text(json.dumps({"digest": sha256_dir(folder), "figures": figures, "texts": texts}))
'''


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    from components.data.config import ArithmeticSource
    from components.data.generators import generate_arithmetic
    from components.data.normalize import prompt_id
    from components.data.writer import write_split
    from components.models import build_tiny_model

    root = tmp_path_factory.mktemp("w8a8-threads")
    build_tiny_model(root / "model", hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=256, seed=0)
    rows = generate_arithmetic(ArithmeticSource(name="arith", n=48, digits=1, operators=["+", "*"], seed=0))
    rows = [{**r, "id": prompt_id(r["prompt"]), "source": "arith", "meta": json.dumps(r["meta"])} for r in rows]
    write_split(rows[:32], root / "data" / "train", 1000)
    write_split(rows[32:], root / "data" / "eval", 1000)
    return root / "model", root / "data"


@pytest.mark.slow
def test_w8a8_sq_digest_and_eval_figures_do_not_depend_on_threads(inputs, tmp_path):
    model_dir, data_dir = inputs
    results = {}
    for threads in (1, 2):
        subprocess.run([sys.executable, "-c", WORKER, str(threads), str(model_dir), str(data_dir), str(tmp_path)],
                       check=True, timeout=600, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        results[threads] = json.loads((tmp_path / f"result-{threads}.json").read_text())
    one, two = results[1], results[2]
    assert one["digest"] == two["digest"]
    assert one["figures"] == two["figures"]
    assert one["texts"] == two["texts"]
