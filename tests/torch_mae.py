"""A PyTorch MAE in the official checkpoints' layout, for parity tests.

Written independently of masktas_jax: fused qkv, Conv2d patch embedding,
NCHW images, MAE's masking-by-gather and decoder un-shuffle.
"""

import torch
from torch import nn


class Attention(nn.Module):

  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-2, -1)) * (c // self.heads)**-0.5
    out = attn.softmax(dim=-1) @ v
    return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):

  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):

  def __init__(self, dim, heads, mlp_ratio=4.0):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):

  def __init__(self, patch, chans, dim):
    super().__init__()
    self.proj = nn.Conv2d(chans, dim, patch, stride=patch)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class TorchMAE(nn.Module):

  def __init__(self, image=32, patch=8, chans=3, dim=128, depth=2, heads=2,
               dec_dim=64, dec_depth=1, dec_heads=4):
    super().__init__()
    n = (image // patch)**2
    self.patch_embed = PatchEmbed(patch, chans, dim)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim))
    self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.has_decoder = dec_depth > 0
    if self.has_decoder:
      self.decoder_embed = nn.Linear(dim, dec_dim)
      self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
      self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, dec_dim))
      self.decoder_blocks = nn.ModuleList(
          Block(dec_dim, dec_heads) for _ in range(dec_depth))
      self.decoder_norm = nn.LayerNorm(dec_dim, eps=1e-6)
      self.decoder_pred = nn.Linear(dec_dim, patch * patch * chans)
    with torch.no_grad():  # Every tensor random, LayerNorms included.
      for p in self.parameters():
        p.copy_(torch.randn_like(p) * 0.1)

  def forward_encoder(self, images, ids_keep=None):
    x = self.patch_embed(images) + self.pos_embed[:, 1:]
    if ids_keep is not None:
      x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
    cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    for block in self.blocks:
      x = block(x)
    return self.norm(x)

  def forward_decoder(self, latent, ids_restore):
    x = self.decoder_embed(latent)
    b, n = ids_restore.shape
    fill = self.mask_token.repeat(b, n + 1 - x.shape[1], 1)
    y = torch.cat([x[:, 1:], fill], dim=1)
    y = torch.gather(y, 1, ids_restore[..., None].expand(-1, -1, y.shape[-1]))
    x = torch.cat([x[:, :1], y], dim=1) + self.decoder_pos_embed
    for block in self.decoder_blocks:
      x = block(x)
    return self.decoder_pred(self.decoder_norm(x))[:, 1:]
