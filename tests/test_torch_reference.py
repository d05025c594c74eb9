"""jaxlm's GPT against the plain PyTorch reference in benchmarks/torch_gpt.py: same logits,
same greedy tokens (with and without the torch KV cache)."""

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip(
    "torch", reason="the PyTorch reference needs torch (pip install -e '.[reference]')"
)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from tiny import TINY_MODEL  # noqa: E402

from jaxlm.config import SampleConfig, load_config  # noqa: E402
from jaxlm.generate import generate  # noqa: E402
from jaxlm.models import build_model, init_params  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_gpt  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
CONFIGS = {
    # large weights: peaked, prompt-dependent predictions; vocab 100 padded to 128
    "tiny": (None, TINY_MODEL + ["model.max_len=32", "model.init_std=0.5"]),
    "demo": (str(DEMO), []),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def models(request):
    """(jaxlm config, jaxlm params as NumPy, torch model with the same weights)."""
    name_or_path, overrides = CONFIGS[request.param]
    cfg = load_config(name_or_path, overrides).model
    boxed = jax.jit(lambda key: init_params(cfg, key))(jax.random.key(1))
    params = jax.tree.map(np.asarray, nn.unbox(boxed))
    model = torch_gpt.TorchGPT(torch_gpt.GPTConfig.from_model_config(cfg)).eval()
    torch_gpt.load_jaxlm_params(model, params)
    return cfg, params, model


def _prompts(cfg, batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, length))


def test_full_forward_logits_match(models):
    cfg, params, model = models
    tokens = _prompts(cfg, batch=2, length=cfg.max_len // 2)
    expected = jax.jit(build_model(cfg).apply)({"params": params}, tokens.astype(np.int32))
    with torch.inference_mode():
        got = model(torch.from_numpy(tokens)).numpy()
    assert got.shape == expected.shape == (2, cfg.max_len // 2, cfg.padded_vocab_size)
    np.testing.assert_allclose(got, np.asarray(expected), rtol=0, atol=1e-4)


def test_cached_chunks_match_full_forward(models):
    cfg, _, model = models
    tokens = torch.from_numpy(_prompts(cfg, batch=2, length=12))
    cache = torch_gpt.KVCache(model.cfg, batch=2, max_len=12)
    with torch.inference_mode():
        full = model(tokens)
        chunks = [model(tokens[:, a:b], a, cache) for a, b in ((0, 5), (5, 6), (6, 12))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=0, atol=1e-5)


def test_greedy_decode_matches_uncached_and_jaxlm(models):
    cfg, params, model = models
    prompts, new_tokens = _prompts(cfg, batch=3, length=6, seed=2), 10
    cached = torch_gpt.generate(model, torch.from_numpy(prompts), new_tokens)
    uncached = torch_gpt.generate(model, torch.from_numpy(prompts), new_tokens, use_cache=False)
    expected = generate(
        cfg,
        params,
        prompts.tolist(),
        SampleConfig(max_new_tokens=new_tokens, temperature=0.0),
        eos_id=-1,
    )
    assert cached.shape == (3, new_tokens)
    assert cached.tolist() == uncached.tolist() == expected


def test_the_decode_benchmark_replaces_its_configs_section_and_keeps_the_others(tmp_path):
    import decode

    report = tmp_path / "DECODE.md"
    decode.write_section(report, "`demo`", "\nfirst demo\n")
    decode.write_section(report, "`gpt2-small`", "\nsmall\n")
    decode.write_section(report, "`demo`", "\nsecond demo\n")
    assert report.read_text() == (
        f"{decode.TITLE}\n\n## `demo`\n\nsecond demo\n\n## `gpt2-small`\n\nsmall\n"
    )
