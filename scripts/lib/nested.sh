# scripts/lib/nested.sh: what scripts/nested-host and scripts/nested-storage share to boot the
# "nested test host" of shared/HOST-LIMITS.md: listing the libraries a carried binary needs,
# appending a payload archive to a kit initramfs, and running the kit's kernel under QEMU TCG.
# Sourced (bash), never run.
# shellcheck shell=bash

# nested_libs BINARY: the libraries ldd lists for BINARY, the dynamic loader included (the
# nested host has no libc of its own), one path a line.
nested_libs() {
    ldd "$1" | awk '/=>/ && $3 ~ /^\// { print $3 } /^\t\// { print $1 }'
}

# nested_initrd BASE OUT DIR FIND-ARGUMENT...: OUT = the kit archive BASE followed by an
# uncompressed newc archive of what `find FIND-ARGUMENTs` lists in DIR. The kernel unpacks
# concatenated archives, each starting on a 4-byte boundary (zero padding between them is
# skipped); a later archive's file replaces an earlier one of the same name.
nested_initrd() {
    local base=$1 out=$2 dir=$3
    shift 3
    cp "$base" "$out"
    truncate -s $(( ($(stat -c %s "$out") + 3) / 4 * 4 )) "$out"
    (cd "$dir" && find "$@" | cpio --quiet -o -H newc -R 0:0) >>"$out"
}

# nested_encoded NAME TEXT: NAME=base64(TEXT) for the kernel command line, nothing if TEXT is empty.
nested_encoded() {
    [ -z "$2" ] || printf '%s=%s' "$1" "$(printf '%s' "$2" | base64 -w0)"
}

# nested_boot SECONDS KERNEL APPEND [QEMU ARGUMENTS...]: replaces the shell with the kernel under
# QEMU TCG (-cpu max emulates AMD SVM), 1 GiB, one vCPU (a second does not help on 2 cores), its
# serial console on stdout, killed after SECONDS. The initrd is read from file descriptor 3: the
# caller opens it there and then removes its work directory, as exec skips EXIT traps.
nested_boot() {
    local seconds=$1 kernel=$2 append=$3
    shift 3
    exec timeout "$seconds" qemu-system-x86_64 -accel tcg -cpu max -m 1024 -smp 1 \
        -nodefaults -nographic -no-reboot -serial stdio -monitor none \
        -kernel "$kernel" -initrd /dev/fd/3 -append "$append" "$@"
}
