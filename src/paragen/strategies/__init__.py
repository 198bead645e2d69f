"""The strategy registry: one table from name to class, filled explicitly (no import magic)."""

from __future__ import annotations

from paragen.errors import UnknownStrategyError
from paragen.strategies.ar import AR
from paragen.strategies.auto import Auto
from paragen.strategies.base import DecodeContext, Strategy
from paragen.strategies.block_diffusion import BlockDiffusion
from paragen.strategies.blockwise import Blockwise
from paragen.strategies.blockwise_relaxed import BlockwiseRelaxed
from paragen.strategies.diffusion import Diffusion
from paragen.strategies.eagle import Eagle
from paragen.strategies.hydra import Hydra
from paragen.strategies.jacobi import Jacobi
from paragen.strategies.lookahead import Lookahead
from paragen.strategies.lookup import Lookup
from paragen.strategies.medusa import Medusa
from paragen.strategies.medusa_typical import MedusaTypical
from paragen.strategies.spectr import SpecTr
from paragen.strategies.speculative import Speculative
from paragen.strategies.tree import Tree

STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (AR, Speculative, Tree, SpecTr, Lookup, Jacobi, Lookahead, Blockwise, BlockwiseRelaxed,
                        Medusa, MedusaTypical, Hydra, Eagle, Diffusion, BlockDiffusion, Auto)
}


def get_strategy(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UnknownStrategyError(f"unknown strategy '{name}': choose one of {', '.join(STRATEGIES)}") from None


__all__ = ["STRATEGIES", "DecodeContext", "Strategy", "get_strategy"]
