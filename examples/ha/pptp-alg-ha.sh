#!/bin/sh
# keepalived's notify hook of a pptp-alg router pair (README: High
# availability): conntrackd's primary-backup steps, as conntrack-tools'
# own primary-backup.sh documents them. pptp-alg needs no hook: it is
# active while this router holds its ha_address.
#
# Usage: pptp-alg-ha.sh primary|backup|fault|resync

CONNTRACKD="conntrackd -C /etc/conntrackd/conntrackd.conf"

step() {
    $CONNTRACKD "$@" || logger -t pptp-alg-ha "conntrackd $* failed"
}

case "$1" in
primary)
    # Commit the connections the peer replicated into the kernel, then
    # forget both caches, read the kernel's table again and send it all.
    step -c
    step -f
    step -R
    step -B
    ;;
backup)
    # Shorten the timers of connections this router no longer carries and
    # ask the master for its whole table.
    step -t
    step -n
    ;;
fault)
    step -t
    ;;
resync)
    # The sync link is back: ask the peer for its whole table and send
    # ours, whichever router is master.
    step -n
    step -B
    ;;
*)
    echo "usage: $0 primary|backup|fault|resync" >&2
    exit 1
    ;;
esac
exit 0
