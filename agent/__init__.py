"""The agent: runs in the live ISO; probes, captures, restores and repairs."""
