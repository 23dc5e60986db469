"""What every command's parser shares: one `pruneflow: error:` line for a bad option, choices read from the configs,
and the options that name a model, a cache and the artifact store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn, get_args

from pydantic import BaseModel

from pruning.config import DEFAULT_ARTIFACTS_DIR, DEFAULT_CACHE_DIR, DEFAULT_MODEL

USAGE_ERROR = 2  # a user's mistake, found before the work
FAULT = 1  # a fault during the work
UNPINNED_HELP = "accept hf://<org>/<name> without @<revision> (its weights can change between runs)"


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one `pruneflow: error:` line (no usage block), like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"pruneflow: error: {message}; see `{self.prog} --help`\n")


Commands = argparse._SubParsersAction  # what `add_subparsers` returns: each command module adds its parsers to it


def choices(config: type[BaseModel], field: str) -> list[str]:
    """The values a Literal field of a config accepts, for a command-line option's choices."""
    return list(get_args(config.model_fields[field].annotation))


def port(text: str) -> int:
    number = int(text)
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{number} is not a TCP port; use 1-65535")
    return number


def add_model_option(parser: argparse.ArgumentParser, help_text: str = "model source") -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"{help_text} (default {DEFAULT_MODEL})")
    parser.add_argument("--allow-unpinned", action="store_true", help=UNPINNED_HELP)


def add_store_options(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """--cache-dir (downloads and conversions) and --artifacts (the artifact store every driver shares)."""
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR if defaults else None,
                        help=f"downloads and converted models (default {DEFAULT_CACHE_DIR})")
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS_DIR if defaults else None,
                        help=f"the artifact store: calibration sets, pruned blocks, models, evaluations (default "
                             f"{DEFAULT_ARTIFACTS_DIR}); `prune`, `compress`, `sweep` and `dvc repro` share it")
