"""CUDA benchmarks: each optimised path against its plain-torch baseline in the same run.

    python tests/bench/bench_gpu.py [--out tests/bench/results/gpu.json] [--sweep]

1. log-prob + entropy, forward + backward: naive ``log_softmax`` over materialised logits, the
   chunked torch path, and the Triton kernel (time and peak memory);
2. int4 / int8 dequantize-matmul (Triton) against a dense bf16 ``F.linear`` of the same shape;
3. 2:4 semi-structured ``F.linear`` against dense, fp16;
4. GPTQ on one layer, CUDA against CPU;
5. one bf16 GRPO-shaped training step (forward + backward) of a random SmolLM2-shaped Llama
   (30 layers, hidden 576, vocab 49152), log-probs through the Triton kernel vs naive logits.
Timings are medians of CUDA-event-timed repeats after warm-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kernels.gptq import gptq_quantize  # noqa: E402
from kernels.logprobs import token_logprobs  # noqa: E402
from kernels.quant import dequant_matmul, pack_int, quantize_rtn  # noqa: E402
from kernels.sparsity import nm_mask, to_semi_structured  # noqa: E402

DEV = torch.device("cuda")


def cuda_time(fn, warmup: int = 2, reps: int = 5) -> float:
    """Median milliseconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def peak_mb(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def naive_logprobs(h, w, t):
    logp = torch.log_softmax((h @ w.T).float(), -1)
    return logp.gather(-1, t[:, None])[:, 0], -(logp.exp() * logp).sum(-1)


def bench_logprobs(n: int, hdim: int, vocab: int) -> dict:
    h = (torch.randn(n, hdim, device=DEV) * 0.5).bfloat16().requires_grad_()
    w = (torch.randn(vocab, hdim, device=DEV) * 0.05).bfloat16().requires_grad_()
    t = torch.randint(0, vocab, (n,), device=DEV)
    impls = {
        "naive": lambda: naive_logprobs(h, w, t),
        "chunked": lambda: token_logprobs(h, w, t, impl="chunked", chunk_size=1024),
        "triton": lambda: token_logprobs(h, w, t, impl="triton"),
    }
    out = {"tokens": n, "hidden": hdim, "vocab": vocab, "dtype": "bf16"}
    for name, f in impls.items():
        def step(f=f):
            lp, ent = f()
            (lp.sum() + 0.01 * ent.sum()).backward()
            h.grad = w.grad = None

        out[f"{name}_ms"] = round(cuda_time(step), 3)
        out[f"{name}_peak_mb"] = round(peak_mb(step), 1)
    for name in ("chunked", "triton"):
        out[f"{name}_speed_vs_naive"] = round(out["naive_ms"] / out[f"{name}_ms"], 2)
        out[f"{name}_memory_vs_naive"] = round(out["naive_peak_mb"] / max(out[f"{name}_peak_mb"], 1e-3), 1)
    return out


def bench_dequant(m: int, n: int, k: int, bits: int) -> dict:
    w = torch.randn(n, k, device=DEV) * 0.05
    q, scale, zero = quantize_rtn(w, bits, 64, True)
    packed = pack_int(q, bits)
    x = torch.randn(m, k, device=DEV).bfloat16()
    wd = w.bfloat16()
    dense = cuda_time(lambda: F.linear(x, wd), reps=20)
    quant = cuda_time(lambda: dequant_matmul(x, packed, scale, zero, 64, bits, impl="triton"), reps=20)
    unfused = cuda_time(lambda: dequant_matmul(x, packed, scale, zero, 64, bits, impl="torch"), reps=20)
    return {"m": m, "n": n, "k": k, "bits": bits, "dense_bf16_ms": round(dense, 4), "triton_ms": round(quant, 4),
            "torch_unfused_ms": round(unfused, 4), "triton_vs_dense": round(dense / quant, 2),
            "triton_vs_unfused": round(unfused / quant, 2), "weight_bytes_ratio": round(16 / bits, 1)}  # fmt: skip


def bench_semi_structured(m: int, n: int, k: int) -> dict:
    w = torch.randn(n, k, device=DEV)
    w = (w * nm_mask(w.abs(), 2, 4)).half()
    x = torch.randn(m, k, device=DEV).half()
    sw = to_semi_structured(w)
    dense = cuda_time(lambda: F.linear(x, w), reps=20)
    sparse = cuda_time(lambda: F.linear(x, sw), reps=20)
    return {"m": m, "n": n, "k": k, "dense_fp16_ms": round(dense, 4), "sparse24_ms": round(sparse, 4),
            "speedup": round(dense / sparse, 2)}  # fmt: skip


def bench_gptq(o: int, i: int) -> dict:
    x = torch.randn(4096, i)
    w = torch.randn(o, i) * 0.05
    H = 2 * x.T @ x / x.shape[0]
    t0 = time.perf_counter()
    gptq_quantize(w, H, bits=4, group_size=64)
    cpu_s = time.perf_counter() - t0
    wg, Hg = w.to(DEV), H.to(DEV)
    gptq_quantize(wg, Hg, bits=4, group_size=64)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    gptq_quantize(wg, Hg, bits=4, group_size=64)
    torch.cuda.synchronize()
    gpu_s = time.perf_counter() - t0
    return {"out": o, "in": i, "cpu_s": round(cpu_s, 3), "cuda_s": round(gpu_s, 4), "speedup": round(cpu_s / gpu_s, 1)}


def bench_train_step(batch: int, seq: int) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(DEV, torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=DEV)
    tgt = ids[:, 1:].reshape(-1)
    out = {"batch": batch, "seq": seq, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}

    for name in ("naive", "triton"):
        def step(name=name):
            hidden = model.model(input_ids=ids).last_hidden_state[:, :-1].reshape(-1, cfg.hidden_size)
            if name == "naive":
                lp, ent = naive_logprobs(hidden, model.lm_head.weight, tgt)
            else:
                lp, ent = token_logprobs(hidden, model.lm_head.weight, tgt, impl="triton")
            (-(lp.mean()) - 0.001 * ent.mean()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        ms = cuda_time(step, warmup=2, reps=5)
        out[f"{name}_ms"] = round(ms, 1)
        out[f"{name}_tokens_per_s"] = round(batch * seq / ms * 1000)
        out[f"{name}_peak_mb"] = round(peak_mb(step), 1)
    out["triton_memory_vs_naive"] = round(out["naive_peak_mb"] / out["triton_peak_mb"], 2)
    out["triton_speed_vs_naive"] = round(out["naive_ms"] / out["triton_ms"], 2)
    return out


def sweep_dequant() -> list[dict]:
    """Every candidate tile config per activation-row count: correctness first, then time."""
    from kernels.quant import _dequant_matmul_triton, dequant_launch_config

    w = torch.randn(4096, 4096, device=DEV) * 0.05
    q, scale, zero = quantize_rtn(w, 4, 64, True)
    packed = pack_int(q, 4)
    grids = {
        (1, 16): [dict(BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, num_warps=nw, num_stages=ns)
                  for bn in (16, 32, 64) for bk in (64, 128, 256) for nw in (2, 4) for ns in (2, 4)],
        (256,): [dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=nw, num_stages=3)
                 for bm in (32, 64) for bn in (64, 128) for bk in (64, 128) for nw in (4, 8)],
        (4096,): [dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=nw, num_stages=3)
                  for bm in (64, 128) for bn in (64, 128, 256) for bk in (32, 64) for nw in (4, 8)],
    }  # fmt: skip
    out = []
    for ms, cfgs in grids.items():
        for m in ms:
            x = torch.randn(m, 4096, device=DEV).bfloat16()
            want = dequant_matmul(x, packed, scale, zero, 64, 4, impl="torch").float()
            dense = cuda_time(lambda x=x: F.linear(x, w.bfloat16()), reps=20)
            best, rows = None, []
            for cfg in cfgs + [dequant_launch_config(m)]:
                try:
                    got = _dequant_matmul_triton(x, packed, scale, zero, 64, 4, cfg).float()
                    ok = bool(((got - want).abs().max() <= 3e-2 * want.abs().max()).item())
                    ms_ = cuda_time(lambda x=x, cfg=cfg: _dequant_matmul_triton(x, packed, scale, zero, 64, 4, cfg), reps=20)
                except Exception as e:  # noqa: BLE001 - a config that does not compile is just skipped
                    rows.append({**cfg, "error": type(e).__name__})
                    continue
                rows.append({**cfg, "ok": ok, "ms": round(ms_, 4)})
                if ok and (best is None or ms_ < best["ms"]):
                    best = {**cfg, "ms": round(ms_, 4)}
            cur = dequant_launch_config(m)
            cur_ms = next(r["ms"] for r in reversed(rows) if all(r.get(k) == v for k, v in cur.items()))
            out.append({"m": m, "dense_bf16_ms": round(dense, 4), "best": best, "current": {**cur, "ms": cur_ms},
                        "tried": len(cfgs), "failed": sum("error" in r or not r.get("ok") for r in rows)})  # fmt: skip
            print(json.dumps(out[-1]), flush=True)
    return out


def sweep_logprobs_fwd(n: int = 8192, hdim: int = 576, vocab: int = 49152) -> dict:
    from kernels._triton_logprobs import triton_token_logprobs

    h = (torch.randn(n, hdim, device=DEV) * 0.5).bfloat16()
    w = (torch.randn(vocab, hdim, device=DEV) * 0.05).bfloat16()
    t = torch.randint(0, vocab, (n,), device=DEV)
    ref, _ = naive_logprobs(h, w, t)
    naive = cuda_time(lambda: naive_logprobs(h, w, t), reps=10)
    rows, best = [], None
    for bn in (64, 128):
        for bv in (64, 128, 256):
            for bh in (32, 64):
                for nw in (4, 8):
                    for ns in (2, 3):
                        cfg = dict(block_n=bn, block_v=bv, block_h=bh, num_warps=nw, num_stages=ns)
                        try:
                            lp, _ = triton_token_logprobs(h, w, t, config=cfg)
                            ok = bool(((lp - ref).abs().max() < 5e-2).item())
                            ms_ = cuda_time(lambda cfg=cfg: triton_token_logprobs(h, w, t, config=cfg), reps=10)
                        except Exception as e:  # noqa: BLE001
                            rows.append({**cfg, "error": type(e).__name__})
                            continue
                        rows.append({**cfg, "ok": ok, "ms": round(ms_, 3)})
                        if ok and (best is None or ms_ < best["ms"]):
                            best = {**cfg, "ms": round(ms_, 3)}
    cur = cuda_time(lambda: triton_token_logprobs(h, w, t), reps=10)
    return {"tokens": n, "hidden": hdim, "vocab": vocab, "naive_fwd_ms": round(naive, 3), "current_fwd_ms": round(cur, 3),
            "best": best, "tried": len(rows), "failed": sum("error" in r or not r.get("ok") for r in rows)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "tests/bench/results/gpu.json")
    ap.add_argument("--sweep", action="store_true", help="search kernel tile configs instead of the benchmark")
    a = ap.parse_args()
    res: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    try:
        import triton

        res["triton"] = triton.__version__
    except ImportError:
        pass
    sections = {
        "sweep_dequant": sweep_dequant,
        "sweep_logprobs_fwd": lambda: [sweep_logprobs_fwd()],
    } if a.sweep else {
        "logprobs": lambda: [bench_logprobs(8192, 576, 49152), bench_logprobs(16384, 2048, 151936)],
        "dequant_matmul": lambda: [bench_dequant(m, 4096, 4096, b) for b in (4, 8) for m in (1, 16, 256, 4096)],
        "semi_structured_24": lambda: [bench_semi_structured(m, 4096, 4096) for m in (256, 4096, 16384)],
        "gptq": lambda: [bench_gptq(1536, 576), bench_gptq(2048, 2048)],
        "train_step_smollm2_shape": lambda: [bench_train_step(64, 80), bench_train_step(64, 512)],
    }
    for name, fn in sections.items():
        t0 = time.perf_counter()
        try:
            res[name] = fn()
        except Exception as e:  # noqa: BLE001 - record and go on: one section failing must not lose the rest
            res[name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"{name} ({time.perf_counter() - t0:.1f} s): {json.dumps(res[name])}", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
