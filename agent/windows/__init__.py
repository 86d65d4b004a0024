"""Windows on the source's disks: volumes whose used blocks cannot be known from
outside (windisk: BitLocker, dynamic disks, Storage Spaces), paths looked up as
Windows would (winpath), and the warnings a technician must see before the transfer
(winwarn)."""
