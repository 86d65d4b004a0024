"""Warm migration: the pre-copy sender a source runs on its own system (Python 3.6's
standard library only), its `p2v-agent precopy` subcommand, and the pre-copy job's
disks found again under the names the stick gives them."""
