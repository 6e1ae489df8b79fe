"""The bottom layer, standard library only: the Agent protocol and ``agent()``, the error
tree every other layer raises from, and the helpers that make untrusted text safe to show.

Nothing here imports another part of agentflux.
"""
