"""``block_diffusion``: block diffusion with an exact KV cache (BD3-LM, Arriola et al. 2025;
SDAR, which adapts an AR model the same way).

A block-causal model attends causally across blocks of ``block_size`` positions (block j
holds positions [jB, (j + 1)B), counted from the start of the sequence, as in training)
and bidirectionally within one. So once a block is finished, nothing after it can change
its keys/values: the cache of finished blocks is exact, and decoding with it gives the
same tokens as recomputing everything.

The loop is ``diffusion``'s (propose -> select -> commit, same orderings and commit rules),
with the length growing one block at a time until EOS or the budget. The block holding
the prompt's tail is the first one denoised (its prompt tokens are never re-masked). Each
call feeds the finished block not yet cached, now clean, together with the live block:
the finished block sees the cache and itself, the live block the cache, the finished
block and itself; the finished block's keys/values are then committed to the cache, so
refreshing costs no extra call.

A shifted model (``info.shift``) predicts a block's first position from the finished
block's last one, computed when that block was fed clean: plain next-token prediction.
That logit is kept (``edge``) for the block's later calls, which feed the live block only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from paragen.errors import UnsupportedOptionError
from paragen.strategies.base import DecodeContext, feed
from paragen.strategies.diffusion import DenoiseOptions, Diffusion


@dataclass(frozen=True)
class BlockDiffusionOptions(DenoiseOptions):
    """Settings of ``block_diffusion``: ``diffusion``'s commit settings plus the cache.
    The block size is the model's (``info.block_size``): it is fixed by training.
    """

    strategy: ClassVar[str] = "block_diffusion"

    cache: str = field(default="exact", metadata={
        "help": "exact (finished blocks cached) | none (recompute the whole sequence each call)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cache not in ("exact", "none"):
            raise UnsupportedOptionError(f"block_diffusion: cache must be 'exact' or 'none', got '{self.cache}'")


class BlockDiffusion(Diffusion):
    name = "block_diffusion"
    Options = BlockDiffusionOptions
    summary = "block-causal diffusion, exact cache of finished blocks, grows until EOS; lossy"
    attention: ClassVar[str] = "block_causal"

    def __init__(self, ctx: DecodeContext, options: BlockDiffusionOptions) -> None:
        super().__init__(ctx, options)
        self.B = ctx.target.info.block_size
        if not self.B or self.B < 1:
            raise UnsupportedOptionError(
                "'block_diffusion' needs the model's block_size (paragen_block_size in config.json)"
            )

    def prefill(self, prompt: list[int]) -> None:
        """Cache the prompt's whole blocks (one call); its tail opens the first live block."""
        first = len(prompt) // self.B * self.B
        self.start(prompt, first_block=first, block_length=self.B, grow=True)
        self.cache = None
        # the logits at position first - 1; with first = 0 they predict position 0, a prompt
        # token that is never masked, so any row will do
        self.edge = torch.zeros(self.ctx.target.info.vocab_size, device=self.ctx.target.device)
        if self.opts.cache == "exact":
            self.cache = self.ctx.target.new_cache(self.ctx.cache_length)
            if first:
                self.edge = feed(self.ctx.target, self.cache, prompt[:first], 0, mask=self.block_mask(0, first))[-1]
                self.cache.commit(first)

    def block_mask(self, lo: int, hi: int) -> torch.Tensor:
        """[1, T, T] over positions lo..hi-1: i sees j iff block(j) <= block(i); cached slots
        (all in earlier blocks) are visible to every new token."""
        blk = torch.arange(lo, hi) // self.B
        return (blk[None, :] <= blk[:, None])[None]

    def forward(self) -> torch.Tensor:
        """Logits [be - bs, V] predicting the live block."""
        (bs, be), target, s = self.block, self.ctx.target, self.shift
        if self.cache is None:
            logits = feed(target, None, self.canvas[:be], 0, mask=self.block_mask(0, be))
            return logits[(torch.arange(bs, be, device=logits.device) - s).clamp_min(0)]  # position 0 is a prompt token
        lo = self.cache.length  # == bs, or the start of the finished block before it
        logits = feed(target, self.cache, self.canvas[lo:be], lo, mask=self.block_mask(lo, be))
        self.cache.commit(bs - lo)  # the finished block is final; the live block stays pending
        if not s:
            return logits[bs - lo :]
        if lo < bs:
            self.edge = logits[bs - lo - 1]
        return torch.cat([self.edge[None].to(logits), logits[bs - lo : -1]])
