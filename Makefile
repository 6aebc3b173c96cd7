# Builds kazoo.so for the Kamailio installed on this machine and installs it.
#
#   make                  release build: target/release/kazoo.so
#   make PROFILE=dev      debug build:   target/debug/kazoo.so
#   make install          copies kazoo.so into Kamailio's module directory
#                         (MODULES_DIR, default Debian's), replacing the C module
#   make deb              Debian packages in target/debian/ (scripts/build-deb):
#                         the stripped module, diverting the C module's file,
#                         and its -dbgsym package
#
# The build reads the version and flags strings of `kamailio -v` (or
# KAMAILIO_BIN); the module only loads into that exact Kamailio build.

CARGO ?= cargo
PROFILE ?= release
MODULES_DIR ?= /usr/lib/x86_64-linux-gnu/kamailio/modules
OUT_DIR := target/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))

all: $(OUT_DIR)/kazoo.so

$(OUT_DIR)/kazoo.so: FORCE
	$(CARGO) build --profile $(PROFILE) -p kazoo
	cp $(OUT_DIR)/libkazoo.so $@

install: all
	install -D -m 0644 $(OUT_DIR)/kazoo.so $(DESTDIR)$(MODULES_DIR)/kazoo.so

deb:
	scripts/build-deb $(PROFILE)

.PHONY: all install deb FORCE
FORCE:
