#!/usr/bin/env bash
# Prints the license notices of the crates linked into the pptp-alg binary
# (Cargo.lock's normal dependencies, without proc-macros, which run at
# compile time only), for the package's /usr/share/doc. The binary carries
# their code, and MIT-style licenses ask that their notices travel with it.
# Apache-2.0 texts are left out: Debian has them in
# /usr/share/common-licenses/Apache-2.0.
set -euo pipefail
cd "$(dirname "$0")/.."
registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"

echo "Crates linked into /usr/sbin/pptp-alg and their licenses."
echo "Apache-2.0: /usr/share/common-licenses/Apache-2.0."
cargo tree --locked --offline -e normal,no-proc-macro --prefix none \
    -f '{p}|{l}' |
    sed 's/ (\*)$//' | sort -u |
    while IFS='|' read -r pkg license; do
        name=${pkg%% *}
        version=${pkg#* v}
        version=${version%% *}
        [ "$name" = pptp-alg ] && continue
        printf '\n==== %s %s (%s) ====\n' "$name" "$version" "$license"
        dir=$(find "$registry" -mindepth 2 -maxdepth 2 -type d -name "$name-$version" | head -n1)
        if [ -z "$dir" ]; then
            echo "pptp-alg: no source of $name $version under $registry" >&2
            exit 1
        fi
        found=0
        for f in "$dir"/LICENSE* "$dir"/LICENCE* "$dir"/COPYING* "$dir"/UNLICENSE* "$dir"/NOTICE*; do
            [ -f "$f" ] || continue
            case "$(basename "$f")" in LICENSE-APACHE* | LICENSE.APACHE* | LICENSE-Apache*) continue ;; esac
            # A plain LICENSE that is the Apache text itself is left out too.
            grep -q 'Apache License' "$f" && grep -q 'Version 2.0, January 2004' "$f" && continue
            printf -- '-- %s\n' "$(basename "$f")"
            cat "$f"
            found=1
        done
        [ "$found" = 1 ] || echo "(no license file in the crate; license: $license)"
    done
