"""Frozen DALL-E dVAE encoder: FLAVA's image tokenizer for the MIM / MMM-image targets."""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from flava.model.config import CodebookConfig
from flava.model.fused import compute_dtype
from flava.model.pretrained import Pretrained

LOGIT_LAPLACE_EPS = 0.1
"""The eps of DALL-E's map_pixels: [0, 1] is squeezed into [eps, 1 - eps]."""

DOWNSAMPLE = 8
"""Input pixels per output token along each side (three 2x max-pools)."""

GROUP_WIDTHS = ((1, 1), (1, 2), (2, 4), (4, 8))
"""(input, output) width of each group, in multiples of hidden_size."""


def _conv(n_in: int, n_out: int, kernel_size: int) -> nn.Conv2d:
    """Odd-kernel conv with 'same' padding, as DALL-E's Conv2d."""
    return nn.Conv2d(n_in, n_out, kernel_size, padding=(kernel_size - 1) // 2)


class ResPath(nn.Module):
    """relu, conv3x3 to out/4, relu, conv3x3, relu, conv3x3, relu, conv1x1 to out."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        n_hid = n_out // 4
        self.conv_1 = _conv(n_in, n_hid, 3)
        self.conv_2 = _conv(n_hid, n_hid, 3)
        self.conv_3 = _conv(n_hid, n_hid, 3)
        self.conv_4 = _conv(n_hid, n_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, n_in, H, W] -> [B, n_out, H, W]."""
        for conv in (self.conv_1, self.conv_2, self.conv_3, self.conv_4):
            x = conv(F.relu(x))
        return x


class CodebookBlock(nn.Module):
    """id_path(x) + post_gain * res_path(x); id_path is a 1x1 conv when the width changes."""

    def __init__(self, n_in: int, n_out: int, num_layers: int) -> None:
        super().__init__()
        self.post_gain = 1.0 / num_layers**2
        self.id_path: nn.Module = _conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = ResPath(n_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, n_in, H, W] -> [B, n_out, H, W]."""
        return self.id_path(x) + self.post_gain * self.res_path(x)


class ImageCodebook(Pretrained, nn.Module):
    """DALL-E dVAE encoder (frozen): mapped pixels [B, 3, H, W] -> logits [B, V, H/8, W/8]."""

    def __init__(self, config: CodebookConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        hid, n_blk = config.hidden_size, config.num_blocks_per_group
        num_layers = config.num_groups * n_blk
        blocks: OrderedDict[str, nn.Module] = OrderedDict(
            input=_conv(config.input_channels, hid, 7)
        )
        for g, (w_in, w_out) in enumerate(GROUP_WIDTHS, start=1):
            group: OrderedDict[str, nn.Module] = OrderedDict()
            for i in range(n_blk):
                n_in = (w_in if i == 0 else w_out) * hid
                group[f"block_{i + 1}"] = CodebookBlock(n_in, w_out * hid, num_layers)
            if g < len(GROUP_WIDTHS):
                group["pool"] = nn.MaxPool2d(kernel_size=2)
            blocks[f"group_{g}"] = nn.Sequential(group)
        blocks["output"] = nn.Sequential(
            OrderedDict(relu=nn.ReLU(), conv=_conv(8 * hid, config.vocab_size, 1))
        )
        self.blocks = nn.Sequential(blocks)
        self._half_cache: dict[str, tuple[tuple, nn.Module]] = {}  # not a submodule: no state
        self.reset_parameters()
        self.requires_grad_(False)
        self.train(False)

    def reset_parameters(self) -> None:
        """DALL-E's init: conv weights ~ N(0, 1/fan_in), zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, std=fan_in**-0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def train(self, mode: bool = True) -> ImageCodebook:
        """The codebook is frozen: it stays in eval mode whatever `mode` is."""
        return super().train(False)

    @staticmethod
    def map_pixels(x: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
        """DALL-E's input map: [0, 1] -> [eps, 1 - eps]."""
        return (1 - 2 * eps) * x + eps

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Already mapped pixels [B, C, H, W] -> code logits [B, vocab, H/8, W/8]."""
        self._check_input(pixel_values)
        return self.blocks(pixel_values)

    def _check_input(self, pixel_values: torch.Tensor) -> None:
        """Refuse what is not [B, C, H, W] with the codebook's channel count."""
        if pixel_values.dim() != 4:
            raise ValueError(
                f"codebook input must be [B, C, H, W], got {tuple(pixel_values.shape)}"
            )
        if pixel_values.shape[1] != self.config.input_channels:
            raise ValueError(
                f"codebook input has {pixel_values.shape[1]} channels, "
                f"expected {self.config.input_channels}"
            )

    def _logits_from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map [0, 1] pixels (in fp32) and run the encoder: in its own dtype, or under an
        enclosing bf16 / fp16 autocast in that dtype (as transformers does; the frozen
        codebook's forward is a seventh of a flava_full step, and only argmax ids leave it),
        through `_half_blocks`, channels-last."""
        device = pixels.device.type
        own = next(self.blocks.parameters()).dtype  # the encoder's weights'
        dtype = compute_dtype(device, own)
        with torch.autocast(device_type=device, enabled=False):
            mapped = self.map_pixels(pixels.float()).to(dtype)
            if dtype == own:
                return self(mapped)
            self._check_input(mapped)
            return self._half_blocks(dtype)(mapped.contiguous(memory_format=torch.channels_last))

    def _half_blocks(self, dtype: torch.dtype) -> nn.Module:
        """The encoder's blocks in `dtype` and channels-last (oneDNN's fastest layout for half
        convolutions): copied once and kept while the weights stay as they are (frozen, they
        change only by loading or moving), so a step does not cast 54 M weights again."""
        stamp = (dtype, tuple((p._version, p.data_ptr()) for p in self.blocks.parameters()))
        cached = self._half_cache.get("blocks")
        if cached is None or cached[0] != stamp:
            blocks = copy.deepcopy(self.blocks).to(dtype).to(memory_format=torch.channels_last)
            cached = self._half_cache["blocks"] = (stamp, blocks)
        return cached[1]

    @torch.no_grad()
    def get_codebook_indices(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] [B, C, H, W] -> code ids [B, (H/8)*(W/8)], row-major (patch order)."""
        return self._logits_from_pixels(pixels).argmax(dim=1).flatten(1)

    @torch.no_grad()
    def get_codebook_probs(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] [B, C, H, W] -> code probabilities [B, vocab, H/8, W/8]."""
        return self._logits_from_pixels(pixels).softmax(dim=1)
