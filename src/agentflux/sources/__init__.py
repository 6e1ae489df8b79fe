"""Event sources for fluxes: iterables, timers, merges, channels, an event bus, pheromones."""

from .._core._errors import BrokenResourceError, ClosedResourceError, EndOfStream, WouldBlock
from ._bus import BusStatistics, EventBus, Subscription
from ._channel import ChannelStatistics, Receiver, Sender, open_channel
from ._pheromones import Pheromone, PheromoneField, from_pheromones
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
    "Sender",
    "Subscription",
    "WouldBlock",
    "countdown",
    "filtered",
    "from_events",
    "from_iterable",
    "from_pheromones",
    "from_stream",
    "mapped",
    "merged",
    "open_channel",
    "periodic",
    "take",
]
