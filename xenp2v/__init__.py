"""Shared pieces of xenp2v: the wire protocol both the agent and the server speak."""

__version__ = "0.1.0"
