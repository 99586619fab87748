#!/bin/sh
# PID 1 of the VM that scripts/vm-test.sh boots: a stock Debian kernel and
# root file system with the pptp-alg package installed. Builds a lab of
# network namespaces and runs real PPTP stacks through the packaged daemon:
#
#   c1 10.0.0.2, c2 10.0.0.3   one pptp-linux call each to srv
#   c3 10.0.0.4                two calls on one control connection (the
#                              pptp-linux call manager) to srv: the first
#                              pings before the second starts (pptpd
#                              serves one call per control connection)
#   oc 203.0.113.2             outside client, calls pptpd on isrv 10.0.0.10
#                              behind the router's port forward
#   rtr                        masquerade, dnat tcp/1723, pptp-alg
#   srv 203.0.113.1            pptpd
#
# Every client's first call pings its server's end of the tunnel. Prints
# "PPTP-VM-TEST: PASS" or "PPTP-VM-TEST: FAIL <why>" and powers off.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

finish() {
    echo "PPTP-VM-TEST: $*"
    sync
    echo 1 >/proc/sys/kernel/sysrq
    echo o >/proc/sysrq-trigger
    sleep 10
}
fail() {
    echo "--- pptp-alg status"
    ip netns exec rtr pptp-alg status 2>&1 | head -40
    for f in /tmp/*.log; do
        echo "--- $f"
        tail -n 25 "$f"
    done
    finish "FAIL $*"
}

mount -t proc proc /proc 2>/dev/null
mount -t sysfs sys /sys 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /run /tmp
mount -t devpts -o ptmxmode=666 devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns /run/pptp /run/pptp-alg
echo "kernel $(uname -r); $(pptp-alg --version); $(dpkg-query -W -f='${Version}' pptp-alg)"

for m in veth bridge nf_tables nft_queue nfnetlink_queue nft_ct nft_nat nft_masq nft_chain_nat \
    nft_fib_ipv4 nf_conntrack ppp_generic ppp_async; do
    modprobe "$m" || fail "modprobe $m"
done

ns() { ip netns exec "$@"; }
for n in rtr srv isrv c1 c2 c3 oc; do
    ip netns add $n
    ns $n ip link set lo up
done

# Outside: srv and oc on a bridge with the router's wan.
ns rtr ip link add wan type bridge
ns rtr ip link add lan type bridge
ns rtr ip link set wan up
ns rtr ip link set lan up
ns rtr ip addr add 203.0.113.254/24 dev wan
ns rtr ip addr add 10.0.0.1/24 dev lan
link() { # link NS ADDR BRIDGE GW
    ns rtr ip link add "v-$1" type veth peer name eth0 netns "$1"
    ns rtr ip link set "v-$1" master "$3" up
    ns "$1" ip addr add "$2/24" dev eth0
    ns "$1" ip link set eth0 up
    [ -z "$4" ] || ns "$1" ip route add default via "$4"
}
link srv 203.0.113.1 wan ""
link oc 203.0.113.2 wan ""
link isrv 10.0.0.10 lan 10.0.0.1
link c1 10.0.0.2 lan 10.0.0.1
link c2 10.0.0.3 lan 10.0.0.1
link c3 10.0.0.4 lan 10.0.0.1
ns rtr sysctl -qw net.ipv4.ip_forward=1

ns rtr nft -f - <<'EOF' || fail "nat rules"
table ip nat {
  chain postrouting { type nat hook postrouting priority srcnat; oifname "wan" masquerade; }
  chain prerouting  { type nat hook prerouting priority dstnat; iifname "wan" tcp dport 1723 dnat to 10.0.0.10; }
}
EOF

# The packaged daemon, as its unit runs it (no systemd in this VM).
ns rtr pptp-alg run --install-rules --config /etc/pptp-alg/pptp-alg.toml >/tmp/pptp-alg.log 2>&1 &
i=0
until ns rtr pptp-alg status >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 50 ] || fail "pptp-alg did not start"
    sleep 0.2
done
ns rtr nft list table ip pptp_alg | grep -q 'queue' || fail "no queue rules"
echo "pptp-alg up, $(grep -o 'queue backend: .*' /tmp/pptp-alg.log | head -n1)"

# pptpd: no authentication, no compression (no MPPE): the test is about
# the NAT, not PPP.
server() { # server NS LOCALIP POOL
    cat >/tmp/pptpd-$1.conf <<EOF
option /tmp/pptpd-$1.options
localip $2
remoteip $3
EOF
    cat >/tmp/pptpd-$1.options <<EOF
name pptpd-$1
noauth
noccp
novj
nobsdcomp
nodeflate
nodefaultroute
mtu 1400
mru 1400
logfile /tmp/pppd-$1.log
EOF
    ns "$1" pptpd -f -c /tmp/pptpd-$1.conf -p /run/pptpd-$1.pid >/tmp/pptpd-$1.log 2>&1 &
}
server srv 192.168.99.1 192.168.99.10-60
server isrv 192.168.98.1 192.168.98.10-60
sleep 1

client() { # client NS SERVER NAME (pppd in the background)
    ns "$1" pppd pty "pptp $2 --nolaunchpppd --localbind $(ns "$1" ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)" \
        noauth noccp novj nobsdcomp nodeflate nodefaultroute mtu 1400 mru 1400 \
        ipparam "$3" linkname "$3" logfile "/tmp/pppd-$3.log" nodetach >/dev/null 2>&1 &
}
# A client's ppp link comes up and carries a ping to its server.
check() { # check NS LINKNAME SERVER_PPP_IP
    i=0
    while :; do
        ifname=$(sed -n 2p "/run/ppp-$2.pid" 2>/dev/null)
        [ -n "$ifname" ] && ns "$1" ip -4 addr show "$ifname" 2>/dev/null | grep -q inet && break
        i=$((i + 1))
        [ $i -lt 100 ] || fail "$2: no ppp link"
        sleep 0.3
    done
    ns "$1" ping -c 3 -W 2 -I "$ifname" "$3" >/tmp/ping-$2.log 2>&1 || fail "$2: ping $3 through $ifname"
    echo "$2: $ifname $(ns "$1" ip -4 -o addr show "$ifname" | awk '{print $4, $5, $6}'), ping $3 ok"
}

client c1 203.0.113.1 c1
client c2 203.0.113.1 c2
client c3 203.0.113.1 c3a
client oc 203.0.113.254 oc

check c1 c1 192.168.99.1
check c2 c2 192.168.99.1
# c3: a second call on the first one's control connection (pptp-linux's
# call manager), started once the first is up and has pinged: two pptp
# processes starting together race to launch the call manager. pptpd
# serves one call per control connection (pptpctrl): what becomes of the
# PPP links once the second call arrives differs from run to run (the first
# is hung up, or the second gets no LCP answer, or the connection closes),
# so the test asks only what is the daemon's: that it set up both calls on
# the one connection.
check c3 c3a 192.168.99.1
client c3 203.0.113.1 c3b
i=0
while :; do
    shared=$(grep -c 'call started: inside 10.0.0.4:.*(control 10.0.0.4:' /tmp/pptp-alg.log || true)
    [ "$shared" -lt 2 ] || break
    i=$((i + 1))
    [ $i -lt 100 ] || fail "c3: the second call was not set up"
    sleep 0.3
done
conns=$(grep -o 'call started: inside 10.0.0.4:.*(control 10.0.0.4:[0-9]*' /tmp/pptp-alg.log | sed 's/.*control //' | sort -u | wc -l)
[ "$conns" = 1 ] || fail "c3: its 2 calls on $conns control connections, not 1"
echo "c3: 2 calls set up on one control connection"
check oc oc 192.168.98.1

echo "--- pptp-alg status"
ns rtr pptp-alg status
created=$(ns rtr pptp-alg status --json | grep -o '"calls_created": *[0-9]*' | grep -o '[0-9]*$')
echo "calls the daemon set up: $created"
[ "$created" = 5 ] || fail "the daemon set up $created calls, not 5"
finish PASS
