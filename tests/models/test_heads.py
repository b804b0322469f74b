"""Decode heads: shapes on odd-sized pyramids, losses, gradients, overfitting, label conversion, configs."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from recyclelora.models.heads import (
    HEADS,
    HeadConfig,
    LightHead,
    Mask2FormerHead,
    Mask2FormerOutput,
    build_head,
    semantic_to_mask_labels,
    weight_decay_groups,
)

NUM_CLASSES = 5
IN_CHANNELS = (8, 16, 16, 24)
# A patch-14 pyramid of a 45 x 66 crop: strides 3.5 / 7 / 14 / 28, rounded down; nothing divides evenly.
FEATURE_SIZES = ((12, 18), (6, 9), (3, 4), (1, 2))
LABEL_SIZE = (45, 66)


TINY_MASK2FORMER = dict(
    kind="mask2former", num_classes=NUM_CLASSES, channels=32, hidden_dim=32, num_heads=4, num_queries=3,
    pixel_decoder_layers=1, decoder_layers=2, dim_feedforward=64, pixel_decoder_feedforward_dim=64,
    train_num_points=256,
)  # fmt: skip


def tiny_config(kind: str, **overrides) -> HeadConfig:
    if kind == "light":
        return HeadConfig(kind="light", num_classes=NUM_CLASSES, channels=16, **overrides)
    return HeadConfig(**{**TINY_MASK2FORMER, **overrides})


def make_head(kind: str, **overrides):
    torch.manual_seed(0)
    return build_head(tiny_config(kind, **overrides), IN_CHANNELS)


def make_features(batch: int = 2, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = zip(IN_CHANNELS, FEATURE_SIZES, strict=True)
    return [torch.randn(batch, c, h, w, generator=gen) for c, (h, w) in shapes]


def make_labels(batch: int = 2, seed: int = 2) -> torch.Tensor:
    """Blocky label maps (a few classes per image) with an ignored band."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, NUM_CLASSES, (batch, 1, 3, 4), generator=gen).float()
    labels = F.interpolate(coarse, size=LABEL_SIZE, mode="nearest")[:, 0].long()
    labels[:, :4] = 255
    return labels


KINDS = list(HEADS)


@pytest.mark.parametrize("kind", KINDS)
def test_build_head_returns_the_named_kind(kind):
    head = make_head(kind)
    assert isinstance(head, {"light": LightHead, "mask2former": Mask2FormerHead}[kind])
    assert head.num_classes == NUM_CLASSES and head.in_channels == IN_CHANNELS


@pytest.mark.parametrize("kind", KINDS)
def test_semantic_logits_have_the_requested_size_on_odd_pyramids(kind):
    head = make_head(kind).eval()
    with torch.no_grad():
        output = head(make_features())
        scores = head.semantic_logits(output, LABEL_SIZE)
    assert scores.shape == (2, NUM_CLASSES, *LABEL_SIZE)
    assert torch.isfinite(scores).all()


def test_mask2former_output_shapes_and_decoder_depth():
    config = tiny_config("mask2former", decoder_layers=3)
    head = make_head("mask2former", decoder_layers=3)
    output = head(make_features())
    assert output.class_logits.shape == (2, config.num_queries, NUM_CLASSES + 1)
    assert output.mask_logits.shape == (2, config.num_queries, *FEATURE_SIZES[0])
    # 3 masked-attention layers; one auxiliary prediction per layer (the first is the query-only one).
    assert len(head.model.transformer_module.decoder.layers) == 3
    assert len(output.aux_class_logits) == len(output.aux_mask_logits) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_losses_are_finite_positive_and_reach_every_trainable_parameter(kind):
    head = make_head(kind).train()
    torch.manual_seed(0)
    losses = head.loss(head(make_features()), make_labels())
    parts = {k: v for k, v in losses.items() if k != "loss"}
    assert parts, "the total must come with its parts"
    for name, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value) and value > 0, name
    torch.testing.assert_close(losses["loss"], sum(parts.values()))
    losses["loss"].backward()
    missing = [n for n, p in head.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.requires_grad)


def test_mask2former_loss_parts_are_weighted_sums_over_all_decoder_layers():
    head = make_head("mask2former", class_weight=2.0, mask_weight=5.0, dice_weight=3.0).train()
    output = head(make_features())
    labels = make_labels()
    torch.manual_seed(7)
    losses = head.loss(output, labels)
    torch.manual_seed(7)
    masks, classes = semantic_to_mask_labels(labels)
    auxiliary = [
        {"class_queries_logits": c, "masks_queries_logits": m}
        for c, m in zip(output.aux_class_logits, output.aux_mask_logits, strict=True)
    ]
    raw = head.criterion(output.mask_logits, output.class_logits, masks, classes, auxiliary)
    assert len(raw) == 3 * (1 + len(auxiliary))
    weights = {
        "loss_class": ("loss_cross_entropy", 2.0),
        "loss_mask": ("loss_mask", 5.0),
        "loss_dice": ("loss_dice", 3.0),
    }
    for part, (term, weight) in weights.items():
        expected = weight * sum(v for k, v in raw.items() if k == term or k.startswith(term + "_"))
        torch.testing.assert_close(losses[part], expected)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_few_steps_on_one_batch_lower_the_loss(kind):
    head = make_head(kind).train()
    features, labels = make_features(), make_labels()
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=0.0)

    def loss_with_fixed_sampling() -> float:
        torch.manual_seed(123)  # same sampled points before and after training
        with torch.no_grad():
            return float(head.loss(head(features), labels)["loss"])

    torch.manual_seed(0)
    first = loss_with_fixed_sampling()
    for _ in range(30):
        optimizer.zero_grad()
        head.loss(head(features), labels)["loss"].backward()
        optimizer.step()
    assert loss_with_fixed_sampling() < 0.6 * first


def test_mask2former_semantic_logits_follow_the_paper_rule():
    head = make_head("mask2former")
    gen = torch.Generator().manual_seed(3)
    output = Mask2FormerOutput(
        class_logits=torch.randn(2, 3, NUM_CLASSES + 1, generator=gen),
        mask_logits=torch.randn(2, 3, 4, 5, generator=gen),
        aux_class_logits=(),
        aux_mask_logits=(),
    )
    scores = head.semantic_logits(output, (4, 5))
    probs = output.class_logits.softmax(-1)[..., :NUM_CLASSES]  # no-object column dropped after the softmax
    masks = output.mask_logits.sigmoid()
    expected = torch.zeros(2, NUM_CLASSES, 4, 5)
    for b in range(2):
        for q in range(3):
            expected[b] += probs[b, q, :, None, None] * masks[b, q][None]
    torch.testing.assert_close(scores, expected)
    upsampled = head.semantic_logits(output, (8, 10))
    assert upsampled.shape == (2, NUM_CLASSES, 8, 10)


def test_mask2former_no_object_queries_do_not_vote():
    """Query 0 says class 2 on the left half; query 1 covers everything but is confidently "no object"."""
    head = make_head("mask2former")
    class_logits = torch.full((1, 2, NUM_CLASSES + 1), -20.0)
    class_logits[0, 0, 2] = 20.0
    class_logits[0, 1, NUM_CLASSES] = 20.0
    mask_logits = torch.full((1, 2, 4, 6), 20.0)
    mask_logits[0, 0, :, 3:] = -20.0
    output = Mask2FormerOutput(class_logits, mask_logits, (), ())
    scores = head.semantic_logits(output, (4, 6))
    assert torch.allclose(scores[0, 2, :, :3], torch.ones(4, 3), atol=1e-4)
    assert scores[0, :, :, 3:].abs().max() < 1e-4
    assert scores[0, [0, 1, 3, 4]].abs().max() < 1e-4


def test_label_conversion_makes_one_mask_per_present_class_and_drops_ignore():
    labels = torch.full((2, 4, 5), 255)
    labels[0, :2] = 0
    labels[0, 2:, :3] = 5
    masks, classes = semantic_to_mask_labels(labels)
    assert classes[0].tolist() == [0, 5]
    assert masks[0].shape == (2, 4, 5) and masks[0].dtype == torch.float32
    assert torch.equal(masks[0][0], (labels[0] == 0).float())
    assert torch.equal(masks[0][1], (labels[0] == 5).float())
    assert masks[0][:, labels[0] == 255].sum() == 0
    assert classes[1].numel() == 0 and masks[1].shape == (0, 4, 5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("all_ignored", [(True, False), (True, True)], ids=["one-image", "whole-batch"])
def test_ignore_only_images_give_a_finite_loss(kind, all_ignored):
    head = make_head(kind).train()
    labels = make_labels()
    for b, ignored in enumerate(all_ignored):
        if ignored:
            labels[b] = 255
    losses = head.loss(head(make_features()), labels)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_labels_are_rejected_with_what_to_do(kind):
    head = make_head(kind)
    output = head(make_features())
    labels = make_labels()
    labels[0, -1, -1] = NUM_CLASSES
    with pytest.raises(ValueError, match=rf"outside \[0, {NUM_CLASSES}\)"):
        head.loss(output, labels)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        head.loss(output, make_labels().float())


@pytest.mark.parametrize("kind", KINDS)
def test_features_that_do_not_match_in_channels_are_rejected(kind):
    head = make_head(kind)
    with pytest.raises(ValueError, match="out_channels"):
        head(make_features()[:3])


def test_mask2former_needs_four_levels():
    with pytest.raises(ValueError, match="4 feature levels"):
        Mask2FormerHead((8, 16, 24), tiny_config("mask2former"))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"kind": "unet"}, "kind"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_queries": 0}, "num_queries"),
        ({"decoder_layers": 0}, "decoder_layers"),
        ({"channels": 48}, "channels"),
        ({"hidden_dim": 30}, "hidden_dim"),
        ({"class_weight": -1.0}, "class_weight"),
        ({"class_weight": 0.0, "mask_weight": 0.0, "dice_weight": 0.0}, "class_weight"),
        ({"no_object_weight": 0.0}, "no_object_weight"),
        ({"oversample_ratio": 0.5}, "oversample_ratio"),
        ({"importance_sample_ratio": 1.5}, "importance_sample_ratio"),
        ({"train_num_points": 2.5}, "train_num_points"),
    ],
)
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"HeadConfig\.{field}\b"):
        HeadConfig(**{**TINY_MASK2FORMER, **overrides})


@pytest.mark.parametrize("kind", KINDS)
def test_every_registered_head_builds_with_its_default_channels(kind):
    config = HeadConfig(**{**TINY_MASK2FORMER, "kind": kind, "channels": None})
    assert config.channels == HEADS[kind].channels
    head = build_head(config, IN_CHANNELS).eval()
    with torch.no_grad():
        scores = head.semantic_logits(head(make_features()), LABEL_SIZE)
    assert scores.shape == (2, NUM_CLASSES, *LABEL_SIZE)


def test_an_unknown_kind_lists_the_registered_heads():
    with pytest.raises(ValueError, match=r"^HeadConfig\.kind must be one of \[.*\], got 'unet'$") as error:
        HeadConfig(kind="unet")
    assert all(repr(name) in str(error.value) for name in HEADS)


def test_importing_the_heads_does_not_import_transformers():
    code = "import sys, recyclelora.models.heads; print('transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_channels_default_depends_on_kind():
    assert HeadConfig(kind="light").channels == 128
    assert HeadConfig(kind="mask2former").channels == 256
    assert HeadConfig(kind="light", channels=48).channels == 48  # no multiple-of-32 rule without GroupNorm


def test_default_config_is_the_paper_recipe():
    config = HeadConfig()
    assert (config.kind, config.num_classes, config.num_queries, config.hidden_dim) == (
        "mask2former",
        19,
        100,
        256,
    )
    assert (config.pixel_decoder_layers, config.decoder_layers) == (6, 9)
    assert (config.class_weight, config.no_object_weight, config.mask_weight, config.dice_weight) == (
        2.0, 0.1, 5.0, 5.0
    )  # fmt: skip
    assert (config.train_num_points, config.oversample_ratio, config.importance_sample_ratio) == (
        12544,
        3.0,
        0.75,
    )


def test_param_groups_follow_the_published_optimiser_wrapper():
    """No decay for norm layers, the query position embedding (mmdet query_embed) and the decoder's level
    embedding (level_embed); biases, query features and the pixel decoder's level encoding decay."""
    head = make_head("mask2former")
    head.model.class_predictor.weight.requires_grad_(False)
    groups = weight_decay_groups(head)
    decay, no_decay = dict(groups.decay), dict(groups.no_decay)
    trainable = {n for n, p in head.named_parameters() if p.requires_grad}
    assert set(decay) | set(no_decay) == trainable and not set(decay) & set(no_decay)
    assert "model.class_predictor.weight" not in decay | no_decay
    for name in [
        "model.transformer_module.level_embed.weight",
        "model.transformer_module.queries_embedder.weight",
        "model.transformer_module.decoder.layernorm.weight",
        "model.transformer_module.decoder.layernorm.bias",
        "model.pixel_decoder.input_projections.0.1.weight",  # GroupNorm
        "model.pixel_decoder.encoder.layers.0.self_attn_layer_norm.bias",
    ]:
        assert name in no_decay, name
    for name in [
        "model.pixel_decoder.level_embed",
        "model.transformer_module.queries_features.weight",
        "model.transformer_module.decoder.layers.0.cross_attn.in_proj_bias",
        "model.class_predictor.bias",
        "model.pixel_decoder.input_projections.0.0.weight",
        "model.pixel_decoder.input_projections.0.0.bias",
        "model.transformer_module.decoder.layers.0.cross_attn.in_proj_weight",
        "model.transformer_module.decoder.layers.0.fc1.weight",
    ]:
        assert name in decay, name
    light = weight_decay_groups(make_head("light"))
    assert {n for n, _ in light.no_decay} == {"fuse.1.weight", "fuse.1.bias"}  # its GroupNorm
    assert {"classifier.weight", "classifier.bias", "laterals.0.bias"} <= {n for n, _ in light.decay}


def _mask_counts(rank: int, store: str, counts: tuple[int, ...], out: str) -> None:
    """One gloo process: its normalising mask count for ``counts[rank]`` target masks, saved per rank."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=len(counts))
    try:
        criterion = make_head("mask2former").criterion
        classes = [torch.arange(counts[rank])]
        torch.save(criterion.get_num_masks(classes, torch.device("cpu")), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_mask2former_normalises_by_the_mask_count_averaged_over_processes(tmp_path: Path) -> None:
    # with n_p masks on process p, every process divides by mean(n_p): DDP's gradient average then equals one
    # process on the whole batch; a per-process count would weight the processes' masks unequally
    counts = (1, 4)
    mp.spawn(_mask_counts, args=(str(tmp_path / "store"), counts, str(tmp_path / "n")), nprocs=len(counts))
    seen = [torch.load(tmp_path / f"n.{rank}", weights_only=True).item() for rank in range(len(counts))]
    assert seen == [2.5, 2.5]
    alone = make_head("mask2former").criterion.get_num_masks([torch.arange(3), torch.arange(0)], "cpu")
    assert alone.item() == 3.0


def _std_ok(weight: torch.Tensor, expected: float) -> bool:
    return abs(weight.float().std().item() / expected - 1) < 0.05


def _uniform_within(weight: torch.Tensor, bound: float) -> bool:
    """Drawn from U(-bound, bound): nothing beyond it, and the spread reaches near it."""
    top = weight.abs().max().item()
    return top <= bound + 1e-7 and top > 0.95 * bound


def _normal(weight: torch.Tensor, std: float) -> bool:
    """Drawn from N(0, std): the right spread and tails past a uniform's sqrt(3) * std bound."""
    return _std_ok(weight, std) and weight.abs().max().item() > 2.5 * std


def test_mask2former_mmdet_init_follows_each_groups_published_rule() -> None:
    """The published head's init (mmdet), group by group, at the paper's sizes on a ViT-L pyramid."""
    torch.manual_seed(0)
    head = Mask2FormerHead((1024,) * 4, HeadConfig(kind="mask2former", num_classes=19, channels=256))
    pixel, module = head.model.pixel_decoder, head.model.transformer_module
    xavier = lambda w: math.sqrt(2.0 / (w.shape[0] + w.shape[1]))  # noqa: E731  (linears and 1x1 convs)
    for projection in pixel.input_projections:  # Xavier uniform: std sqrt(2 / fan), 0.0395 here
        assert _uniform_within(projection[0].weight, math.sqrt(3) * xavier(projection[0].weight))
        assert not projection[0].bias.any()
    for conv in (pixel.adapter_1[0], pixel.layer_1[0], pixel.mask_projection):  # caffe2 Xavier: U(+-sqrt(3/fan_in))
        assert _uniform_within(conv.weight, math.sqrt(3 / conv.weight[0].numel()))
        assert conv.bias is None or not conv.bias.any()
    assert _std_ok(pixel.mask_projection.weight, 0.0625) and _std_ok(pixel.adapter_1[0].weight, 1 / 32)
    layer = pixel.encoder.layers[0]
    assert _normal(layer.fc1.weight, xavier(layer.fc1.weight)) and _std_ok(layer.fc1.weight, 0.0395)
    assert _uniform_within(layer.fc1.bias, 1 / math.sqrt(256))  # PyTorch's Linear default bias
    attention = layer.self_attn
    assert not attention.sampling_offsets.weight.any() and not attention.attention_weights.weight.any()
    assert attention.sampling_offsets.bias.abs().max() == 4  # the grid: n_points rings around each query
    assert _uniform_within(attention.value_proj.weight, math.sqrt(6 / 512)) and not attention.value_proj.bias.any()
    decoder_layer = module.decoder.layers[0]
    for projection in (decoder_layer.self_attn.q_proj, decoder_layer.self_attn.k_proj):  # one fused (768, 256)
        assert _normal(projection.weight, math.sqrt(2 / (256 + 768)))
    assert _normal(decoder_layer.cross_attn.in_proj_weight, 0.0442)
    assert _normal(decoder_layer.fc1.weight, math.sqrt(2 / (2048 + 256)))
    assert not decoder_layer.cross_attn.in_proj_bias.any()
    predictor = head.model.class_predictor  # PyTorch's Linear default: std 1 / sqrt(3 * 256) = 0.036
    assert _uniform_within(predictor.weight, 1 / 16) and _std_ok(predictor.weight, 1 / math.sqrt(3 * 256))
    assert predictor.bias.abs().max() > 0
    mask_mlp = module.decoder.mask_predictor.get_submodule("mask_embedder.0.0")
    assert _uniform_within(mask_mlp.weight, 1 / 16)
    assert _std_ok(module.queries_features.weight, 1.0) and _std_ok(pixel.level_embed, 1.0)


def test_mask2former_transformers_init_stays_available() -> None:
    torch.manual_seed(0)
    head = Mask2FormerHead((1024,) * 4, HeadConfig(kind="mask2former", num_classes=19, channels=256,
                                                   init="transformers"))  # fmt: skip
    assert _std_ok(head.model.pixel_decoder.mask_projection.weight, 0.02)
    assert _std_ok(head.model.class_predictor.weight, 0.02) and not head.model.class_predictor.bias.any()
