"""XenServer / XCP-ng: build the VM a job describes, put its sealed images in the VDIs, boot it."""
