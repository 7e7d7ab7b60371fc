"""What every script of the repo shares at its edge with the user: the one-line error and the choice of device."""
from __future__ import annotations

import argparse

import torch


class UserError(Exception):
    """A problem the user can fix (a bad flag, a missing or foreign file); reported as one line, non-zero exit."""


def one_line(err: BaseException) -> str:
    """An exception as one line for the user: the first line of its message, or its type when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (what is wrong, then 'see --help') instead of the usage block."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when PyTorch sees a GPU, else the CPU; 'cuda' without a GPU is a UserError."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA GPU: use --device cpu or auto")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
