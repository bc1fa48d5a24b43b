#!/bin/sh
# The migratable VMM's qemu-system-x86_64 (installed next to the `root` folder it runs from):
# trixie's QEMU and every library it needs, extracted, run under trixie's own dynamic loader,
# since their C library is newer than the host's; dlopen'ed modules (block-blkio) and the
# libraries they pull in are found through the same library path.
root=$(dirname "$0")/root
lib=$root/usr/lib/x86_64-linux-gnu
exec "$root/usr/lib64/ld-linux-x86-64.so.2" --library-path "$lib" "$root/usr/bin/qemu-system-x86_64" "$@"
