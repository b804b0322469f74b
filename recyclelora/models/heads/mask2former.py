"""Mask2Former decode head built from the `transformers` implementation, fed by our own feature pyramid.

Only the glue lives here: the mapping of ``HeadConfig`` onto ``Mask2FormerConfig``, the conversion of semantic
label maps into per-class binary masks, the weighting of transformers' Hungarian-matched loss and the
semantic inference rule of the Mask2Former paper. The pixel decoder (multi-scale deformable attention, sampled
on a CPU by our gather formulation, :mod:`~recyclelora.models.heads.deformable`), the masked-attention decoder,
the matcher and the loss are transformers'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerConfig,
    Mask2FormerLoss,
    Mask2FormerPixelDecoder,
    Mask2FormerPreTrainedModel,
    Mask2FormerTransformerModule,
)

from recyclelora.data.classes import IGNORE_INDEX
from recyclelora.models.heads.base import SegHead
from recyclelora.models.heads.config import HeadConfig
from recyclelora.models.heads.deformable import use_gather_sampling
from recyclelora.models.heads.mask2former_init import init_as_mmdet

#: Pyramid levels the pixel decoder needs: three for deformable attention (strides 8-32) and the stride-4 map.
NUM_LEVELS = 4
#: Our names for transformers' three loss terms.
LOSS_NAMES = {"loss_cross_entropy": "loss_class", "loss_mask": "loss_mask", "loss_dice": "loss_dice"}


class DistributedMask2FormerLoss(Mask2FormerLoss):
    """transformers' Mask2Former loss, normalised by the mean target-mask count over all training processes.

    The mask and dice terms are ``sum_matched / n``. With ``n`` the global mean ``(sum_p n_p) / P``, DDP's
    gradient average over ``P`` processes equals one process on the whole batch, as in the reference
    Mask2Former. transformers only reduces ``n`` under an ``accelerate`` launch; this does it for any
    initialised ``torch.distributed`` process group (``torchrun``) and is the plain count otherwise.
    """

    def get_num_masks(self, class_labels: Sequence[Tensor], device: torch.device) -> Tensor:
        count = torch.tensor(float(sum(len(classes) for classes in class_labels)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return count.clamp(min=1)


@dataclass
class Mask2FormerOutput:
    """Per-query predictions of the last decoder layer, and of every earlier one for the auxiliary losses.

    ``class_logits``: ``(B, Q, num_classes + 1)``, the last column is "no object".
    ``mask_logits``: ``(B, Q, h, w)`` at the finest feature map's size.
    """

    class_logits: Tensor
    mask_logits: Tensor
    aux_class_logits: tuple[Tensor, ...]
    aux_mask_logits: tuple[Tensor, ...]


def mask2former_config(config: HeadConfig) -> Mask2FormerConfig:
    """Translate ``config`` into transformers' ``Mask2FormerConfig``.

    transformers counts the query-only prediction before the first decoder layer in ``decoder_layers``, so the
    paper's 9 masked-attention layers are ``decoder_layers=10`` there.
    """
    return Mask2FormerConfig(
        num_labels=config.num_classes,
        feature_size=config.channels,
        mask_feature_size=config.channels,
        hidden_dim=config.hidden_dim,
        encoder_layers=config.pixel_decoder_layers,
        encoder_feedforward_dim=config.pixel_decoder_feedforward_dim,
        decoder_layers=config.decoder_layers + 1,
        dim_feedforward=config.dim_feedforward,
        num_attention_heads=config.num_heads,
        num_queries=config.num_queries,
        class_weight=config.class_weight,
        no_object_weight=config.no_object_weight,
        mask_weight=config.mask_weight,
        dice_weight=config.dice_weight,
        train_num_points=config.train_num_points,
        oversample_ratio=config.oversample_ratio,
        importance_sample_ratio=config.importance_sample_ratio,
        ignore_value=IGNORE_INDEX,
        dropout=0.0,
        use_auxiliary_loss=True,
    )


def semantic_to_mask_labels(
    labels: Tensor, ignore_index: int = IGNORE_INDEX, dtype: torch.dtype = torch.float32
) -> tuple[list[Tensor], list[Tensor]]:
    """Turn ``(B, H, W)`` label maps into Mask2Former targets, one binary mask per class present.

    Returns ``mask_labels[b]``, ``(K_b, H, W)``, and ``class_labels[b]``, the ``K_b`` sorted class ids of
    image ``b``, with ``mask_labels[b][k] = (labels[b] == class_labels[b][k])``. Ignored pixels belong to no
    mask (as in the original semantic dataset mapper); an image with no labelled pixel gets ``K_b = 0``.
    """
    mask_labels: list[Tensor] = []
    class_labels: list[Tensor] = []
    for label in labels:
        classes = label.unique()
        classes = classes[classes != ignore_index].long()
        mask_labels.append((label[None] == classes[:, None, None]).to(dtype))
        class_labels.append(classes)
    return mask_labels, class_labels


class _Mask2FormerModules(Mask2FormerPreTrainedModel):
    """transformers' pixel decoder, masked-attention decoder and class predictor, initialised by ``init``:
    transformers' rules, or mmdet's on top of them (:func:`~recyclelora.models.heads.mask2former_init.init_as_mmdet`).

    A ``Mask2FormerPreTrainedModel`` only so that its ``_init_weights`` (grid init of the deformable sampling
    offsets, Xavier decoder, normal level embeddings) applies; ``apply`` visits children before parents, the
    order that init relies on. The pixel decoder's deformable attentions are swapped for
    :class:`~recyclelora.models.heads.deformable.DeformableAttention` before that init (same parameter names).
    """

    def __init__(self, config: Mask2FormerConfig, feature_channels: Sequence[int], init: str) -> None:
        super().__init__(config)
        self.pixel_decoder = Mask2FormerPixelDecoder(config, feature_channels=list(feature_channels))
        use_gather_sampling(self.pixel_decoder)
        self.transformer_module = Mask2FormerTransformerModule(in_features=config.feature_size, config=config)
        self.class_predictor = nn.Linear(config.hidden_dim, config.num_labels + 1)
        self.apply(self._init_weights)
        if init == "mmdet":
            init_as_mmdet(self.pixel_decoder, self.transformer_module, self.class_predictor)


class Mask2FormerHead(SegHead):
    """Mask2Former over a 4-level pyramid (finest first, nominal strides 4/8/16/32, any exact sizes).

    The pixel decoder projects the three coarsest levels (1x1 conv + GroupNorm) into ``channels`` for its
    deformable-attention encoder and merges the finest one FPN-style into the stride-4 mask features.
    """

    def __init__(self, in_channels: Sequence[int], config: HeadConfig) -> None:
        if config.kind != "mask2former":
            raise ValueError(f"Mask2FormerHead needs HeadConfig.kind='mask2former', got {config.kind!r}.")
        if len(in_channels) != NUM_LEVELS:
            raise ValueError(
                f"Mask2FormerHead needs {NUM_LEVELS} feature levels (strides 4, 8, 16, 32), "
                f"got {len(in_channels)}."
            )
        super().__init__(in_channels, config.num_classes)
        self.config = config
        hf_config = mask2former_config(config)
        self.model = _Mask2FormerModules(hf_config, self.in_channels, config.init)
        weights = {"loss_cross_entropy": config.class_weight, "loss_mask": config.mask_weight,
                   "loss_dice": config.dice_weight}  # fmt: skip
        self.criterion = DistributedMask2FormerLoss(hf_config, weight_dict=weights)

    def forward(self, features: list[Tensor]) -> Mask2FormerOutput:
        self.check_features(features)
        pixels = self.model.pixel_decoder(list(features))
        decoded = self.model.transformer_module(
            multi_scale_features=pixels.multi_scale_features, mask_features=pixels.mask_features
        )
        class_logits = tuple(
            self.model.class_predictor(hidden.transpose(0, 1))
            for hidden in decoded.intermediate_hidden_states
        )
        mask_logits = tuple(decoded.masks_queries_logits)
        return Mask2FormerOutput(
            class_logits=class_logits[-1],
            mask_logits=mask_logits[-1],
            aux_class_logits=class_logits[:-1],
            aux_mask_logits=mask_logits[:-1],
        )

    def loss(self, output: Mask2FormerOutput, labels: Tensor) -> dict[str, Tensor]:
        """Hungarian-matched set loss of the last layer plus one per earlier layer, summed per term.

        ``loss_class = w_cls * sum_l CE_l``, ``loss_mask = w_mask * sum_l BCE_l``, ``loss_dice = w_dice *
        sum_l Dice_l`` over the final and auxiliary predictions; ``loss`` is their sum.
        """
        self.check_labels(labels)
        mask_labels, class_labels = semantic_to_mask_labels(labels, dtype=output.mask_logits.dtype)
        auxiliary = [
            {"class_queries_logits": cls, "masks_queries_logits": mask}
            for cls, mask in zip(output.aux_class_logits, output.aux_mask_logits, strict=True)
        ]
        raw = self.criterion(
            masks_queries_logits=output.mask_logits,
            class_queries_logits=output.class_logits,
            mask_labels=mask_labels,
            class_labels=class_labels,
            auxiliary_predictions=auxiliary,
        )
        weights = self.criterion.weight_dict
        parts: dict[str, Tensor] = {}
        for key, value in raw.items():
            term = key if key in weights else key.rsplit("_", 1)[0]  # "loss_dice_3" -> "loss_dice"
            parts[LOSS_NAMES[term]] = parts.get(LOSS_NAMES[term], 0.0) + weights[term] * value
        return {"loss": sum(parts.values()), **parts}

    def semantic_logits(self, output: Mask2FormerOutput, size: tuple[int, int]) -> Tensor:
        """Mask2Former's semantic inference: ``S[c] = sum_q softmax(class_q)[c] * sigmoid(mask_q)``.

        The no-object column is dropped after the softmax; mask logits are upsampled to ``size`` before the
        sigmoid, as in the paper's code.
        """
        probs = output.class_logits.softmax(dim=-1)[..., :-1]
        masks = F.interpolate(output.mask_logits, size=size, mode="bilinear", align_corners=False).sigmoid()
        return torch.einsum("bqc,bqhw->bchw", probs, masks)

    def no_weight_decay(self) -> set[str]:
        """The published config's ``query_embed`` and ``level_embed`` keys in transformers' names: the query
        position embedding and the decoder's level embedding. The query features (mmdet ``query_feat``) and
        the pixel decoder's level embedding (mmdet ``level_encoding``) match no key there, so they decay."""
        return {"model.transformer_module.queries_embedder.weight", "model.transformer_module.level_embed.weight"}
