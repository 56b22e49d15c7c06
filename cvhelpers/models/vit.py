"""A Vision Transformer written plainly: patches, a class token, positions, attention, MLP.

The parameter names follow timm's ``VisionTransformer`` (``vit_tiny_patch16_224`` and its
family), so a timm state dict loads by name and the outputs agree
(``tests/test_model_parity.py``). Attention is written out (``softmax(q k^T / sqrt(d)) v``)
instead of calling a fused kernel, so the attention weights can be looked at.

Example:
    >>> import torch
    >>> model = ViT(image_size=32, patch_size=4, dim=64, depth=2, heads=4, num_classes=10)
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Attention", "Block", "Mlp", "PatchEmbed", "ViT", "vit_tiny_patch16_224"]


class PatchEmbed(nn.Module):
    """Cut the image into ``patch_size`` squares and map each to a ``dim`` vector.

    A convolution with kernel = stride = ``patch_size`` is exactly "flatten each patch, multiply
    by one shared matrix": ``B x 3 x H x W`` -> ``B x (H/p * W/p) x dim``.
    """

    def __init__(self, image_size: int, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention: every token looks at every token, ``heads`` times over.

    One linear layer makes queries, keys and values for all heads at once (``qkv``); each head
    works in ``dim / heads`` dimensions; ``proj`` mixes the heads' outputs back together.
    ``last_weights`` keeps the last call's ``B x heads x N x N`` attention for pictures.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)  # B x heads x N x N
        self.last_weights = weights.detach()
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """Two linear layers with a GELU between, applied to each token on its own (4x wider inside)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.

    Normalising *before* each sub-layer (pre-norm) leaves the residual path untouched from the
    input to the output, which is what lets deep transformers train without warm-up tricks.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding, a learned class token, learned position embeddings, ``depth`` blocks,
    a final LayerNorm, and a linear head on the class token.

    Args:
        image_size, patch_size: the input's side and the patches' side (pixels).
        dim, depth, heads, mlp_ratio: width, number of blocks, attention heads, MLP widening.
        num_classes: outputs of ``head``.
        in_channels: image channels.
    """

    def __init__(self, image_size: int = 224, patch_size: int = 16, dim: int = 192, depth: int = 12,
                 heads: int = 3, mlp_ratio: float = 4.0, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(image_size, patch_size, in_channels, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``B x (1 + patches) x dim`` tokens after the last block and norm (class token first)."""
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos_embed
        return self.norm(self.blocks(tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[:, 0])

    def class_token_attention(self) -> torch.Tensor:
        """The last block's attention from the class token to each patch, averaged over heads,
        as ``B x (H/p) x (W/p)``: where the class token looked in the last forward pass."""
        weights = self.blocks[-1].attn.last_weights
        if weights is None:
            raise RuntimeError("run the model on an image first")
        side = int(round((weights.shape[-1] - 1) ** 0.5))
        return weights[:, :, 0, 1:].mean(1).reshape(-1, side, side)


def vit_tiny_patch16_224(num_classes: int = 1000) -> ViT:
    """timm's ``vit_tiny_patch16_224`` shape: 192 wide, 12 blocks, 3 heads, 16 px patches."""
    return ViT(224, 16, 192, 12, 3, 4.0, num_classes)
