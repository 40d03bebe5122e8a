"""model_bench.py's baseline: a plain PyTorch GPT of an MPT preset's shape, ALiBi through
FlexAttention's `score_mod` (SDPA with an ALiBi bias on CPU, where eager FlexAttention has no
backward), pre-LayerNorm blocks without biases, GELU MLP x4, tied embedding.

This is a script helper, not a package: the scripts put tools/bench on sys.path to import it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GPT"]


class Block(nn.Module):
    """Pre-LN block: fused qkv, attention, GELU MLP x4; no biases."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.up, self.down = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x, attend):
        b, t, d = x.shape
        qkv = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, Dh)
        y = attend(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class GPT(nn.Module):
    """A plain GPT with ALiBi through FlexAttention's score_mod (SDPA + bias on CPU)."""

    def __init__(self, vocab: int, d: int, heads: int, layers: int, seq: int, device) -> None:
        super().__init__()
        from mpt import alibi_slopes

        self.wte = nn.Embedding(vocab, d, device=device)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers)).to(device)
        self.ln_f = nn.LayerNorm(d, bias=False, device=device)
        self.register_buffer("slopes", alibi_slopes(heads, 8, device=device))
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
        self.flex = torch.device(device).type == "cuda"
        if self.flex:
            from torch.nn.attention.flex_attention import create_block_mask

            self.block_mask = create_block_mask(
                lambda b, h, q, kv: kv <= q, None, None, seq, seq, device=device
            )
        else:  # eager FlexAttention has no backward on CPU
            pos = torch.arange(seq, device=device)
            dist = (pos[None, :] - pos[:, None]).float()
            bias = self.slopes[:, None, None] * dist
            self.bias = bias.masked_fill(dist > 0, float("-inf"))[None]

    def forward(self, ids):  # (B, T) -> mean next-token loss
        from torch.nn.attention.flex_attention import flex_attention

        slopes = self.slopes

        def alibi(score, b, h, q_idx, kv_idx):
            return score + slopes[h] * (kv_idx - q_idx)

        def attend(q, k, v):
            if self.flex:
                return flex_attention(q, k, v, score_mod=alibi, block_mask=self.block_mask)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias.to(q.dtype))

        x = self.wte(ids)
        for block in self.blocks:
            x = block(x, attend)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # tied embedding
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
