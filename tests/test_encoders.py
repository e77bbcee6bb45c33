"""EEG encoders: every registered encoder builds, runs, back-propagates and has its hand-counted parameter count.

Parametrized over the ENCODERS registry (braindecode/timm style): a new encoder without a case below fails
``test_every_registered_encoder_has_a_case``.
"""
import json
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.encoders import (ATMSEncoder, ChannelGraphAttention, ChannelSelfAttention, ResidualProjector,
                            ShortWindowError, TSConvEncoder, TSConvTrunk)
from bench.encoders.atms import PostNormEncoderLayer
from bench.registry import ENCODERS, create_encoder, list_encoders


# --- parameter counts by hand, layer by layer ---------------------------------------------------------------------
def tsconv_trunk_params(n_chans):
    temporal_conv = 40 * 1 * 1 * 25 + 40      # Conv2d(1→40, kernel (1,25)): weight + bias
    batch_norm = 40 + 40                      # BatchNorm2d(40): weight + bias
    spatial_conv = 40 * 40 * n_chans * 1 + 40  # Conv2d(40→40, kernel (C,1))
    pointwise_conv = 40 * 40 * 1 * 1 + 40     # Conv2d(40→40, kernel (1,1))
    return temporal_conv + batch_norm + spatial_conv + batch_norm + pointwise_conv


def projector_params(in_dim, out_dim):
    first = in_dim * out_dim + out_dim        # Linear(in→out)
    residual = out_dim * out_dim + out_dim    # Linear(out→out) inside the GELU/Dropout residual
    norm = 2 * out_dim                        # LayerNorm(out)
    return first + residual + norm


def channel_linear_block(c):
    return (c * c + c) + 2 * c                # Linear(C→C) + LayerNorm(C)


T_PRIME_250 = (250 - 25 + 1 - 51) // 5 + 1   # 226 samples after the conv, 36 after the (51, stride 5) pool
NICE_63x250 = tsconv_trunk_params(63) + projector_params(40 * T_PRIME_250, 768)
SA_63x250 = (2 * 250                          # LayerNorm(n_times)
             + 3 * channel_linear_block(63))  # query, key, output projection
GA_63x250 = (250 * 250                        # shared W (n_times→n_times), no bias as in GATConv
             + 2 * 250                        # attention vector a = [a_target ‖ a_source]
             + 250)                           # output bias
ATTN_INNER = 4 * (250 // 4)                   # 248: 4 heads of 62, as iTransformer's AttentionLayer
ATMS_63x250 = (
    (250 * 250 + 250)                         # channel-token embedding Linear(n_times→d_model)
    + 10 * 250 + 250                          # subject table (10 subjects) + shared fallback token
    + 3 * (250 * ATTN_INNER + ATTN_INNER)     # query, key, value projections
    + (ATTN_INNER * 250 + 250)                # attention output projection
    + (250 * 256 + 256) + (256 * 250 + 250)   # FFN 250→256→250
    + 2 * (2 * 250)                           # the layer's two LayerNorms
    + 2 * 250                                 # final LayerNorm
    + tsconv_trunk_params(63)                 # TSConv over the 63 × 250 token matrix
    + projector_params(40 * T_PRIME_250, 1024)
)
EEGPROJECT_17x250 = projector_params(17 * 250, 1024)


@dataclass(frozen=True)
class Case:
    paper_shape: tuple    # (n_chans, n_times, n_outputs) of the paper
    params: int           # pinned parameter count at the paper shape
    by_hand: int          # the same count, derived above
    min_times: int | None  # shortest window the encoder accepts; None = any


CASES = {
    "tsconv": Case((63, 250, 768), 1_802_496, NICE_63x250, 75),
    "tsconv-sa": Case((63, 250, 768), 1_815_470, NICE_63x250 + SA_63x250, 75),
    "tsconv-ga": Case((63, 250, 768), 1_865_746, NICE_63x250 + GA_63x250, 75),
    "atms": Case((63, 250, 1024), 3_075_412, ATMS_63x250, 75),
    "eegproject": Case((17, 250, 1024), 5_404_672, EEGPROJECT_17x250, None),
}
SHAPES = [(17, 100), (63, 250), (8, 64)]
N_OUT = 16


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_every_registered_encoder_has_a_case():
    assert set(list_encoders()) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_parameter_count_at_paper_shape(name):
    case = CASES[name]
    assert case.by_hand == case.params
    n_chans, n_times, n_outputs = case.paper_shape
    assert count(create_encoder(name, n_chans=n_chans, n_times=n_times, n_outputs=n_outputs)) == case.params


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_backward(name, shape):
    torch.manual_seed(0)
    n_chans, n_times = shape
    min_times = CASES[name].min_times
    if min_times is not None and n_times < min_times:
        with pytest.raises(ShortWindowError, match="Model may require longer chunks"):
            create_encoder(name, n_chans=n_chans, n_times=n_times, n_outputs=N_OUT)
        return
    model = create_encoder(name, n_chans=n_chans, n_times=n_times, n_outputs=N_OUT)
    out = model(torch.randn(2, n_chans, n_times), subject=torch.tensor([0, 1]))
    assert out.shape == (2, N_OUT) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_round_trip(name):
    n_chans, n_times, _ = CASES[name].paper_shape
    model = create_encoder(name, n_chans=n_chans, n_times=100, n_outputs=N_OUT, sfreq=100.0,
                           chs_info=[{"ch_name": f"E{i}", "loc": None} for i in range(n_chans)]).eval()
    config = json.loads(json.dumps(model.get_config()))
    assert config["chs_info"] == [f"E{i}" for i in range(n_chans)] and config["n_times"] == 100
    clone = ENCODERS.get(name).obj.from_config(config).eval()
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, n_chans, 100)
    torch.testing.assert_close(clone(x), model(x))


def test_signal_argument_checks():
    with pytest.raises(ValueError, match="n_chans=3 but chs_info lists 2"):
        TSConvEncoder(n_chans=3, n_times=100, n_outputs=8, chs_info=["O1", "O2"])
    assert TSConvEncoder(n_chans=None, n_times=100, n_outputs=8, chs_info=["O1", "O2"]).n_chans == 2
    with pytest.raises(ValueError, match="give n_chans or chs_info"):
        TSConvEncoder(n_chans=None, n_times=100, n_outputs=8)
    with pytest.raises(ValueError, match="n_outputs must be a positive int"):
        TSConvEncoder(n_chans=2, n_times=100, n_outputs=0)
    with pytest.raises(ValueError, match="spatial_front_end"):
        TSConvEncoder(n_chans=2, n_times=100, n_outputs=8, spatial_front_end="gat")
    with pytest.raises(ValueError, match="proj_dropout"):
        TSConvEncoder(n_chans=2, n_times=100, n_outputs=8, proj_dropout=1.0)
    model = TSConvEncoder(n_chans=2, n_times=100, n_outputs=8)
    with pytest.raises(ValueError, match=r"expects x of shape \(batch, 2, 100\), got \(4, 2, 99\)"):
        model(torch.randn(4, 2, 99))


def test_tsconv_window_boundary():
    assert TSConvTrunk(4, 75).out_features == 40 * 1  # 75 - 24 = 51 samples: exactly one pooling window
    assert TSConvTrunk(4, 250).out_features == 1440
    with pytest.raises(ShortWindowError, match="longer chunks of signal in the input than 74 samples"):
        TSConvTrunk(4, 74)


def test_shared_pieces_are_reused():
    """One projector class and one trunk class serve every encoder (MCDB builds on the same two)."""
    for name in CASES:
        model = create_encoder(name, n_chans=4, n_times=100, n_outputs=N_OUT)
        kinds = [type(m) for m in model.modules()]
        assert kinds.count(ResidualProjector) == 1
        assert kinds.count(TSConvTrunk) == (0 if name == "eegproject" else 1)
    adapter = ResidualProjector(1024, 256, dropout=0.3)
    assert adapter(torch.randn(5, 1024)).shape == (5, 256)


def test_nice_init():
    model = TSConvEncoder(n_chans=63, n_times=250, n_outputs=768)
    spatial_conv, spatial_bn = model.trunk.spatial[0], model.trunk.spatial[1]
    assert abs(spatial_conv.weight.std().item() - 0.02) < 0.001  # 100,800 draws of N(0, 0.02)
    assert abs(model.projector.linear.weight.std().item() - 0.02) < 0.001
    assert (spatial_bn.bias == 0).all() and abs(spatial_bn.weight.mean().item() - 1.0) < 0.02
    assert spatial_bn.weight.std().item() > 0  # drawn from N(1, 0.02), not left at 1


# --- ATM-S --------------------------------------------------------------------------------------------------------
def test_atms_subject_tokens():
    torch.manual_seed(0)
    model = ATMSEncoder(n_chans=8, n_times=100, n_outputs=N_OUT, n_subjects=3).eval()
    x = torch.randn(1, 8, 100).expand(4, -1, -1)
    out = model(x, subject=torch.tensor([0, 1, -1, 3]))  # -1 and 3 are unknown: the shared token
    assert not torch.allclose(out[0], out[1])
    shared = model(x[:1])  # subject=None
    torch.testing.assert_close(out[2:], shared.expand(2, -1))
    assert not torch.allclose(out[0], shared[0])
    # the fallback is per sample: an unknown id does not move the known ones to the shared token
    torch.testing.assert_close(out[:1], model(x[:1], subject=torch.tensor([0])))


def test_atms_keeps_every_channel_token():
    """The trunk sees the C channel tokens, not the subject token (the reference's [:, :63] drops O2 instead)."""
    torch.manual_seed(0)
    model = ATMSEncoder(n_chans=6, n_times=100, n_outputs=N_OUT).eval()
    with torch.no_grad():  # switch off token mixing so each token reaches the trunk on its own
        model.encoder_layer.attention.out.weight.zero_()
        model.encoder_layer.attention.out.bias.zero_()
    x = torch.randn(1, 6, 100)
    moved = x.clone()
    moved[0, -1] += 1.0
    assert not torch.allclose(model(x), model(moved))
    torch.testing.assert_close(model(x, subject=torch.tensor([0])), model(x, subject=torch.tensor([1])))


def test_atms_paper_token_slice_keeps_subject_token_and_first_channels():
    """token_slice=paper: the trunk gets the subject token + channel tokens 1 … C-1 (ATMS_retrieval.py's [:, :63])."""
    torch.manual_seed(0)
    model = ATMSEncoder(n_chans=6, n_times=100, n_outputs=N_OUT, token_slice="paper").eval()
    seen = {}
    model.final_norm.register_forward_hook(lambda m, i, o: seen.update(tokens=o))
    model.trunk.register_forward_pre_hook(lambda m, i: seen.update(trunk=i[0]))
    x = torch.randn(2, 6, 100)
    model(x, subject=torch.tensor([0, 1]))
    assert seen["tokens"].shape == (2, 7, 100)
    torch.testing.assert_close(seen["trunk"], seen["tokens"][:, :6], rtol=0, atol=0)
    with torch.no_grad():  # switch off token mixing so each token reaches the trunk on its own
        model.encoder_layer.attention.out.weight.zero_()
        model.encoder_layer.attention.out.bias.zero_()
    moved = x.clone()
    moved[:, -1] += 1.0  # the last channel (O2 at the paper shape) is dropped
    torch.testing.assert_close(model(moved), model(x))
    moved = x.clone()
    moved[:, -2] += 1.0  # the one before it is kept
    assert not torch.allclose(model(moved), model(x))
    assert not torch.allclose(model(x, subject=torch.tensor([0, 0])), model(x, subject=torch.tensor([1, 1])))


def test_atms_token_slice_option():
    channels = create_encoder("atms", n_chans=63, n_times=250, n_outputs=1024)
    paper = create_encoder("atms", n_chans=63, n_times=250, n_outputs=1024, token_slice="paper")
    assert channels.token_slice == "channels" and paper.token_slice == "paper"
    assert count(channels) == count(paper) == 3_075_412 == ATMS_63x250  # the trunk sees 63 rows either way
    assert paper.get_config()["token_slice"] == "paper" and channels.get_config()["token_slice"] == "channels"
    with pytest.raises(ValueError, match="token_slice must be one of"):
        create_encoder("atms", n_chans=8, n_times=100, n_outputs=N_OUT, token_slice="all")


def test_atms_short_window_is_about_token_width():
    with pytest.raises(ShortWindowError):
        ATMSEncoder(n_chans=8, n_times=64, n_outputs=N_OUT)
    out = ATMSEncoder(n_chans=8, n_times=64, n_outputs=N_OUT, d_model=80)(torch.randn(2, 8, 64))
    assert out.shape == (2, N_OUT)


def test_post_norm_layer_matches_torch_encoder_layer():
    """Where the width divides by the heads, ATM's layer is nn.TransformerEncoderLayer(norm_first=False, GELU)."""
    torch.manual_seed(0)
    d, heads, d_ff = 248, 4, 256
    ours = PostNormEncoderLayer(d, heads, d_ff, dropout=0.25).eval()
    ref = nn.TransformerEncoderLayer(d, heads, d_ff, dropout=0.25, activation="gelu", batch_first=True).eval()
    attn = ours.attention
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(torch.cat([attn.query.weight, attn.key.weight, attn.value.weight]))
        ref.self_attn.in_proj_bias.copy_(torch.cat([attn.query.bias, attn.key.bias, attn.value.bias]))
        ref.self_attn.out_proj.load_state_dict(attn.out.state_dict())
        ref.linear1.load_state_dict(ours.ffn[0].state_dict())
        ref.linear2.load_state_dict(ours.ffn[3].state_dict())
        ref.norm1.load_state_dict(ours.norm1.state_dict())
        ref.norm2.load_state_dict(ours.norm2.state_dict())
    x = torch.randn(2, 9, d)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


# --- NICE-SA / NICE-GA --------------------------------------------------------------------------------------------
def gat_brute_force(layer, x):
    """GATConv(heads=1) on the complete graph with self-loops, one sample and one target node at a time."""
    f = layer.n_features
    w, a, bias = layer.weight.weight, layer.att, layer.bias
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        wh = [w @ x[b, j] for j in range(x.shape[1])]
        for i in range(x.shape[1]):
            e = torch.stack([torch.nn.functional.leaky_relu(a @ torch.cat([wh[i], wh[j]]), 0.2)
                             for j in range(x.shape[1])])
            alpha = torch.softmax(e, dim=0)
            out[b, i] = sum(alpha[j] * wh[j] for j in range(x.shape[1])) + bias
    assert out.shape[-1] == f
    return out


def test_graph_attention_equals_brute_force_on_every_sample():
    torch.manual_seed(0)
    layer = ChannelGraphAttention(7)
    with torch.no_grad():
        layer.weight.weight.normal_(0, 0.5)  # sharper attention than the N(0, 0.02) init, so mixing is visible
        layer.att.normal_(0, 1.0)
        layer.bias.normal_(0, 0.1)
    x = torch.randn(3, 5, 7)
    out = layer(x)
    torch.testing.assert_close(out, gat_brute_force(layer, x), rtol=1e-5, atol=1e-6)
    # the last sample's channels see each other too (the reference wires edges for the first sample only)
    moved = x.clone()
    moved[2, 4] += 1.0
    assert not torch.allclose(layer(moved)[2, 0], out[2, 0])
    torch.testing.assert_close(layer(moved)[:2], out[:2])


def gatconv_reference(x, edge_index, weight, att_src, att_dst, bias, negative_slope=0.2):
    """torch_geometric's GATConv(heads=1) in plain torch, edge list in, as its message passing computes it.

    ``edge_index`` is (2, E) with row 0 the source j and row 1 the target i (PyG's ``source_to_target`` flow). Self-
    loops already listed are removed and one per node is added (``add_self_loops=True``); the attention logit of edge
    j → i is LeakyReLU(att_src·W x_j + att_dst·W x_i), softmax-normalised over the edges entering i; the message is
    α_ij W x_j, summed at i, plus the bias.
    """
    n = x.shape[0]
    h = x @ weight.T
    src, dst = edge_index[0], edge_index[1]
    keep = src != dst
    loops = torch.arange(n)
    src, dst = torch.cat([src[keep], loops]), torch.cat([dst[keep], loops])
    logits = torch.nn.functional.leaky_relu(h[src] @ att_src + h[dst] @ att_dst, negative_slope)
    top = logits.new_full((n,), -math.inf).scatter_reduce(0, dst, logits, "amax")  # PyG's softmax: subtract each max
    e = (logits - top[dst]).exp()
    alpha = e / e.new_zeros(n).index_add(0, dst, e)[dst]
    return torch.zeros_like(h).index_add(0, dst, alpha[:, None] * h[src]) + bias


def released_eeg_gat(layer, x):
    """NICE-EEG's EEG_GAT.forward (spatial_modules.py) on (B, C, F): the batch flattened to B·C nodes, edges only
    among node ids 0 … C-1 (every ordered pair i != j), one GATConv."""
    batch, n_chans, f = x.shape
    edges = torch.tensor([(i, j) for i in range(n_chans) for j in range(n_chans) if i != j], dtype=torch.long).t()
    out = gatconv_reference(x.reshape(batch * n_chans, f), edges, layer.weight.weight,
                            att_src=layer.att[f:], att_dst=layer.att[:f], bias=layer.bias)
    return out.view(batch, n_chans, f)


def sharpened_gat(n_features, mode):
    torch.manual_seed(0)
    layer = ChannelGraphAttention(n_features, mode=mode)
    with torch.no_grad():
        layer.weight.weight.normal_(0, 0.5)  # sharper attention than the N(0, 0.02) init, so mixing is visible
        layer.att.normal_(0, 1.0)
        layer.bias.normal_(0, 0.1)
    return layer.double()  # float64, so the edge-list and dense computations agree to rounding, gradients too


def test_released_gat_reimplementation_is_gatconv():
    """The edge-list GATConv above, given the complete graph of every sample, is our every-sample layer."""
    layer = sharpened_gat(7, "attention")
    x = torch.randn(3, 5, 7, dtype=torch.float64)
    edges = torch.tensor([(b * 5 + i, b * 5 + j) for b in range(3) for i in range(5) for j in range(5)]).t()
    out = gatconv_reference(x.reshape(15, 7), edges, layer.weight.weight, layer.att[7:], layer.att[:7], layer.bias)
    torch.testing.assert_close(out.view(3, 5, 7), layer(x))


def test_graph_attention_reference_mode_is_the_released_wiring_in_training():
    """ga_mode=reference in training: sample 0 gets the graph, the others their self-loop, values and gradients."""
    layer = sharpened_gat(7, "reference").train()
    x = torch.randn(4, 5, 7, dtype=torch.float64, requires_grad=True)
    ours = layer(x)
    released = released_eeg_gat(layer, x)
    torch.testing.assert_close(ours, released)
    every_sample = ChannelGraphAttention(7).double()
    every_sample.load_state_dict(layer.state_dict())
    assert not torch.allclose(ours[0], layer.weight(x[0]) + layer.bias)  # sample 0 is mixed across channels
    torch.testing.assert_close(ours[0], every_sample(x)[0])
    torch.testing.assert_close(ours[1:], layer.weight(x[1:]) + layer.bias)  # the rest: the shared linear map
    grads = torch.autograd.grad(ours.square().sum(), [x, layer.att])
    ref_grads = torch.autograd.grad(released.square().sum(), [x, layer.att])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
    # the attention vector learns from sample 0 alone
    (g_att,) = torch.autograd.grad(layer(x)[1:].square().sum(), [layer.att], allow_unused=True)
    assert g_att is None or not g_att.abs().max() > 0


def test_graph_attention_reference_mode_is_per_sample_in_eval():
    """In eval mode every sample gets the self-loop map, what the released test pass gave 199 of its 200 items."""
    layer = sharpened_gat(7, "reference").eval()
    x = torch.randn(4, 5, 7, dtype=torch.float64)
    out = layer(x)
    torch.testing.assert_close(out, layer.weight(x) + layer.bias)
    torch.testing.assert_close(out[1:], released_eeg_gat(layer, x)[1:])
    torch.testing.assert_close(layer(x.flip(0)).flip(0), out)  # batch position does not matter
    torch.testing.assert_close(layer(x[2:3]), out[2:3])


def test_ga_mode_is_checked_and_plumbed():
    for name, kwargs in (("tsconv-ga", {}), ("tsconv", {"spatial_front_end": "ga"})):
        model = create_encoder(name, n_chans=6, n_times=100, n_outputs=N_OUT, ga_mode="reference", **kwargs)
        assert model.front_end.fn[0].mode == "reference"
        assert model.get_config()["ga_mode"] == "reference"
    assert create_encoder("tsconv-ga", n_chans=6, n_times=100, n_outputs=N_OUT).front_end.fn[0].mode == "attention"
    paper = create_encoder("tsconv-ga", n_chans=63, n_times=250, n_outputs=768, ga_mode="reference")
    assert count(paper) == 1_865_746 == NICE_63x250 + GA_63x250  # same layers; only the wiring differs
    with pytest.raises(ValueError, match="ga_mode must be one of"):
        create_encoder("tsconv-ga", n_chans=4, n_times=100, n_outputs=N_OUT, ga_mode="first")
    for front_end in (None, "sa"):
        with pytest.raises(ValueError, match="applies to spatial_front_end='ga' only"):
            create_encoder("tsconv", n_chans=4, n_times=100, n_outputs=N_OUT, spatial_front_end=front_end,
                           ga_mode="reference")
    with pytest.raises(TypeError, match="ga_mode"):  # NICE-SA's encoder has no such argument at all
        create_encoder("tsconv-sa", n_chans=4, n_times=100, n_outputs=N_OUT, ga_mode="reference")


def test_self_attention_equals_formula():
    torch.manual_seed(0)
    n_chans, n_times = 5, 250
    sa = ChannelSelfAttention(n_chans, n_times).eval()
    x = torch.randn(2, n_chans, n_times)
    q = sa.query(x.transpose(1, 2))  # (B, T, C)
    k = sa.key(x.transpose(1, 2))
    expected = torch.empty_like(x)
    for b in range(2):
        logits = q[b].T @ k[b] / math.sqrt(250 // 30)  # Σ_t q[t, c] k[t, m], NICE's sqrt(int(250 / 30))
        weights = torch.softmax(logits, dim=1)
        expected[b] = weights @ x[b]
    expected = sa.projection(expected.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(sa(x), expected, rtol=1e-5, atol=1e-5)


def test_self_attention_weights_matter():
    """The reference's einsum reduces the attention to the identity; here query and key change the output."""
    torch.manual_seed(0)
    sa = ChannelSelfAttention(6, 100).eval()
    x = torch.randn(2, 6, 100)
    before = sa(x)
    with torch.no_grad():
        sa.query[0].weight.normal_(0, 1.0)
    assert not torch.allclose(sa(x), before, atol=1e-4)


@pytest.mark.parametrize("front_end", ["sa", "ga"])
def test_front_end_changes_tsconv_output(front_end):
    torch.manual_seed(0)
    plain = TSConvEncoder(n_chans=6, n_times=100, n_outputs=N_OUT).eval()
    spatial = TSConvEncoder(n_chans=6, n_times=100, n_outputs=N_OUT, spatial_front_end=front_end).eval()
    spatial.trunk.load_state_dict(plain.trunk.state_dict())
    spatial.projector.load_state_dict(plain.projector.state_dict())
    x = torch.randn(2, 6, 100)
    assert not torch.allclose(spatial(x), plain(x), atol=1e-4)
    assert isinstance(plain.front_end, nn.Identity)


def test_self_attention_reference_mode_is_the_released_function():
    """NICE's released einsum returns x unchanged, so its SA block is x + Drop(Proj(LN(x))); no query/key exist."""
    torch.manual_seed(0)
    n_chans, n_times = 5, 80
    ref = TSConvEncoder(n_chans=n_chans, n_times=n_times, n_outputs=N_OUT, spatial_front_end="sa",
                        sa_mode="reference").eval()
    attention = ChannelSelfAttention(n_chans, n_times, mode="attention")
    sa = ref.front_end.fn[1]
    assert not hasattr(sa, "query") and not hasattr(sa, "key")
    assert count(attention) - count(sa) == 2 * channel_linear_block(n_chans)
    x = torch.randn(2, n_chans, n_times)
    norm = ref.front_end.fn[0]
    expected = x + sa.projection(norm(x).transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(ref.front_end(x), expected)
    paper = create_encoder("tsconv-sa", n_chans=63, n_times=250, n_outputs=768, sa_mode="reference")
    assert count(paper) == 1_807_154 == NICE_63x250 + 2 * 250 + channel_linear_block(63)


def test_sa_mode_is_checked():
    with pytest.raises(ValueError, match="sa_mode must be one of"):
        create_encoder("tsconv-sa", n_chans=4, n_times=100, n_outputs=N_OUT, sa_mode="identity")
    with pytest.raises(ValueError, match="applies to spatial_front_end='sa' only"):
        create_encoder("tsconv", n_chans=4, n_times=100, n_outputs=N_OUT, sa_mode="reference")


def _fused_conv_trunk(trunk, x):
    """The trunk as it was computed before the GEMM layout (issue 21): conv(1,25) + avg-pool(51)/5 as one strided
    conv, then the spatial and pointwise convs through the modules."""
    conv = trunk.temporal[0]
    box = conv.weight.new_full((1, 1, 51), 1.0 / 51)
    smeared = F.conv1d(conv.weight.reshape(40, 1, 25), box, padding=50)
    h = F.conv2d(x.unsqueeze(1), smeared.unsqueeze(2), conv.bias, stride=(1, 5))
    h = trunk.pointwise(trunk.spatial(trunk.temporal[3](trunk.temporal[2](h))))
    return h.flatten(2).transpose(1, 2).flatten(1)


#: positions of the temporal and spatial conv biases in the trunk's parameter list (ours and the reference's)
PRE_BN_BIASES = (1, 5)


def assert_same_function(new, old, forward_new, forward_old, x, mode):
    """Same seed → same outputs (dropout masks included), gradients, and batch-norm statistics, within 1e-5."""
    for m in (new, old):
        m.train(mode == "train")
    torch.manual_seed(7)
    y_new = forward_new(x)
    torch.manual_seed(7)
    y_old = forward_old(x)
    torch.testing.assert_close(y_new, y_old, rtol=0, atol=1e-5)
    probe = torch.randn_like(y_old)
    g_new = torch.autograd.grad((y_new * probe).mean(), list(new.parameters()))
    g_old = torch.autograd.grad((y_old * probe).mean(), list(old.parameters()))
    scale = max(g.abs().max() for g in g_old)
    for i, (a, b) in enumerate(zip(g_new, g_old)):
        if mode == "train" and i in PRE_BN_BIASES:  # analytically zero: batch norm removes any constant shift
            assert a.abs().max() < 1e-4 * scale and b.abs().max() < 1e-4 * scale
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale)
    for a, b in zip(new.buffers(), old.buffers()):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("n_chans,n_times", [(5, 250), (63, 250), (3, 75)])
def test_gemm_trunk_equals_the_fused_conv_module(mode, n_chans, n_times):
    """The GEMM-layout trunk computes what the fused-conv trunk did, with the same parameters and state-dict keys."""
    import copy

    from bench.encoders.trunk import TSConvTrunk

    torch.manual_seed(0)
    trunk = TSConvTrunk(n_chans=n_chans, n_times=n_times)
    with torch.no_grad():  # non-trivial batch-norm state, so eval mode uses it
        for bn in (trunk.temporal[2], trunk.spatial[1]):
            bn.running_mean.normal_(0, 0.1), bn.running_var.uniform_(0.5, 2.0), bn.weight.normal_(1, 0.2)
    old = copy.deepcopy(trunk)
    x = torch.randn(4, n_chans, n_times)
    assert_same_function(trunk, old, trunk, lambda v: _fused_conv_trunk(old, v), x, mode)


def test_gemm_trunk_keeps_the_state_dict_of_nice_modules():
    from bench.encoders.trunk import TSConvTrunk

    keys = {k: tuple(v.shape) for k, v in TSConvTrunk(63, 250).state_dict().items()}
    assert keys["temporal.0.weight"] == (40, 1, 1, 25) and keys["spatial.0.weight"] == (40, 40, 63, 1)
    assert keys["pointwise.weight"] == (40, 40, 1, 1) and "spatial.1.num_batches_tracked" in keys
    assert len(keys) == 16


@pytest.mark.parametrize("alpha", [1.0, 0.3, 0.0, 2.0])  # 2.0: above 1 the max form is wrong, the sum form runs
def test_trunk_elu_by_exp_is_torch_elu(alpha):
    """The trunk's ELU (``exp − 1`` for ``expm1``) against ``F.elu``: outputs within float32 rounding of ``exp − 1``
    near 0, the same gradient (torch's own ``elu_backward``), exact in float64 up to rounding, and gradcheck."""
    from bench.encoders.batchnorm_elu import _ELUByExp

    x = torch.cat([torch.randn(5000) * 4, torch.tensor([0.0, -1e-8, 1e-8, -30.0, 30.0])]).requires_grad_()
    y = _ELUByExp.apply(x, alpha)
    probe = torch.randn_like(y)
    ref = F.elu(x, alpha)
    torch.testing.assert_close(y, ref, rtol=0, atol=1.2e-7 * max(alpha, 1.0))
    g, = torch.autograd.grad((y * probe).sum(), x)
    g_ref, = torch.autograd.grad((ref * probe).sum(), x)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-6)
    x64 = torch.randn(16, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(_ELUByExp.apply(x64, alpha), F.elu(x64, alpha), rtol=1e-15, atol=1e-15)
    assert torch.autograd.gradcheck(lambda t: _ELUByExp.apply(t, alpha), (x64,))


@pytest.mark.parametrize("block_rows", [1, 3 * 36 * 5, 10**9])  # one sample a block; 3 (7 = 3 + 3 + 1); all in one
def test_blocked_temporal_gemm_is_the_single_gemm(monkeypatch, block_rows):
    """The block-by-block temporal GEMM gives the single GEMM's output and kernel/bias gradients, whatever the blocks
    (a partial last block included)."""
    from bench.encoders import temporal_filter as T

    monkeypatch.setattr(T, "WINDOW_BLOCK_ROWS", block_rows)
    torch.manual_seed(0)
    x = torch.randn(7, 5, 250)
    kernel = torch.randn(40, 75, requires_grad=True)
    bias = torch.randn(40, requires_grad=True)
    out = T._BlockedTemporalGEMM.apply(x, kernel, bias, 5)
    windows = x.unfold(-1, 75, 5).transpose(1, 2).reshape(-1, 75)
    ref = torch.addmm(bias, windows, kernel.t())
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-5)
    probe = torch.randn_like(ref)
    grads = torch.autograd.grad((out * probe).sum(), (kernel, bias))
    ref_grads = torch.autograd.grad((ref * probe).sum(), (kernel, bias))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)


def test_trunk_keeps_no_window_matrix_for_the_backward_pass():
    """The promise of the blocked GEMM: nothing the size of the windows matrix (B·T'·C × 75) is saved for backward on
    raw EEG; a trunk input that needs its gradient (ATM-S's tokens) still gets one, through the windows view."""
    from bench.encoders.trunk import TSConvTrunk

    trunk, x = TSConvTrunk(63, 250), torch.randn(16, 63, 250)
    window_elements = 16 * 36 * 63 * 75
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        trunk(x).sum().backward()
    assert saved and max(saved) < window_elements, max(saved)  # the largest is the 40-filter output, 40/75 of it
    tokens = x.clone().requires_grad_()
    trunk(tokens).sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
