"""``wolfhub`` command line (click: subcommands, --help and exit codes for free)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from hub._config import HubConfig
from hub._servers import LocalServers
from hub.errors import HubError

DEFAULT_CONFIG = "config/cache_db.yml"


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # uvloop is optional on platforms without it
        return asyncio.run(coro)
    return uvloop.run(coro)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose: bool) -> None:
    """wolfinch-hub: Redis + InfluxDB + SQLite data hub for Wolfinch."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="[%(levelname)s:%(name)s] %(message)s")


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Hub config (YAML). Without it, local servers are started under --data.")
@click.option("--data", default="data", show_default=True, type=click.Path(file_okay=False),
              help="Where local servers and the SQLite file live when no config is given.")
@click.option("--candles", default=600, show_default=True, help="1-minute candles per product.")
def example(config_path: str | None, data: str, candles: int) -> None:
    """Open a hub, write and read candles, indicators, a trade and a position."""
    from hub._example import run

    try:
        if config_path is not None:
            summary = _run(run(HubConfig.load(config_path), candles))
        else:
            with LocalServers(Path(data) / "servers") as servers:
                cfg = HubConfig.from_mapping({
                    **servers.config_overrides(),
                    "sqlite": {"path": str(Path(data) / "wolfhub.sqlite")},
                })
                summary = _run(run(cfg, candles))
    except (HubError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":  # pragma: no cover
    main()
