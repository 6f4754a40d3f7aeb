"""Layer-level baseline steps (slimgpt.baselines_methods) on tiny explicit layers."""
from types import SimpleNamespace

import torch
from torch import nn

from slimgpt import baselines_methods as M
from tolerances import assert_close


def lin(rows, bias=False):
    W = torch.tensor(rows, dtype=torch.float64)
    m = nn.Linear(W.shape[1], W.shape[0], bias=bias).double()
    with torch.no_grad():
        m.weight.copy_(W)
    return m


def tiny_attn():
    # 2 heads, head_dim 1, D = 2 (MHA): the magnitude test case of test_baselines.py
    return SimpleNamespace(q_proj=lin([[1, 1], [0, 2]]), k_proj=lin([[0, 1], [1, 0]]),
                           v_proj=lin([[2, 0], [0, 0]]), o_proj=lin([[1, 3], [1, 0]]))


def test_head_scores_magnitude_mha_and_query_only():
    attn = tiny_attn()
    assert_close(M.head_scores("magnitude", attn, 2), [9.0, 14.0], "float64")
    # query-head-only structures (GQA option B): k/v stay, so only q rows + o columns count
    assert_close(M.head_scores("magnitude", attn, 2, kv_in_struct=False), [2 + 2, 4 + 9], "float64")


def test_wanda_sp_through_hooks():
    # o_proj inputs: tokens [1, 0], [1, 2] -> ||X_0||² = 2, ||X_1||² = 4
    attn = tiny_attn()
    with M.input_stats({"o": attn.o_proj}) as st:
        attn.o_proj(torch.tensor([[1.0, 0.0], [1.0, 2.0]], dtype=torch.float64))
    # Σ_i |W_ij| = [2, 3]; scores = [2·√2, 3·2] = [2.828, 6]
    assert_close(M.head_scores("wanda-sp", attn, 2, st["o"]), [2 * 2 ** 0.5, 6.0], "float64")
    mlp = SimpleNamespace(gate_proj=lin([[1], [1]]), up_proj=lin([[1], [1]]), down_proj=lin([[3, -1]]))
    with M.input_stats({"d": mlp.down_proj}) as st2:
        mlp.down_proj(torch.tensor([[1.0, 3.0]], dtype=torch.float64))
    assert_close(M.channel_scores("wanda-sp", mlp, st2["d"]), [3.0, 3.0], "float64")
    assert_close(M.channel_scores("magnitude", mlp), [1 + 1 + 9, 1 + 1 + 1], "float64")


def test_flap_plan_by_hand():
    # Two layers, each 2 heads of 1 column and 3 channels. Heads cost 10, channels 1, budget 12.
    # Attention scores are squared then standardized: layer 0 [1, 2] -> [1, 4] -> z = [-0.707, 0.707]
    # layer 1 [3, 1] -> [9, 1] -> z = [0.707, -0.707]. Channels standardized per layer:
    # layer 0 [0, 1, 2] -> [-1, 0, 1]; layer 1 [5, 5, 8] -> [-0.577, -0.577, 1.155].
    o = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 1.0])]
    d = [torch.tensor([0.0, 1.0, 2.0]), torch.tensor([5.0, 5.0, 8.0])]
    heads, chans = M.flap_plan(o, [2, 2], d, 10, 1, budget=12)
    # ascending: L0 ch0 (-1, left 11), L0 head0 (-0.707, left 1), L1 head1 (-0.707, cost 10 > 1: skip),
    # L1 ch0 (-0.577, left 0) -> done.
    assert [h.tolist() for h in heads] == [[0], []]
    assert [c.tolist() for c in chans] == [[0], [0]]


def test_structure_columns():
    assert M.structure_columns(torch.tensor([0, 2]), 3).tolist() == [0, 1, 2, 6, 7, 8]
    assert M.structure_columns(torch.tensor([], dtype=torch.int64), 3).tolist() == []


def test_add_bias_compensation_keeps_mean_output():
    # down_proj (2x3) without bias; calibration inputs with mean [1, 2, 3]; prune channel 1.
    down = lin([[1, 5, 2], [0, 5, -1]])
    X = torch.tensor([[0.0, 1.0, 3.0], [2.0, 3.0, 3.0]], dtype=torch.float64)
    with M.input_stats({"d": down}) as st:
        down(X)
    with torch.no_grad():
        dense_mean_out = down(X).mean(0)
    delta = M.add_bias_compensation(down, st["d"].mean, torch.tensor([1]))
    assert_close(delta, [10.0, 10.0], "float64")      # W[:,1]·μ_1 = [5, 5]·2
    with torch.no_grad():
        down.weight[:, 1] = 0
        assert_close(down(X).mean(0), dense_mean_out, "float64")   # mean output preserved exactly
