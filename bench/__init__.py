"""Benchmarks comparing agentflux with a hand-written loop, an asyncio.Queue design and aiostream."""
