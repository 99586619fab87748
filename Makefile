# pptp-alg: build, test and install.
#
#   make build                      release build
#   make test                       the project's test command
#   make install [PREFIX=/usr/local] [DESTDIR=]
#   make uninstall [PREFIX=/usr/local] [DESTDIR=]
#   make demo                       scripts/demo.sh (needs root)
#
# The unit goes to $(SYSTEMDDIR): /etc/systemd/system when PREFIX is
# /usr/local (an administrator's install), $(PREFIX)/lib/systemd/system
# otherwise (a package's). The example config is installed only if no config
# exists, so an upgrade never overwrites the administrator's file.

PREFIX     ?= /usr/local
DESTDIR    ?=
CARGO      ?= cargo
SBINDIR    := $(PREFIX)/sbin
SHAREDIR   := $(PREFIX)/share/pptp-alg
SYSCONFDIR ?= /etc/pptp-alg
ifeq ($(PREFIX),/usr/local)
SYSTEMDDIR ?= /etc/systemd/system
else
SYSTEMDDIR ?= $(PREFIX)/lib/systemd/system
endif

BIN := target/release/pptp-alg

.PHONY: all build test install uninstall demo clean

all: build

build:
	$(CARGO) build --release --locked --bin pptp-alg

$(BIN):
	$(CARGO) build --release --locked --bin pptp-alg

test:
	$(CARGO) test --all-targets

install: $(BIN)
	install -D -m 0755 $(BIN) $(DESTDIR)$(SBINDIR)/pptp-alg
	install -D -m 0644 nft/pptp-alg.nft $(DESTDIR)$(SHAREDIR)/pptp-alg.nft
	install -D -m 0644 config/pptp-alg.toml $(DESTDIR)$(SHAREDIR)/pptp-alg.toml.example
	install -d -m 0755 $(DESTDIR)$(SYSTEMDDIR)
	sed -e 's#/usr/local/sbin/#$(SBINDIR)/#g' \
	    -e 's#/etc/pptp-alg/#$(SYSCONFDIR)/#g' \
	    systemd/pptp-alg.service > $(DESTDIR)$(SYSTEMDDIR)/pptp-alg.service
	chmod 0644 $(DESTDIR)$(SYSTEMDDIR)/pptp-alg.service
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/pptp-alg.toml ]; then \
	    echo "keeping existing $(DESTDIR)$(SYSCONFDIR)/pptp-alg.toml"; \
	else \
	    install -m 0644 config/pptp-alg.toml $(DESTDIR)$(SYSCONFDIR)/pptp-alg.toml; \
	fi
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
	    systemctl daemon-reload; \
	    echo "installed; start with: systemctl enable --now pptp-alg"; \
	fi

# The config file is the administrator's: it is left in place.
uninstall:
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
	    systemctl disable --now pptp-alg.service 2>/dev/null || true; \
	fi
	rm -f $(DESTDIR)$(SBINDIR)/pptp-alg
	rm -f $(DESTDIR)$(SHAREDIR)/pptp-alg.nft $(DESTDIR)$(SHAREDIR)/pptp-alg.toml.example
	-rmdir $(DESTDIR)$(SHAREDIR) 2>/dev/null
	rm -f $(DESTDIR)$(SYSTEMDDIR)/pptp-alg.service
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
	    systemctl daemon-reload; \
	fi
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/pptp-alg.toml ]; then \
	    echo "left $(DESTDIR)$(SYSCONFDIR)/pptp-alg.toml in place"; \
	fi

demo:
	sh scripts/demo.sh

clean:
	$(CARGO) clean
