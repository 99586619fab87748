#!/usr/bin/env bash
# Builds the Debian package (`make deb`) and tests it on this machine:
# lintian, install, the binary, the unit, the man pages and completions, an
# upgrade that keeps a modified config (also when the packaged config
# changed), removal (conffiles stay) and purge (nothing stays).
#
# Needs root and a machine where pptp-alg is not installed: CI (.ci/run)
# on a clean Debian 12. The service is never started (the package does not
# start it), and the package is purged at the end whatever happens, so the
# namespace tests that run afterwards see the machine as it was.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

step() { echo "== package-test: $*"; }
fail() {
    echo "package-test: FAIL: $*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || fail "needs root (dpkg -i)"
if dpkg-query -W -f='${db:Status-Abbrev}' pptp-alg 2>/dev/null | grep -q '^[ih]'; then
    fail "pptp-alg is installed here; this test installs and purges it"
fi
# Purging removes /run/pptp-alg, the unit's runtime directory.
[ ! -e /run/pptp-alg ] || fail "/run/pptp-alg exists (a pptp-alg running with the default paths?); the purge would remove it"

export DEBIAN_FRONTEND=noninteractive
need=(debhelper dpkg-dev lintian man-db)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d)
cleanup() {
    dpkg -P pptp-alg >/dev/null 2>&1 || true
    rm -f /etc/systemd/system/multi-user.target.wants/pptp-alg.service
    rm -rf "$work"
}
trap cleanup EXIT

version=$(dpkg-parsechangelog -S Version)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
deb=$root/pptp-alg_${version}_${arch}.deb
dbgsym=$root/pptp-alg-dbgsym_${version}_${arch}.deb
conf=/etc/pptp-alg/pptp-alg.toml

step "make deb"
start=$(date +%s)
make deb >"$work/build.log" 2>&1 || {
    tail -n 50 "$work/build.log"
    fail "make deb"
}
echo "built $(basename "$deb") in $(($(date +%s) - start)) s"
ls -l "$deb" "$dbgsym"

step "lintian"
# Errors and warnings fail; debian/pptp-alg.lintian-overrides explains each
# tag it silences. Info tags are shown.
rc=0
lintian --fail-on error,warning --display-info "$deb" "$dbgsym" >"$work/lintian.log" 2>&1 || rc=$?
grep -v '^running with root privileges' "$work/lintian.log" || true
[ "$rc" = 0 ] || fail "lintian (exit status $rc)"

step "dpkg -i"
dpkg -i "$deb"
[ "$(pptp-alg --version)" = "pptp-alg $version" ] ||
    fail "pptp-alg --version says '$(pptp-alg --version)', the package is $version (debian/changelog and Cargo.toml disagree?)"
dpkg-query -W -f='${Conffiles}\n' pptp-alg | grep -q " $conf " || fail "$conf is not a conffile"
# The installed config is one the installed binary accepts.
pptp-alg rules print --backend nft-queue --config "$conf" | grep -q 'table ip pptp_alg' ||
    fail "rules print with the installed config"

step "the unit: installed, not enabled, not started"
# What the maintainer scripts do with systemd running (not the case in CI):
# removal stops the service, an upgrade restarts it rather than stopping
# it first, and a fresh installation neither enables nor starts it (the
# unit is only enabled again if it was, and deb-systemd-invoke starts no
# disabled unit).
dpkg-deb -e "$deb" "$work/control"
grep -q "deb-systemd-invoke stop 'pptp-alg.service'" "$work/control/prerm" || fail "prerm does not stop the service"
[ ! -e "$work/control/preinst" ] || ! grep -q 'deb-systemd-invoke stop' "$work/control/preinst" ||
    fail "preinst stops the service before an upgrade"
grep -q '_dh_action=restart' "$work/control/postinst" || fail "postinst does not restart on upgrade"
# dh_installsystemd --no-enable's snippet: enable only what was enabled.
grep -q "deb-systemd-helper debian-installed 'pptp-alg.service'" "$work/control/postinst" ||
    fail "postinst is not the --no-enable one"
unit=/lib/systemd/system/pptp-alg.service
[ -f "$unit" ] || fail "no $unit"
grep -q '^ExecStart=/usr/sbin/pptp-alg run --install-rules --config /etc/pptp-alg/pptp-alg.toml$' "$unit" ||
    fail "ExecStart does not run /usr/sbin/pptp-alg with $conf"
[ ! -e /etc/systemd/system/multi-user.target.wants/pptp-alg.service ] || fail "the unit was enabled"
if [ -d /run/systemd/system ]; then
    state=$(systemctl is-active pptp-alg.service || true)
    [ "$state" != active ] || fail "the unit was started"
fi
# --man=yes: the Documentation= pages must exist (ours and nft(8)).
man_check=yes
[ -e /usr/share/man/man8/nft.8.gz ] || man_check=no
out=$(systemd-analyze verify --man=$man_check "$unit" 2>&1) || {
    echo "$out"
    fail "systemd-analyze verify $unit"
}
if echo "$out" | grep -E 'Unknown key|Unknown section|Failed to parse|ignoring|not found'; then
    fail "systemd-analyze verify $unit complains"
fi

step "man pages and completions"
for page in /usr/share/man/man8/pptp-alg.8.gz /usr/share/man/man5/pptp-alg.toml.5.gz; do
    # The checks lintian runs: any warning from man/groff fails.
    warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z "$page" 2>&1 >/dev/null)
    [ -z "$warnings" ] || fail "man $page: $warnings"
    text=$(MANWIDTH=80 man -l "$page" 2>/dev/null)
    [ "$(echo "$text" | wc -l)" -gt 40 ] || fail "man -l $page renders almost nothing"
done
MANWIDTH=80 man -l /usr/share/man/man8/pptp-alg.8.gz | grep -q -- '--max-calls-per-host <N>' ||
    fail "pptp-alg(8) lacks run's flags"
MANWIDTH=80 man -l /usr/share/man/man5/pptp-alg.toml.5.gz | grep -q 'max_calls_per_host = 64' ||
    fail "pptp-alg.toml(5) lacks the keys"
bash -c 'source /usr/share/bash-completion/completions/pptp-alg && complete -p pptp-alg' >/dev/null ||
    fail "bash completion does not load"
[ -s /usr/share/zsh/vendor-completions/_pptp-alg ] || fail "no zsh completion"
[ -s /usr/share/fish/vendor_completions.d/pptp-alg.fish ] || fail "no fish completion"
for doc in README.md.gz changelog.gz copyright examples/pptp-alg.toml examples/ha/keepalived.conf \
    examples/ha/pptp-alg-ha.sh examples/ha/conntrackd-r1.conf examples/ha/pptp-alg-r1.toml third-party-licenses.txt.gz; do
    [ -s "/usr/share/doc/pptp-alg/$doc" ] || fail "no /usr/share/doc/pptp-alg/$doc"
done

step "upgrade keeps a modified config"
sed -i 's/^max_calls_per_host = 64$/max_calls_per_host = 128/' "$conf"
grep -q '^max_calls_per_host = 128$' "$conf" || fail "could not modify $conf"
# The admin enables the unit (offline: only the symlink); purge must remove it.
systemctl enable pptp-alg.service 2>/dev/null ||
    ln -s "$unit" /etc/systemd/system/multi-user.target.wants/pptp-alg.service
[ -L /etc/systemd/system/multi-user.target.wants/pptp-alg.service ] || fail "could not enable the unit"
# A newer version, built the same way from a copy with one more changelog
# entry; cargo's target/ is shared, so nothing is recompiled.
v2=${version}+upgradetest1
mkdir "$work/src"
tar -C "$root" --exclude=./target --exclude=./.git --exclude='./*.deb' \
    --exclude='./*.changes' --exclude='./*.buildinfo' \
    --exclude=./debian/pptp-alg --exclude=./debian/.debhelper -cf - . |
    tar -C "$work/src" -xpf -
{
    printf 'pptp-alg (%s) unstable; urgency=medium\n\n  * Upgrade test.\n\n' "$v2"
    printf ' -- pptp-alg tests <tests@example.org>  %s\n\n' "$(date -R)"
    cat "$root/debian/changelog"
} >"$work/src/debian/changelog.new"
mv "$work/src/debian/changelog.new" "$work/src/debian/changelog"
start=$(date +%s)
(cd "$work/src" && CARGO_TARGET_DIR="$root/target" make deb >"$work/build2.log" 2>&1) || {
    tail -n 50 "$work/build2.log"
    fail "make deb of $v2"
}
echo "built $v2 in $(($(date +%s) - start)) s"
deb2=$work/src/pptp-alg_${v2}_${arch}.deb
# </dev/null: a conffile prompt would read EOF and fail instead of hanging.
dpkg -i "$deb2" </dev/null
[ "$(dpkg-query -W -f='${Version}' pptp-alg)" = "$v2" ] || fail "not upgraded to $v2"
grep -q '^max_calls_per_host = 128$' "$conf" || fail "the upgrade replaced the modified $conf"
ls /etc/pptp-alg/*.dpkg-* 2>/dev/null && fail "unexpected .dpkg-* files"
pptp-alg rules print --backend nft-queue --config "$conf" >/dev/null || fail "config after upgrade"

step "upgrade to a version whose packaged config changed"
# The same package with one more line in its config, repacked: the admin's
# file is kept (apt's --force-confold) and the new one lands beside it.
v3=${version}+upgradetest2
dpkg-deb -R "$deb2" "$work/v3"
echo "# changed in $v3" >>"$work/v3/etc/pptp-alg/pptp-alg.toml"
sed -i "s/^Version: .*/Version: $v3/" "$work/v3/DEBIAN/control"
dpkg-deb --root-owner-group -b "$work/v3" "$work/v3.deb" >/dev/null
dpkg -i --force-confdef --force-confold "$work/v3.deb" </dev/null
grep -q '^max_calls_per_host = 128$' "$conf" || fail "confold replaced the modified $conf"
grep -q "^# changed in $v3" "$conf.dpkg-dist" || fail "no $conf.dpkg-dist with the new config"

step "dpkg -r keeps only the conffiles"
dpkg -r pptp-alg
[ "$(dpkg-query -W -f='${db:Status-Abbrev}' pptp-alg)" = "rc " ] || fail "not in config-files state"
dpkg-deb --fsys-tarfile "$deb" | tar -t | sed 's#^\./#/#' | while read -r path; do
    case "$path" in
    */ | /) continue ;; # directories: shared ones stay, ours are checked below
    "$conf") [ -f "$path" ] || fail "dpkg -r removed the conffile $path" ;;
    *) [ ! -e "$path" ] || fail "dpkg -r left $path" ;;
    esac
done
for dir in /usr/share/pptp-alg /usr/share/doc/pptp-alg; do
    [ ! -e "$dir" ] || fail "dpkg -r left $dir"
done
grep -q '^max_calls_per_host = 128$' "$conf" || fail "dpkg -r changed $conf"

step "dpkg -P removes the rest"
# As the unit leaves it after a stop (RuntimeDirectoryPreserve=yes).
mkdir -p /run/pptp-alg && echo '{}' >/run/pptp-alg/state.json
dpkg -P pptp-alg
[ ! -e /run/pptp-alg ] || fail "dpkg -P left /run/pptp-alg"
[ ! -e /etc/pptp-alg ] || fail "dpkg -P left $(ls -A /etc/pptp-alg)"
[ ! -e /etc/systemd/system/multi-user.target.wants/pptp-alg.service ] ||
    fail "dpkg -P left the admin's enable symlink"
if dpkg-query -W -f='${db:Status-Abbrev}' pptp-alg 2>/dev/null | grep -q '^[a-z]'; then
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' pptp-alg)
    [ "$status" = "un " ] || fail "dpkg status after purge: '$status'"
fi

step "ok"
