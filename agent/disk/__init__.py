"""Disk mapping: block devices, partition tables, LVM and md seen through read-only loop
devices, used-block maps (partclone, ext, btrfs), which maps can be trusted (fsstate),
what holds a disk (inuse), and the read plan of a disk that all of it makes (plan)."""
