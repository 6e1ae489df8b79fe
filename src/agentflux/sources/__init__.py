"""Event sources for fluxes: iterables, timers, merges, channels, an event bus, pheromones,
and Redis Streams (a consumer-group source and a sink; the ``redis`` extra)."""

from .._core._errors import BrokenResourceError, ClosedResourceError, EndOfStream, WouldBlock
from ._bus import BusStatistics, EventBus, Subscription
from ._channel import ChannelStatistics, Receiver, Sender, open_channel
from ._pheromones import Pheromone, PheromoneField, from_pheromones
from ._redis import RedisStreamSink, RedisStreamSource, StreamEntry, from_redis_stream, to_redis_stream
from ._sources import (
    countdown,
    filtered,
    from_events,
    from_iterable,
    from_stream,
    mapped,
    merged,
    periodic,
    take,
)

__all__ = [
    "BrokenResourceError",
    "BusStatistics",
    "ChannelStatistics",
    "ClosedResourceError",
    "EndOfStream",
    "EventBus",
    "Pheromone",
    "PheromoneField",
    "Receiver",
    "RedisStreamSink",
    "RedisStreamSource",
    "Sender",
    "StreamEntry",
    "Subscription",
    "WouldBlock",
    "countdown",
    "filtered",
    "from_events",
    "from_iterable",
    "from_pheromones",
    "from_redis_stream",
    "from_stream",
    "mapped",
    "merged",
    "open_channel",
    "periodic",
    "take",
    "to_redis_stream",
]
