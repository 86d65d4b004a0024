"""In-place repair: make a copied Linux system boot on the VM's hardware.

The core works on data: `facts` says what the old device and NIC names now are, `steps` turn the
guest's file contents into new contents (a `plan` of file changes and chroot commands). The edges
find and mount the guest (`guest`), apply the plan with backups and a log (`apply`), and the
`command` module is the `p2v-agent repair` front.
"""
