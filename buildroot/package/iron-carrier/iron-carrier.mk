################################################################################
#
# iron-carrier
#
################################################################################

IRON_CARRIER_VERSION = 0.1.0
IRON_CARRIER_RELEASE_DIR = $(call qstrip,$(BR2_PACKAGE_IRON_CARRIER_RELEASE_DIR))
ifeq ($(IRON_CARRIER_RELEASE_DIR),)
# Development (the default): build the source tree this BR2_EXTERNAL lives
# in. Buildroot copies it with rsync (again at each iron-carrier-rebuild);
# the host's cargo output, its .cargo (the vendoring below writes its own)
# and the packaging folders are left out.
IRON_CARRIER_SITE = $(BR2_EXTERNAL_IRON_CARRIER_PATH)/..
IRON_CARRIER_SITE_METHOD = local
IRON_CARRIER_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude /target --exclude /buildroot --exclude /openwrt --exclude /.cargo
else
# A release: the archive "make dist-src" writes (the default _SOURCE name,
# iron-carrier-$(IRON_CARRIER_VERSION).tar.gz), copied from that folder and
# checked against iron-carrier.hash. It holds the crates in VENDOR/, so
# Buildroot's download step does not vendor again and the build needs no
# network.
IRON_CARRIER_SITE = $(IRON_CARRIER_RELEASE_DIR)
IRON_CARRIER_SITE_METHOD = file
endif
IRON_CARRIER_LICENSE = MIT
IRON_CARRIER_LICENSE_FILES = LICENSE

# Buildroot sets the release profile from its own options (BR2_OPTIMIZE_*,
# BR2_ENABLE_LTO, 16 codegen units), which overrides [profile.release] of
# Cargo.toml. Re-apply the project's size settings: these variables come
# after Buildroot's in cargo's environment, so they win.
IRON_CARRIER_CARGO_ENV = \
	CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
	CARGO_PROFILE_RELEASE_LTO=true \
	CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
	CARGO_PROFILE_RELEASE_PANIC=abort

# Stripping in cargo only when Buildroot strips the target anyway, so that
# BR2_STRIP_none still gets a binary with its symbols.
ifeq ($(BR2_STRIP_strip),y)
IRON_CARRIER_CARGO_ENV += CARGO_PROFILE_RELEASE_STRIP=true
endif

# The bundled SQLite without the parts the program never uses (about 350 KB
# less code). The same flags as the tree's .cargo/config.toml, which this
# build does not read: the vendoring below writes a .cargo/config.toml of its
# own. tests/init_script.rs checks that the copies agree.
IRON_CARRIER_CARGO_ENV += LIBSQLITE3_FLAGS="-USQLITE_ENABLE_FTS3 -USQLITE_ENABLE_FTS3_PARENTHESIS -USQLITE_ENABLE_FTS5 -USQLITE_ENABLE_JSON1 -USQLITE_ENABLE_RTREE -USQLITE_ENABLE_STAT4 -USQLITE_ENABLE_DBSTAT_VTAB -USQLITE_SOUNDEX -USQLITE_ENABLE_COLUMN_METADATA -USQLITE_ENABLE_LOAD_EXTENSION -DSQLITE_OMIT_LOAD_EXTENSION -DSQLITE_OMIT_JSON -DSQLITE_OMIT_DEPRECATED -DSQLITE_OMIT_UTF16 -DSQLITE_OMIT_SHARED_CACHE -DSQLITE_OMIT_PROGRESS_CALLBACK -DSQLITE_OMIT_AUTHORIZATION -DSQLITE_OMIT_DECLTYPE -DSQLITE_OMIT_TCL_VARIABLE -DSQLITE_OMIT_COMPLETE -DSQLITE_OMIT_GET_TABLE -DSQLITE_OMIT_DESERIALIZE -DSQLITE_OMIT_LOCALTIME"

# A local source tree skips the download step, and with it the vendoring of
# the crates that Buildroot does there (support/download/cargo-post-process).
# Vendor them before the build instead (this needs the network the first
# time; the crates are then cached in BR_CARGO_HOME). A release archive
# already holds VENDOR/, so this does nothing then.
define IRON_CARRIER_CARGO_VENDOR
	if [ ! -d $(@D)/VENDOR ]; then \
		mkdir -p $(@D)/.cargo $(BR_CARGO_HOME) && \
		cd $(@D) && \
		$(HOST_MAKE_ENV) CARGO_HOME=$(BR_CARGO_HOME) \
			flock $(BR_CARGO_HOME)/.br-lock \
			cargo vendor --locked VENDOR > $(@D)/.cargo/config.toml; \
	fi
endef
IRON_CARRIER_PRE_BUILD_HOOKS += IRON_CARRIER_CARGO_VENDOR

IRON_CARRIER_BIN_DIR = \
	target/$(RUSTC_TARGET_NAME)/$(if $(BR2_ENABLE_DEBUG),debug,release)

# Installs the binary itself rather than through "cargo install" (which would
# leave cargo's .crates.toml bookkeeping in /usr), the default config and its
# storage directory (a storage that does not exist is not synchronized).
define IRON_CARRIER_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(@D)/$(IRON_CARRIER_BIN_DIR)/iron-carrier \
		$(TARGET_DIR)/usr/bin/iron-carrier
	$(INSTALL) -D -m 0644 $(IRON_CARRIER_PKGDIR)/config.toml \
		$(TARGET_DIR)/etc/iron-carrier/config.toml
	$(INSTALL) -d -m 0755 $(TARGET_DIR)/var/lib/iron-carrier/data
endef

define IRON_CARRIER_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(IRON_CARRIER_PKGDIR)/S60iron-carrier \
		$(TARGET_DIR)/etc/init.d/S60iron-carrier
	$(INSTALL) -D -m 0644 $(IRON_CARRIER_PKGDIR)/iron-carrier.default \
		$(TARGET_DIR)/etc/default/iron-carrier
endef

define IRON_CARRIER_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(IRON_CARRIER_PKGDIR)/iron-carrier.service \
		$(TARGET_DIR)/usr/lib/systemd/system/iron-carrier.service
endef

$(eval $(cargo-package))
