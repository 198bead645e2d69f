"""Typed exceptions: every bad input raises one of these with a message that says what to do;
``warn_caller`` for input that is accepted but deserves a word."""

import os
import sys
import warnings


class ParagenError(Exception):
    """Base class of every error paragen raises on purpose."""


class InvalidInputError(ParagenError, ValueError):
    """A prompt, a length or a sampling setting is out of range."""


class ContextLengthError(InvalidInputError):
    """Prompt plus requested new tokens do not fit the model's context."""


class UnknownStrategyError(ParagenError, KeyError):
    """A strategy name is not in the registry."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class UnsupportedOptionError(ParagenError, ValueError):
    """A strategy got an option it does not have, or a setting it cannot honour."""


class VocabularyMismatchError(ParagenError, ValueError):
    """Draft and target do not share a tokenizer."""


class ModelLoadError(ParagenError, OSError):
    """A model directory is missing, incomplete or corrupt."""


class HeadsMismatchError(ParagenError, ValueError):
    """Prediction heads were trained for another target model, or are missing or of the wrong kind."""


class DeviceError(ParagenError, ValueError):
    """A device that does not exist here, or models (a target and its draft) on different devices."""


class AudioInputError(InvalidInputError):
    """An audio input is missing, unreadable, not audio, empty, or too long for a speech model."""


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside the paragen package: the line of
    the user's code that called paragen, however deep inside paragen the warning arose (a fixed
    ``stacklevel`` points at paragen itself as soon as a public function wraps another)."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 2  # stacklevel 2: warn_caller's caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
