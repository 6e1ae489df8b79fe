"""The ``agentflux`` command line: the top-level group, with each command group registered."""

from __future__ import annotations

import os

import click

from ._bench import bench
from ._common import fail, has_surrogates
from ._purgatory import purgatory
from ._serve import serve
from ._worker import worker
from ._workshop import workshop

__all__ = ["main", "run"]


class _Main(click.Group):
    """The top-level group: arguments that are not valid UTF-8 are refused before anything runs."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for arg in args:
            if has_surrogates(arg):
                fail(f"argument {arg} is not valid UTF-8 text")
        return super().parse_args(ctx, args)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="agentflux")
def main() -> None:
    """agentflux: run async agents over continuous event streams."""


main.add_command(purgatory)
main.add_command(workshop)
main.add_command(serve)
main.add_command(bench)
main.add_command(worker)


def run() -> None:
    """Entry point of the ``agentflux`` script."""
    main(prog_name=os.environ.get("AGENTFLUX_PROG", "agentflux"))
