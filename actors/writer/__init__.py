"""The writer: batched InfluxDB writes that never lose an accepted line (see
:mod:`actors.writer.actor`), in three parts: accumulator, sender, spool."""

from actors.writer.actor import Flush, Lines, WriterActor

__all__ = ["Flush", "Lines", "WriterActor"]
