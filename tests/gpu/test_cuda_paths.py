"""CUDA paths against their CPU / plain-torch references (``make test-gpu`` on a machine with a GPU).

CI has no GPU, so these carry the ``cuda`` marker and are deselected by default (like ``vllm``);
the CPU references they compare against are tested in ``tests/kernels`` on every run.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _need_cuda():
    if not torch.cuda.is_available():  # deselected by default; this is for `-m cuda` without a GPU
        pytest.fail("the cuda tests need a CUDA device (run them with `make test-gpu` on a GPU machine)")


# ------------------------------------------------------------------ log-prob + entropy kernel


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_triton_logprobs_match_reference(dtype, atol, temperature):
    from kernels.logprobs import token_logprobs

    g = torch.Generator(device="cpu").manual_seed(0)
    n, h, v = 1000, 576, 49152  # SmolLM2's head, a length that is not a multiple of the block
    hidden = (torch.randn(n, h, generator=g) * 0.5).to(CUDA, dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.05).to(CUDA, dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g).to(CUDA)
    lp, ent = token_logprobs(hidden, weight, targets, temperature, impl="triton")
    (lp.sum() + 0.1 * ent.sum()).backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    # reference in fp32 on the same (rounded) inputs
    h32 = hidden.detach().float().requires_grad_()
    w32 = weight.detach().float().requires_grad_()
    logits = (h32 @ w32.T) / temperature
    logp = torch.log_softmax(logits, -1)
    ref_lp = logp.gather(1, targets[:, None])[:, 0]
    ref_ent = -(logp.exp() * logp).sum(-1)
    (ref_lp.sum() + 0.1 * ref_ent.sum()).backward()
    assert lp.dtype == torch.float32 or lp.dtype == dtype
    torch.testing.assert_close(lp.float(), ref_lp, atol=atol, rtol=0)
    torch.testing.assert_close(ent.float(), ref_ent, atol=atol * 5, rtol=0)
    gtol = 1e-4 if dtype == torch.float32 else 2e-2
    assert (gh.float() - h32.grad).abs().max() <= gtol * max(1.0, h32.grad.abs().max().item())
    assert (gw.float() - w32.grad).abs().max() <= gtol * max(1.0, w32.grad.abs().max().item())


# ------------------------------------------------------------------ sparsity


def test_triton_nm_mask_equals_torch_on_cuda():
    from kernels.sparsity import is_nm_sparse, nm_mask

    s = torch.randn(1536, 576, generator=torch.Generator().manual_seed(1))
    s[::7, ::5] = 0.25  # ties, broken by position in both implementations
    got = nm_mask(s.to(CUDA), 2, 4, impl="triton")
    want = nm_mask(s, 2, 4, impl="torch")
    assert got.is_cuda and torch.equal(got.cpu(), want)
    assert is_nm_sparse((s.to(CUDA) * got), 2, 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_semi_structured_matmul_matches_dense(dtype):
    from kernels.sparsity import nm_mask, to_semi_structured

    g = torch.Generator().manual_seed(2)
    w = torch.randn(1024, 576, generator=g)
    w = (w * nm_mask(w.abs(), 2, 4)).to(CUDA, dtype)
    x = torch.randn(256, 576, generator=g).to(CUDA, dtype)
    sparse = to_semi_structured(w)
    got = torch.nn.functional.linear(x, sparse)
    want = torch.nn.functional.linear(x.float(), w.float())
    torch.testing.assert_close(got.float(), want, atol=0.15, rtol=2e-2)


# ------------------------------------------------------------------ quantization


@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_dequant_matmul_matches_reference(bits, symmetric, dtype):
    from kernels.quant import dequant_matmul, pack_int, quantize_rtn

    g = torch.Generator().manual_seed(3)
    w = torch.randn(1536, 576, generator=g) * 0.05
    q, scale, zero = quantize_rtn(w, bits, 64, symmetric)
    packed = pack_int(q, bits)
    x = torch.randn(3, 37, 576, generator=g)
    want = dequant_matmul(x, packed, scale, zero, 64, bits, impl="reference")
    got = dequant_matmul(
        x.to(CUDA, dtype), packed.to(CUDA), scale.to(CUDA), None if zero is None else zero.to(CUDA), 64, bits,
        impl="triton",
    )  # fmt: skip
    tol = 1e-3 if dtype == torch.float32 else 3e-2
    assert got.shape == want.shape and got.dtype == dtype
    torch.testing.assert_close(got.float().cpu(), want, atol=tol * want.abs().max().item(), rtol=0)


def test_gptq_on_cuda_matches_cpu():
    from kernels.gptq import gptq_quantize

    g = torch.Generator().manual_seed(4)
    x = torch.randn(2048, 576, generator=g)
    w = torch.randn(256, 576, generator=g) * 0.05
    H = 2 * x.T @ x / x.shape[0]
    cpu = gptq_quantize(w, H, bits=4, group_size=64)
    gpu = gptq_quantize(w.to(CUDA), H.to(CUDA), bits=4, group_size=64)
    # integer codes may differ where a column sits on a rounding boundary; nearly all agree
    agree = (gpu.q.cpu() == cpu.q).float().mean().item()
    assert agree > 0.995, agree
    err = lambda wq: ((x @ (wq.float().cpu() - w).T) ** 2).mean().item()  # noqa: E731
    assert err(gpu.weight) <= 1.02 * err(cpu.weight)


def test_wanda_gptq_compress_model_on_cuda(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from components.compression.apply import compress_model
    from components.compression.config import parse_variant
    from kernels.sparsity import is_nm_sparse

    g = torch.Generator().manual_seed(5)
    batches = [{"input_ids": torch.randint(3, 60, (4, 24), generator=g), "attention_mask": torch.ones(4, 24, dtype=torch.long)}
               for _ in range(3)]  # fmt: skip
    for variant in ("wanda-2:4", "gptq-w4g32"):
        on = {}
        for dev in ("cpu", "cuda"):
            m = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).to(dev).eval()
            compress_model(m, parse_variant(variant), batches)
            on[dev] = {k: v.detach().cpu() for k, v in m.state_dict().items()}
        for k, w in on["cuda"].items():
            if variant == "wanda-2:4" and k.endswith("proj.weight"):
                assert is_nm_sparse(w, 2, 4), k
                # same masks up to near-ties of the score
                assert ((w != 0) == (on["cpu"][k] != 0)).float().mean() > 0.99, k
            # GPTQ carries each column's rounding error into the next ones, so a code that flips on a
            # rounding boundary (float order differs on the GPU) moves a few later weights by one step
            off = (w - on["cpu"][k]).abs() > 1e-5 * (1 + w.abs().max().item())
            assert off.float().mean() < 0.02, (k, off.float().mean())


# ------------------------------------------------------------------ engine and training step


def test_transformers_engine_bf16_on_cuda(tiny_model_dir):
    from components.engines.base import SamplingParams
    from components.engines.transformers_engine import TransformersEngine
    from components.models import load_model, load_tokenizer

    model = load_model(tiny_model_dir, "cuda", torch.bfloat16)
    eng = TransformersEngine(model, load_tokenizer(tiny_model_dir))
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Hi"}]]
    out = eng.generate(prompts, 4, SamplingParams(max_new_tokens=8, temperature=0.8, seed=1))
    again = eng.generate(prompts, 4, SamplingParams(max_new_tokens=8, temperature=0.8, seed=1))
    assert [s.token_ids for g in out.groups for s in g] == [s.token_ids for g in again.groups for s in g]
    for i, grp in enumerate(out.groups):
        for s in grp:
            ids = torch.tensor([out.prompt_token_ids[i] + s.token_ids], device="cuda")
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=ids).logits[0].float() / 0.8, -1)
            p0 = len(out.prompt_token_ids[i]) - 1
            ref = torch.tensor([lp[p0 + j, t].item() for j, t in enumerate(s.token_ids)])
            # bf16 forward with and without a KV cache differ by rounding only
            assert (torch.tensor(s.logprobs) - ref).abs().max() < 0.1


def test_bf16_training_segment_on_cuda(tiny_model_dir, tmp_path, monkeypatch):
    import json

    from safetensors.torch import load_file

    import components.scoring as scoring
    from components.rewards import RewardResult
    from components.rl.config import RLConfig
    from components.rl.segment import run_segment

    class Letter:
        version = "test"

        def __call__(self, text, answer, meta=None):
            return RewardResult(score=float(text[:1].isalpha()), parts={}, error=None)

    monkeypatch.setattr(scoring, "get_reward", lambda name: Letter())
    rows = [{"id": f"p{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i), "system": None,
             "task": "numeric", "meta": "{}"} for i in range(6)]  # fmt: skip
    cfg = RLConfig(steps=2, segment_steps=2, prompts_per_step=3, group_size=4, max_new_tokens=6, lr=1e-2,
                   minibatch_size=6, micro_batch_size=3, seed=5, loss={"variant": "dapo", "kl_coef": 0.05})  # fmt: skip
    out = tmp_path / "seg"
    summary = run_segment(
        base_model_dir=tiny_model_dir, init_checkpoint=None, rows=rows, weights=None, difficulty=None, cfg=cfg,
        start_step=0, end_step=2, out_dir=out, device="cuda", dtype=torch.bfloat16,
    )  # fmt: skip
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [0, 1]
    for h in hist:
        assert all(v == v for v in h.values() if isinstance(v, float)), h  # no NaN
        assert h["logprob_mismatch"] < 0.1  # engine (KV cache) vs trainer (Triton) log-probs, bf16
    w = load_file(str(out / "model" / "model.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    assert any(not torch.equal(w[k].float(), base[k].float()) for k in base)
    assert summary
