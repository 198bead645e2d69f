"""``Stream``: the committed text pieces of one generation, read lazily, and its Generation at the end."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from paragen.driver import Generation


class Stream:
    """The committed text pieces of one generation, and its ``Generation`` once exhausted.

    Iterate it for the text; afterwards ``.generation`` holds the tokens, text and stats
    (``None`` before the end). ``next()`` also ends with ``StopIteration`` whose ``value``
    is the Generation, as a generator's return value would be.
    """

    def __init__(self, pieces: Generator[str, None, Generation]) -> None:
        self._pieces = pieces
        self.generation: Generation | None = None

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration as done:
            # A closed or exhausted generator ends again with None: keep the result it gave.
            self.generation = self.generation or done.value
            raise StopIteration(self.generation) from None

    def close(self) -> None:
        """Stop decoding now (a server whose client left, a deadline): the decode loop ends
        where it stands and its cache is freed; ``generation`` stays ``None``."""
        self._pieces.close()


def one_row(pieces: Generator[tuple[int, str], None, list[Generation]]) -> Generator[str, None, Generation]:
    """The text pieces of the driver's generator for a batch of one, returning its Generation."""
    try:
        while True:
            try:
                _, piece = next(pieces)
            except StopIteration as done:
                return done.value[0]
            yield piece
    finally:
        pieces.close()  # a closed Stream ends the decode loop too


def exhaust(pieces: Generator[Any, None, Any]) -> Any:
    """Run a generator to its end; its return value."""
    while True:
        try:
            next(pieces)
        except StopIteration as done:
            return done.value
