# xenp2v — one entry point for every routine task. Run as root for test, e2e, iso, bench.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Debian packages the tests and tools call (disks, filesystems, boots; debootstrap for the repair
# tests' bookworm guest tree, cached in /var/cache/xenp2v/e2e). Keep sorted.
APT_PACKAGES := btrfs-progs chromium cryptsetup-bin debootstrap dmsetup dosfstools e2fsprogs exfatprogs \
	f2fs-tools fdisk gdisk iproute2 libhivex-bin lvm2 mdadm libfuse2 mtools ntfs-3g openssl parted partclone \
	qemu-utils rpm systemd tmux util-linux xfsprogs xorriso zstd
# What `make venv` needs first: Debian's python3 makes no venv without it (no ensurepip).
VENV_APT_PACKAGES := python3-venv
# What `make e2e` adds: debootstrap for the source machines, QEMU and OVMF to boot them. Keep sorted.
E2E_APT_PACKAGES := debootstrap fusefat kmod mtools ovmf qemu-system-x86
# What `make bench` adds: the peers (dd|nc, Clonezilla's partclone|zstd|nc, virt-p2v's nbdkit and
# nbdcopy), nftables for the wire counters, iproute2 for the shaped links (ip netns, tc). Keep sorted.
BENCH_APT_PACKAGES := iproute2 libnbd-bin nbdkit netcat-openbsd nftables partclone zstd
BENCH_ARGS ?=
# The bench's rows to run alone (bench/run.py --only), e.g. `make bench BENCH=warm`.
BENCH ?=
# Flags for `make chaos`, e.g. CHAOS_ARGS=--short or CHAOS_ARGS="--seed 7".
CHAOS_ARGS ?=
# Scenarios `make e2e` runs (empty: all of them), e.g. `make e2e SCENARIOS=bios-mbr`.
SCENARIOS ?=
# How `make e2e` migrates them: iso (through out/xenp2v.iso, built when missing) or host (the repair
# alone, on loop devices here: a fast check).
E2E_PATH ?= iso

.PHONY: all venv system-deps test chaos serve iso pxe iso-test e2e e2e-deps e2e-ci e2e-xen bench clean

all: test

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES="$(VENV_APT_PACKAGES)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[agent,server,test]'
	touch $@

# Installs only what is missing, so a second run costs a dpkg query.
system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: venv system-deps
	$(BIN)/pytest -q

# The standing fault suite (tests/chaos/run.py), about 15 minutes as root: server kills, cut
# connections, hostile and fuzzed requests, a full disk, slow clients; prints the table of counts
# and PASS only if every run ended byte-identical and no request got a 5xx. Its short form runs in
# `make test` (tests/chaos/test_chaos_short.py).
chaos: venv system-deps
	$(BIN)/python tests/chaos/run.py $(CHAOS_ARGS)

serve: venv
	$(BIN)/p2v-server serve $(ARGS)

# The live ISO (out/xenp2v.iso) and its netboot files (out/pxe/); downloads cached in /var/cache/xenp2v.
iso: venv
	live-build/build-iso

# Netboot files from the ISO that `make iso` built (building it first if there is none).
pxe:
	@[ -s out/xenp2v.iso ] || $(MAKE) iso
	live-build/pxe-files out/xenp2v.iso out/pxe

# Boots the built ISO under QEMU (not part of `make test`: it needs out/xenp2v.iso).
# Also leaves the VGA console's picture in out/vga-console.png.
iso-test: venv
	$(MAKE) system-deps APT_PACKAGES="qemu-system-x86 ovmf"
	XENP2V_ISO=$(CURDIR)/out/xenp2v.iso XENP2V_VGA_PICTURE=$(CURDIR)/out/vga-console.png \
		$(BIN)/pytest -q --durations=0 tests/iso

# Real boots: source machines built with debootstrap (cached in /var/cache/xenp2v/e2e) boot on
# their own AHCI disk, fail on the VM's IDE and virtio; migrated through the ISO (capture, then
# restore and repair in the VM) they boot on both; then the automatic path (capture, serve
# --xapi-url on the XAPI simulator, repair, boot the VDI).
e2e: e2e-deps
	$(BIN)/python tests/e2e/run.py --path $(E2E_PATH) $(SCENARIOS)
	$(BIN)/python tests/e2e/automatic.py $(SCENARIOS)

# What CI runs: scenario 1 (bios-mbr) through the built ISO, the manual path only.
e2e-ci: E2E_PATH = iso
e2e-ci: e2e-deps
	$(BIN)/python tests/e2e/run.py --path iso bios-mbr

# The same sources on a real Xen (4.17, Debian's, with a debootstrapped dom0 cached in
# /var/cache/xenp2v/e2e, all under QEMU TCG): before and after the repair (host path), as HVM in
# XenServer's BIOS profile and as PV through pygrub; uefi-esp in XCP-ng's UEFI profile (NVMe,
# e1000) under plain QEMU, standing in. Not in CI: about an hour here (see docs/architecture.md).
# XEN_PROFILES picks among hvm, pv and uefi-qemu, e.g. `make e2e-xen SCENARIOS=gpt-lvm XEN_PROFILES=hvm`.
XEN_SCENARIOS ?= bios-mbr gpt-lvm uefi-esp
XEN_PROFILES ?= hvm,pv,uefi-qemu
e2e-xen: E2E_PATH = host
e2e-xen: e2e-deps
	$(BIN)/python tests/e2e/xenrun.py --profiles $(XEN_PROFILES) $(if $(SCENARIOS),$(SCENARIOS),$(XEN_SCENARIOS))

e2e-deps: venv system-deps
	$(MAKE) --no-print-directory system-deps APT_PACKAGES="$(E2E_APT_PACKAGES)"
	@if [ "$(E2E_PATH)" = iso ] && [ ! -s out/xenp2v.iso ]; then $(MAKE) --no-print-directory iso; fi

# Benchmarks against the peers on an 8 GiB fixture disk (cached in /var/cache/xenp2v/bench), not
# part of `make test`; prints the table and the issue's targets. Flags: `make bench BENCH_ARGS=--tera`;
# one row alone (and the full capture it is compared with): `make bench BENCH=warm`.
bench: venv system-deps
	$(MAKE) --no-print-directory system-deps APT_PACKAGES="$(BENCH_APT_PACKAGES)"
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/run.py $(if $(BENCH),--only "$(BENCH)") $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
