# tiny: Vireo's minimal x86-64 test guest (GNU as, AT&T syntax).
#
# Built by scripts/guest-kit into tiny.elf (vmlinux-like ELF64, PVH note) and tiny.bzImage
# (the same program behind a Linux setup header, see bzsetup.s). Protocol and output lines:
# scripts/README.md, "tiny guests".
#
# Entry points (the image is linked at, and must be loaded at, physical 0x100000):
#   0x100000  entry32    Linux 32-bit boot protocol (protected mode, paging off, ESI = boot_params)
#   pvh_entry            PVH (XEN_ELFNOTE_PHYS32_ENTRY; protected mode, paging off, EBX = start_info)
#   0x100200  entry64    Linux 64-bit boot protocol (long mode, identity map, RSI = boot_params);
#                        the ELF entry point and bzImage load address + 0x200
# All of them build their own GDT, page tables (identity map of 0-4 GiB, 2 MiB pages) and
# stack, copy what they need from boot_params / start_info, and continue in `main`.
#
# Only plain instructions are used (the host's nested KVM emulates guest kernel code and lacks
# some instructions): no SSE, no xsave, no int3, no cmpxchg16b.

        .set COM1, 0x3f8
        .set SEL_CODE32, 0x08
        .set SEL_DATA, 0x10
        .set SEL_CODE64, 0x18
        .set TRAMP_ADDR, 0x8000         # AP real-mode trampoline (page-aligned, below 1 MiB)
        .set COUNTER_ADDR, 0x7000       # `counter` action's 64-bit counter
        .set MAX_E820, 128
        .set MAX_CPUS, 256
        .set CMDLINE_MAX, 2048
        .set MEM_TEST_START, 0x1000000  # 16 MiB
        .set PVH_MAGIC, 0x336ec578
        .set TSC_PER_MS, 2500000        # assumed TSC rate (the project's hosts: 2-3 GHz)
        # virtio over PCI
        .set PCI_CF8, 1                 # pci_mode: configuration space through 0xCF8/0xCFC,
        .set PCI_ECAM, 2                # through the MCFG's ECAM window,
        .set PCI_NONE, 3                # or not at all
        .set PCI_WINDOW, 0xc0000000     # unassigned BARs get addresses from here up ...
        .set PCI_WINDOW_END, 0xfec00000 # ... to the IOAPIC
        .set VIRTIO_VENDOR, 0x1af4
        .set VIRTIO_ID_NET, 1
        .set VIRTIO_ID_BLOCK, 2
        .set VIRTIO_ID_RNG, 4
        .set VIRTIO_ID_BALLOON, 5
        .set VIRTIO_ID_CONSOLE, 3
        .set VIRTIO_NET_F_MAC, 1 << 5
        .set VIRTIO_BLK_F_RO, 1 << 5
        .set VIRTIO_BLK_F_FLUSH, 1 << 9
        .set VIRTIO_BLK_T_IN, 0
        .set VIRTIO_BLK_T_OUT, 1
        .set VIRTIO_BLK_T_FLUSH, 4
        .set VIRTQ_DESC_F_NEXT, 1
        .set VIRTQ_DESC_F_WRITE, 2
        .set VQ_MAX, 16                 # queue size used (at most)
        .set VQ_TIMEOUT, 4000 * TSC_PER_MS  # ~4 s for a request to complete
        .set NET_HDR_LEN, 12            # struct virtio_net_hdr with VIRTIO_F_VERSION_1
        .set NET_RX_BUFS, 4
        .set NET_RX_STRIDE, 1536
        .set BALLOON_START, 0x4000000   # 64 MiB: the pages `balloon` gives away
        .set BALLOON_CHUNK, 1024        # PFNs per inflate buffer

# Print a literal string: PUTS "text\n" (clobbers the caller-saved registers).
.macro PUTS str
        .pushsection .rodata
.Lstr\@: .asciz "\str"
        .popsection
        lea .Lstr\@(%rip), %rdi
        call puts
.endm

# Identity-map 0-4 GiB with 2 MiB pages in pml4/pdpt/pds (which must be zero). The same
# instructions assemble in 32-bit and 64-bit code. Clobbers eax, ecx, edi.
.macro BUILD_TABLES
        mov $pds, %edi
        mov $0x83, %eax                 # present, writable, 2 MiB page
        xor %ecx, %ecx
1:      mov %eax, (%edi,%ecx,8)         # addresses stay below 4 GiB: high dword stays 0
        add $0x200000, %eax
        inc %ecx
        cmp $2048, %ecx
        jb 1b
        mov $(pds + 3), %eax
        mov %eax, pdpt
        add $4096, %eax
        mov %eax, pdpt + 8
        add $4096, %eax
        mov %eax, pdpt + 16
        add $4096, %eax
        mov %eax, pdpt + 24
        movl $(pdpt + 3), pml4
.endm

# =====================================================================================
# Entry points, at fixed offsets of the image.
        .section .head, "ax"
        .code32
        .globl entry32
entry32:                                # 32-bit boot protocol: ESI = boot_params
        cli
        cld
        mov $0x3f8, %dx                 # a newline at once: the first serial byte marks guest start
        mov $0x0a, %al
        out %al, %dx
        mov $far_bp64, %ebp
        jmp common32

        .globl pvh_entry
pvh_entry:                              # PVH: EBX = struct hvm_start_info
        cli
        cld
        mov $0x3f8, %dx                 # a newline at once: the first serial byte marks guest start
        mov $0x0a, %al
        out %al, %dx
        mov %ebx, %esi
        mov $far_pvh64, %ebp
        jmp common32

        .org 0x200
        .code64
        .globl entry64
entry64:                                # 64-bit boot protocol: RSI = boot_params
        cli
        cld
        mov $0x3f8, %dx                 # a newline at once: the first serial byte marks guest start
        mov $0x0a, %al
        out %al, %dx
        mov $_bss_start, %edi           # still on the VMM's page tables (identity map)
        mov $_bss_end, %ecx
        sub %edi, %ecx
        shr $3, %ecx
        xor %eax, %eax
        rep stosq
        BUILD_TABLES
        mov $stack_top, %esp
        lgdt gdt_ptr(%rip)
        call reload_segs64
        mov $pml4, %eax
        mov %rax, %cr3
        lea name_linux64(%rip), %rax
        mov %rax, boot_kind(%rip)
        jmp bp_common

# =====================================================================================
        .text
        .code32
# 32-bit entries: ESI = boot info, EBP = far pointer to the 64-bit continuation.
common32:
        lgdt gdt_ptr
        mov $SEL_DATA, %eax
        mov %eax, %ds
        mov %eax, %es
        mov %eax, %ss
        mov %eax, %fs
        mov %eax, %gs
        ljmp $SEL_CODE32, $1f
1:      mov $_bss_start, %edi
        mov $_bss_end, %ecx
        sub %edi, %ecx
        shr $2, %ecx
        xor %eax, %eax
        rep stosl
        BUILD_TABLES
        mov $stack_top, %esp
        # fall through
# Protected mode (flat segments, paging off) -> long mode on our page tables, then far
# jump through the m16:32 pointer at EBP. Used by the BSP's 32-bit entries and by APs.
pm32_long:
        mov %cr4, %eax
        or $0x20, %eax                  # PAE
        mov %eax, %cr4
        mov $pml4, %eax
        mov %eax, %cr3
        mov $0xc0000080, %ecx           # EFER
        rdmsr
        or $0x100, %eax                 # LME
        wrmsr
        mov %cr0, %eax
        and $0x9fffffff, %eax           # clear CD, NW (set after INIT)
        or $0x80000001, %eax            # PG, PE
        mov %eax, %cr0
        ljmp *(%ebp)

# AP trampoline: copied to TRAMP_ADDR, started by SIPI in real mode at CS:IP = 0x0800:0000.
        .code16
        .balign 16
tramp_start:
        cli
        cld
        mov %cs, %ax
        mov %ax, %ds
        lgdtl tramp_gdtp - tramp_start
        mov %cr0, %eax
        orl $1, %eax
        mov %eax, %cr0
        mov $SEL_DATA, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        movl $far_ap64, %ebp
        ljmpl $SEL_CODE32, $pm32_long
        .balign 8
tramp_gdtp:
        .word gdt_end - gdt - 1
        .long gdt
tramp_end:

        .code64
# AP in long mode: record the APIC ID, then halt for good.
ap64:
        mov $SEL_DATA, %eax
        mov %eax, %ds
        mov %eax, %es
        mov %eax, %ss
        mov lapic_base(%rip), %rbx
        mov 0x20(%rbx), %eax
        shr $24, %eax
        mov $1, %ecx
        lock xadd %ecx, ap_slot(%rip)
        cmp $MAX_CPUS, %ecx
        jae 1f
        lea ap_ids(%rip), %rdx
        mov %eax, (%rdx,%rcx,4)
1:      lock incl ap_done(%rip)
2:      cli
        hlt
        jmp 2b

# Continuations of the 32-bit entries.
bp64:
        mov $stack_top, %esp
        mov %esi, %esi
        lea name_linux32(%rip), %rax
        mov %rax, boot_kind(%rip)
        jmp bp_common
pvh64:
        mov $stack_top, %esp
        mov %esi, %esi
        lea name_pvh(%rip), %rax
        mov %rax, boot_kind(%rip)
        jmp pvh_common

# Load our data selectors and CS = SEL_CODE64 (returns through lretq).
reload_segs64:
        mov $SEL_DATA, %eax
        mov %eax, %ds
        mov %eax, %es
        mov %eax, %ss
        mov %eax, %fs
        mov %eax, %gs
        pop %rax
        push $SEL_CODE64
        push %rax
        lretq

# ---------------------------------------------------------------- boot info -> variables
# RSI = struct boot_params (zero page).
bp_common:
        mov %rsi, %rbx
        mov %rsi, bootinfo(%rip)
        mov 0x228(%rbx), %esi           # hdr.cmd_line_ptr
        mov 0x0c8(%rbx), %eax           # ext_cmd_line_ptr
        shl $32, %rax
        or %rax, %rsi
        call copy_cmdline
        movzbl 0x1e8(%rbx), %ecx        # e820_entries
        cmp $MAX_E820, %ecx
        jbe 1f
        mov $MAX_E820, %ecx
1:      mov %rcx, e820_n(%rip)
        lea 0x2d0(%rbx), %rsi           # e820_table: addr u64, size u64, type u32 (20 bytes)
        lea e820(%rip), %rdi
        jrcxz 3f
2:      mov (%rsi), %rax
        mov %rax, (%rdi)
        mov 8(%rsi), %rax
        mov %rax, 8(%rdi)
        mov 16(%rsi), %eax
        mov %eax, 16(%rdi)
        add $20, %rsi
        add $24, %rdi
        dec %ecx
        jnz 2b
3:      mov 0x070(%rbx), %rax           # acpi_rsdp_addr
        mov %rax, rsdp(%rip)
        jmp main

# RSI = struct hvm_start_info.
pvh_common:
        mov %rsi, %rbx
        mov %rsi, bootinfo(%rip)
        cmpl $PVH_MAGIC, (%rbx)
        je 1f
        PUTS "TINY: bad hvm_start_info magic\n"
        jmp main
1:      mov 24(%rbx), %rsi              # cmdline_paddr
        call copy_cmdline
        mov 32(%rbx), %rax              # rsdp_paddr
        mov %rax, rsdp(%rip)
        cmpl $1, 4(%rbx)                # memmap fields exist from version 1 on
        jb main
        mov 40(%rbx), %rsi              # memmap_paddr
        mov 48(%rbx), %ecx              # memmap_entries
        test %rsi, %rsi
        jz main
        cmp $MAX_E820, %ecx
        jbe 2f
        mov $MAX_E820, %ecx
2:      mov %rcx, e820_n(%rip)
        lea e820(%rip), %rdi
        shl $3, %ecx                    # 24-byte entries: addr, size, type, reserved
        lea (%rcx,%rcx,2), %ecx
        rep movsb
        jmp main

# RSI = NUL-terminated command line (0: none) -> cmdline buffer.
copy_cmdline:
        lea cmdline(%rip), %rdi
        test %rsi, %rsi
        jz 2f
        mov $CMDLINE_MAX - 1, %ecx
1:      mov (%rsi), %al
        test %al, %al
        jz 2f
        mov %al, (%rdi)
        inc %rsi
        inc %rdi
        dec %ecx
        jnz 1b
2:      movb $0, (%rdi)
        ret

# ---------------------------------------------------------------------------- main
main:
        mov $stack_top, %esp
        # Every entry wrote a newline first: it ends whatever firmware left on the serial line
        # (SeaBIOS does not end "Booting from ROM.." with one) and marks when the guest started.
        PUTS "TINY: boot entry="
        mov boot_kind(%rip), %rdi
        call puts
        PUTS "\nTINY: cmdline="
        lea cmdline(%rip), %rdi
        call puts
        PUTS "\nTINY: e820 ram_bytes="
        xor %edi, %edi
        mov e820_n(%rip), %rcx
        lea e820(%rip), %rsi
        jrcxz 2f
1:      cmpl $1, 16(%rsi)
        jne 3f
        add 8(%rsi), %rdi
3:      add $24, %rsi
        loop 1b
2:      call put_dec
        PUTS " entries="
        mov e820_n(%rip), %rdi
        call put_dec
        call newline

        call acpi_init

        lea key_test(%rip), %rdi
        call find_param
        test %rax, %rax
        jz .Lactions_done
        mov %rax, %r12                  # r12: current item, r13: its end
.Lnext_item:
        mov %r12, %r13
1:      movzbl (%r13), %eax
        test %eax, %eax
        jz 2f
        cmp $0x2c, %eax                 # ','
        je 2f
        cmp $0x20, %eax
        je 2f
        cmp $0x09, %eax
        je 2f
        inc %r13
        jmp 1b
2:      mov %r13, %rcx
        sub %r12, %rcx
        jz .Lafter_item
        lea actions(%rip), %rbx
3:      mov (%rbx), %rdi
        test %rdi, %rdi
        jz .Lunknown
        xor %edx, %edx
4:      cmp %rcx, %rdx
        je 5f
        movzbl (%rdi,%rdx), %eax
        cmp (%r12,%rdx), %al
        jne 6f
        inc %rdx
        jmp 4b
5:      cmpb $0, (%rdi,%rcx)
        jne 6f
        call *8(%rbx)                   # handlers preserve r12-r15
        jmp .Lafter_item
6:      add $16, %rbx
        jmp 3b
.Lunknown:
        PUTS "TINY: unknown action="
7:      movzbl (%r12), %eax
        call putc
        inc %r12
        cmp %r13, %r12
        jb 7b
        call newline
.Lafter_item:
        cmpb $0x2c, (%r13)
        jne .Lactions_done
        lea 1(%r13), %r12
        jmp .Lnext_item
.Lactions_done:
        PUTS "TINY: done\n"
halt_forever:
        cli
        hlt
        jmp halt_forever

# ---------------------------------------------------------------------------- output
# putc: AL to COM1. Waits (bounded) for THR empty; if the LSR never says so, stops asking.
putc:
        push %rdx
        push %rcx
        push %rax
        cmpb $0, lsr_broken(%rip)
        jne 2f
        mov $COM1 + 5, %edx
        mov $200000, %ecx
1:      in %dx, %al
        test $0x20, %al
        jnz 2f
        dec %ecx
        jnz 1b
        movb $1, lsr_broken(%rip)
2:      pop %rax
        mov $COM1, %edx
        out %al, %dx
        pop %rcx
        pop %rdx
        ret

newline:
        mov $0x0a, %eax
        jmp putc

# puts: RDI = NUL-terminated string.
puts:
1:      movzbl (%rdi), %eax
        test %eax, %eax
        jz 2f
        call putc
        inc %rdi
        jmp 1b
2:      ret

# put_dec / put_hex: RDI = value (hex without prefix, no leading zeros).
put_dec:
        mov %rdi, %rax
        mov $10, %ecx
        sub $32, %rsp
        lea 31(%rsp), %rsi
        movb $0, (%rsi)
1:      xor %edx, %edx
        div %rcx
        add $0x30, %dl
        dec %rsi
        mov %dl, (%rsi)
        test %rax, %rax
        jnz 1b
        mov %rsi, %rdi
        call puts
        add $32, %rsp
        ret

put_hex:
        mov %rdi, %rax
        lea hexdigits(%rip), %rcx
        sub $32, %rsp
        lea 31(%rsp), %rsi
        movb $0, (%rsi)
1:      mov %eax, %edx
        and $15, %edx
        movzbl (%rcx,%rdx), %edx
        dec %rsi
        mov %dl, (%rsi)
        shr $4, %rax
        jnz 1b
        mov %rsi, %rdi
        call puts
        add $32, %rsp
        ret

# ---------------------------------------------------------------------------- cmdline
# find_param: RDI = "key=" -> RAX = its value in cmdline (last occurrence at a word start), or 0.
find_param:
        lea cmdline(%rip), %rsi
        mov %rsi, %r8
        xor %eax, %eax
.Lfp_loop:
        cmpb $0, (%rsi)
        je .Lfp_done
        cmp %r8, %rsi
        je .Lfp_try
        movzbl -1(%rsi), %ecx
        cmp $0x20, %ecx
        je .Lfp_try
        cmp $0x09, %ecx
        jne .Lfp_next
.Lfp_try:
        xor %ecx, %ecx
1:      movzbl (%rdi,%rcx), %edx
        test %edx, %edx
        jz .Lfp_match
        cmp (%rsi,%rcx), %dl
        jne .Lfp_next
        inc %ecx
        jmp 1b
.Lfp_match:
        lea (%rsi,%rcx), %rax
.Lfp_next:
        inc %rsi
        jmp .Lfp_loop
.Lfp_done:
        ret

# param_uint: RDI = "key=", RSI = default -> RAX = the decimal value, or the default.
param_uint:
        push %rsi
        call find_param
        pop %rsi
        test %rax, %rax
        jz 3f
        mov %rax, %rdi
        xor %eax, %eax
        xor %ecx, %ecx
1:      movzbl (%rdi), %edx
        sub $0x30, %edx
        cmp $9, %edx
        ja 2f
        imul $10, %rax, %rax
        add %rdx, %rax
        inc %rdi
        inc %ecx
        jmp 1b
2:      test %ecx, %ecx
        jz 3f
        ret
3:      mov %rsi, %rax
        ret

# ---------------------------------------------------------------------------- time
# rdtsc_rax: RAX = TSC (clobbers RDX).
rdtsc_rax:
        rdtsc
        shl $32, %rdx
        or %rdx, %rax
        ret

# delay: RDI = TSC cycles to wait (the TSC runs at ~2-3 GHz on this project's hosts; under
# QEMU TCG it follows the host's). Returns early if the TSC stops advancing (1000 equal reads).
delay:
        push %rbx
        push %rbp
        push %r12
        mov %rdi, %rbx
        call rdtsc_rax
        mov %rax, %rcx                  # start
        mov %rax, %r12                  # previous read
        mov $1000, %ebp
1:      call rdtsc_rax
        cmp %r12, %rax
        jne 2f
        dec %ebp
        jz 3f
2:      mov %rax, %r12
        sub %rcx, %rax
        cmp %rbx, %rax
        jb 1b
3:      pop %r12
        pop %rbp
        pop %rbx
        ret

# ---------------------------------------------------------------------------- ACPI
acpi_init:
        mov $0xfee00000, %eax
        mov %rax, lapic_base(%rip)
        movq $5, s5_typ(%rip)
        mov rsdp(%rip), %rax
        test %rax, %rax
        jnz 1f
        call find_rsdp
        mov %rax, rsdp(%rip)
        test %rax, %rax
        jnz 1f
        PUTS "TINY: acpi none\n"
        ret
1:      mov %rax, %rbx                  # RSDP
        movzbl 15(%rbx), %eax           # revision
        cmp $2, %eax
        jb 2f
        mov 24(%rbx), %rsi              # XsdtAddress
        test %rsi, %rsi
        jz 2f
        mov $8, %ebp
        jmp 3f
2:      mov 16(%rbx), %esi              # RsdtAddress
        mov $4, %ebp
3:      test %rsi, %rsi
        jz .Lacpi_print
        mov 4(%rsi), %ecx               # length
        lea (%rsi,%rcx), %r14           # end
        lea 36(%rsi), %r15              # entries
.Lsdt_loop:
        lea (%r15,%rbp), %rax
        cmp %r14, %rax
        ja .Lsdt_done
        mov (%r15), %eax
        cmp $8, %ebp
        jne 4f
        mov (%r15), %rax
4:      add %rbp, %r15
        test %rax, %rax
        jz .Lsdt_loop
        mov (%rax), %ecx
        cmp $0x50434146, %ecx           # "FACP"
        jne 5f
        mov %rax, fadt(%rip)
        jmp .Lsdt_loop
5:      cmp $0x43495041, %ecx           # "APIC"
        jne 6f
        mov %rax, madt(%rip)
        jmp .Lsdt_loop
6:      cmp $0x4746434d, %ecx           # "MCFG": the first ECAM window (for virtio actions)
        jne .Lsdt_loop
        cmpl $60, 4(%rax)
        jb .Lsdt_loop
        cmpq $0, pci_ecam(%rip)
        jne .Lsdt_loop
        mov 44(%rax), %rcx              # base address (of bus 0)
        mov %rcx, pci_ecam(%rip)
        movzbl 55(%rax), %ecx           # end bus
        inc %ecx
        shl $20, %ecx
        mov %rcx, pci_ecam_size(%rip)
        jmp .Lsdt_loop
.Lsdt_done:
        mov fadt(%rip), %rbx
        test %rbx, %rbx
        jz .Lno_fadt
        mov 4(%rbx), %r14d              # FADT length
        mov 56(%rbx), %eax              # PM1a_EVT_BLK
        test %eax, %eax
        jnz 1f
        cmp $160, %r14d                 # X_PM1a_EVT_BLK (GAS at 148, address at 152)
        jb 1f
        cmpb $1, 148(%rbx)
        jne 1f
        mov 152(%rbx), %rax
1:      mov %rax, pm1a_evt(%rip)
        mov 64(%rbx), %eax              # PM1a_CNT_BLK
        test %eax, %eax
        jnz 1f
        cmp $184, %r14d                 # X_PM1a_CNT_BLK (GAS at 172, address at 176)
        jb 1f
        cmpb $1, 172(%rbx)
        jne 1f
        mov 176(%rbx), %rax
1:      mov %rax, pm1a_cnt(%rip)
        movzbl 88(%rbx), %eax           # PM1_EVT_LEN
        mov %rax, pm1_evt_len(%rip)
        mov 112(%rbx), %eax             # flags
        shr $20, %eax                   # HW_REDUCED_ACPI
        and $1, %eax
        mov %rax, hw_reduced(%rip)
        cmp $256, %r14d                 # SLEEP_CONTROL_REG (GAS at 244)
        jb 1f
        movzbl 244(%rbx), %eax
        mov %rax, sleep_ctl_space(%rip)
        mov 248(%rbx), %rax
        mov %rax, sleep_ctl_addr(%rip)
1:      mov 40(%rbx), %eax              # DSDT
        cmp $148, %r14d                 # X_DSDT at 140
        jb 1f
        mov 140(%rbx), %rcx
        test %rcx, %rcx
        jz 1f
        mov %rcx, %rax
1:      mov %rax, dsdt(%rip)
        test %rax, %rax
        jz .Lno_fadt
        call find_s5
.Lno_fadt:
        mov madt(%rip), %rbx
        test %rbx, %rbx
        jz .Lacpi_print
        mov 36(%rbx), %eax              # local APIC address
        test %eax, %eax
        jz 1f
        mov %rax, lapic_base(%rip)
1:      mov 4(%rbx), %r14d
        add %rbx, %r14                  # end
        lea 44(%rbx), %r15
        lea cpu_ids(%rip), %rdi
        xor %esi, %esi                  # count
.Lmadt_loop:
        lea 2(%r15), %rax
        cmp %r14, %rax
        ja .Lmadt_done
        movzbl (%r15), %eax             # type
        movzbl 1(%r15), %ecx            # length
        cmp $2, %ecx
        jb .Lmadt_done
        cmp $0, %eax                    # Processor Local APIC
        jne 2f
        testb $1, 4(%r15)
        jz 3f
        movzbl 3(%r15), %edx
        jmp 4f
2:      cmp $9, %eax                    # Processor Local x2APIC
        jne 3f
        testb $1, 8(%r15)
        jz 3f
        mov 4(%r15), %edx
4:      cmp $MAX_CPUS, %esi
        jae 3f
        mov %edx, (%rdi,%rsi,4)
        inc %esi
3:      add %rcx, %r15
        jmp .Lmadt_loop
.Lmadt_done:
        mov %rsi, ncpus(%rip)
.Lacpi_print:
        PUTS "TINY: acpi pm1a_evt=0x"
        mov pm1a_evt(%rip), %rdi
        call put_hex
        PUTS " pm1a_cnt=0x"
        mov pm1a_cnt(%rip), %rdi
        call put_hex
        PUTS " hw_reduced="
        mov hw_reduced(%rip), %rdi
        call put_dec
        PUTS " cpus="
        mov ncpus(%rip), %rdi
        call put_dec
        PUTS "\nTINY: acpi s5_slp_typ="
        mov s5_typ(%rip), %rdi
        call put_dec
        cmpb $0, s5_found(%rip)
        jne 1f
        PUTS " (default)"
1:      jmp newline

# find_rsdp -> RAX = "RSD PTR " with a valid checksum in the EBDA's first KiB or 0xE0000-0xFFFFF.
find_rsdp:
        movzwl 0x40e, %esi              # EBDA segment
        shl $4, %esi
        cmp $0x80000, %esi
        jb 1f
        cmp $0xa0000, %esi
        jae 1f
        lea 1024(%rsi), %rdi
        call scan_rsdp
        test %rax, %rax
        jnz 2f
1:      mov $0xe0000, %esi
        mov $0x100000, %edi
        call scan_rsdp
2:      ret

# scan_rsdp: RSI = start, RDI = end (16-byte steps) -> RAX = address or 0.
scan_rsdp:
        mov $0x2052545020445352, %r8    # "RSD PTR "
1:      cmp %rdi, %rsi
        jae 3f
        cmp %r8, (%rsi)
        jne 2f
        xor %eax, %eax                  # checksum of the first 20 bytes
        xor %ecx, %ecx
4:      add (%rsi,%rcx), %al
        inc %ecx
        cmp $20, %ecx
        jb 4b
        test %al, %al
        jnz 2f
        mov %rsi, %rax
        ret
2:      add $16, %rsi
        jmp 1b
3:      xor %eax, %eax
        ret

# find_s5: RAX = DSDT. Finds the AML `Name(_S5_, Package(){ typ, ...})` and stores typ in s5_typ.
find_s5:
        mov 4(%rax), %ecx
        lea -8(%rax,%rcx), %rdi         # last position with room for the encoding
        lea 36(%rax), %rsi
1:      cmp %rdi, %rsi
        jae 9f
        cmpl $0x5f35535f, (%rsi)        # "_S5_"
        jne 2f
        cmpb $0x12, 4(%rsi)             # PackageOp
        je 3f
2:      inc %rsi
        jmp 1b
3:      movzbl 5(%rsi), %ecx            # PkgLength lead byte: bits 7-6 = extra bytes
        shr $6, %ecx
        lea 7(%rsi,%rcx), %rsi          # skip "_S5_", PackageOp, PkgLength, NumElements
        movzbl (%rsi), %eax
        cmp $0x0a, %eax                 # BytePrefix
        je 4f
        cmp $0x0b, %eax                 # WordPrefix
        je 4f
        cmp $0x0c, %eax                 # DWordPrefix
        je 4f
        cmp $1, %eax                    # ZeroOp / OneOp
        ja 9f
        jmp 5f
4:      movzbl 1(%rsi), %eax
5:      and $7, %eax
        mov %rax, s5_typ(%rip)
        movb $1, s5_found(%rip)
9:      ret

# ---------------------------------------------------------------------------- actions
act_smp:
        push %rbx
        push %rbp
        push %r14
        push %r15
        mov lapic_base(%rip), %rbx
        mov 0xf0(%rbx), %eax            # spurious vector register: software-enable the APIC
        or $0x1ff, %eax
        mov %eax, 0xf0(%rbx)
        mov 0x20(%rbx), %eax
        shr $24, %eax
        mov %eax, bsp_id(%rip)
        lea tramp_start(%rip), %rsi
        mov $TRAMP_ADDR, %edi
        mov $tramp_end - tramp_start, %ecx
        rep movsb
        movl $0, ap_slot(%rip)
        movl $0, ap_done(%rip)
        mov $0x4500, %ebp               # INIT, level assert
        call ipi_all_aps
        mov %rax, %r15                  # number of APs
        mov $20000000, %edi             # ~10 ms
        call delay
        mov $0x4600 + (TRAMP_ADDR >> 12), %ebp  # STARTUP
        call ipi_all_aps
        mov $400000, %edi               # ~200 us
        call delay
        call ipi_all_aps                # second SIPI (ignored by APs already started)
        mov $5000, %r14d                # wait for the APs: up to 5000 x ~1 ms
1:      mov ap_done(%rip), %eax
        cmp %r15d, %eax
        jae 2f
        mov $2000000, %edi
        call delay
        dec %r14d
        jnz 1b
2:      mov ap_done(%rip), %ebp         # APs online
        cmp $MAX_CPUS - 1, %ebp
        jbe 3f
        mov $MAX_CPUS - 1, %ebp
3:      lea ap_ids(%rip), %rsi          # sort the AP IDs (insertion sort)
        mov $1, %ecx
4:      cmp %ebp, %ecx
        jae 7f
        mov (%rsi,%rcx,4), %eax
        mov %ecx, %edx
5:      test %edx, %edx
        jz 6f
        mov -4(%rsi,%rdx,4), %edi
        cmp %eax, %edi
        jbe 6f
        mov %edi, (%rsi,%rdx,4)
        dec %edx
        jmp 5b
6:      mov %eax, (%rsi,%rdx,4)
        inc %ecx
        jmp 4b
7:      PUTS "TINY: smp cpus="
        lea 1(%rbp), %rdi
        call put_dec
        PUTS " apic_ids="
        mov bsp_id(%rip), %edi
        call put_dec
        xor %ebx, %ebx
8:      cmp %ebp, %ebx
        jae 9f
        mov $0x2c, %eax
        call putc
        lea ap_ids(%rip), %rax
        mov (%rax,%rbx,4), %edi
        call put_dec
        inc %ebx
        jmp 8b
9:      call newline
        cmp %r15d, %ebp
        jae 10f
        PUTS "TINY: smp FAIL online="
        lea 1(%rbp), %rdi
        call put_dec
        PUTS " expected="
        lea 1(%r15), %rdi
        call put_dec
        call newline
10:     pop %r15
        pop %r14
        pop %rbp
        pop %rbx
        ret

# ipi_all_aps: EBP = ICR low; sent to every MADT CPU but the BSP. RBX = LAPIC base.
# Returns RAX = number of APs addressed.
ipi_all_aps:
        xor %r8d, %r8d
        xor %r9d, %r9d
        lea cpu_ids(%rip), %r10
1:      cmp ncpus(%rip), %r8
        jae 4f
        mov (%r10,%r8,4), %eax
        inc %r8
        cmp bsp_id(%rip), %eax
        je 1b
        cmp $0xff, %eax                 # xAPIC can address 0-254 only
        jae 1b
        inc %r9
        shl $24, %eax
        mov %eax, 0x310(%rbx)           # ICR high: destination
        mov %ebp, 0x300(%rbx)           # ICR low: send
        mov $1000, %ecx
2:      testl $0x1000, 0x300(%rbx)      # delivery status
        jz 1b
        dec %ecx
        jnz 2b
        jmp 1b
4:      mov %r9, %rax
        ret

act_mem:
        push %rbx
        push %rbp
        lea key_mem_mib(%rip), %rdi
        mov $16, %esi
        call param_uint
        mov %rax, %rbp                  # N MiB
        cmp $4096, %rax
        ja .Lmem_not_mapped
        test %rax, %rax
        jz .Lmem_ok
        mov $MEM_TEST_START, %ebx
        mov %rax, %rcx
        shl $20, %rcx
        add %rbx, %rcx                  # end
        mov $0x100000000, %rax
        cmp %rax, %rcx
        ja .Lmem_not_mapped
        mov %rbx, %rdi                  # every byte in [start, end) must be e820 RAM
        mov %rcx, %rsi
        call e820_covers
        test %rax, %rax
        jz 2f
        mov %rdx, %rbx
        PUTS "TINY: mem FAIL addr=0x"
        mov %rbx, %rdi
        call put_hex
        PUTS " not-ram\n"
        jmp 9f
2:      mov %rbp, %rcx                  # write: 64-bit pattern = address + K, every 64 bytes
        shl $20, %rcx
        add %rbx, %rcx
        mov $0x5a5a5a5a00000000, %r8
        mov %rbx, %rax
3:      lea (%rax,%r8), %rdx
        mov %rdx, (%rax)
        lea 64(%rax,%r8), %rdx
        mov %rdx, 64(%rax)
        lea 128(%rax,%r8), %rdx
        mov %rdx, 128(%rax)
        lea 192(%rax,%r8), %rdx
        mov %rdx, 192(%rax)
        add $256, %rax
        cmp %rcx, %rax
        jb 3b
        mov %rbx, %rax                  # verify
4:      lea (%rax,%r8), %rdx
        cmp %rdx, (%rax)
        jne 5f
        lea 64(%rax,%r8), %rdx
        cmp %rdx, 64(%rax)
        jne 5f
        lea 128(%rax,%r8), %rdx
        cmp %rdx, 128(%rax)
        jne 5f
        lea 192(%rax,%r8), %rdx
        cmp %rdx, 192(%rax)
        jne 5f
        add $256, %rax
        cmp %rcx, %rax
        jb 4b
.Lmem_ok:
        PUTS "TINY: mem ok mib="
        mov %rbp, %rdi
        call put_dec
        call newline
        jmp 9f
5:      lea (%rax,%r8), %rdx            # find the line within the 256-byte block
        cmp %rdx, (%rax)
        jne 6f
        add $64, %rax
        jmp 5b
6:      mov %rax, %rbx
        PUTS "TINY: mem FAIL addr=0x"
        mov %rbx, %rdi
        call put_hex
        call newline
        jmp 9f
.Lmem_not_mapped:
        PUTS "TINY: mem FAIL addr=0x100000000 not-mapped\n"
9:      pop %rbp
        pop %rbx
        ret

# e820_covers: [RDI, RSI) -> RAX = 0 if all of it is type-1 RAM, else RAX = 1, RDX = first
# address that is not.
e820_covers:
1:      cmp %rsi, %rdi
        jae 4f
        mov e820_n(%rip), %rcx
        lea e820(%rip), %r8
        jrcxz 3f
2:      cmpl $1, 16(%r8)
        jne 5f
        mov (%r8), %rax
        cmp %rax, %rdi
        jb 5f
        add 8(%r8), %rax
        cmp %rax, %rdi
        jae 5f
        mov %rax, %rdi                  # covered up to the entry's end
        jmp 1b
5:      add $24, %r8
        loop 2b
3:      mov %rdi, %rdx
        mov $1, %eax
        ret
4:      xor %eax, %eax
        ret

act_reset:
        PUTS "TINY: reset\n"
        mov $0xfe, %al
        out %al, $0x64
        mov $2000000000, %edi           # ~1 s
        call delay
        PUTS "TINY: reset FAIL\n"
        jmp halt_forever

act_poweroff:
        PUTS "TINY: poweroff\n"
        call acpi_s5
        mov $2000000000, %edi
        call delay
        PUTS "TINY: poweroff FAIL\n"
        jmp halt_forever

# acpi_s5: enter S5 with the DSDT's _S5_ SLP_TYP (PM1a_CNT, or the hw-reduced SLEEP_CONTROL_REG).
acpi_s5:
        mov s5_typ(%rip), %rax
        cmpq $0, hw_reduced(%rip)
        jne 1f
        mov pm1a_cnt(%rip), %rdx
        test %rdx, %rdx
        jz 9f
        shl $10, %eax
        or $0x2000, %eax                # SLP_EN
        out %ax, %dx
        ret
1:      mov sleep_ctl_addr(%rip), %rdx
        test %rdx, %rdx
        jz 9f
        shl $2, %eax
        or $0x20, %eax                  # SLP_EN
        cmpq $1, sleep_ctl_space(%rip)  # system I/O
        jne 2f
        out %al, %dx
        ret
2:      cmpq $0, sleep_ctl_space(%rip)  # system memory
        jne 9f
        mov %al, (%rdx)
9:      ret

act_wait_shutdown:
        PUTS "TINY: waiting for shutdown request\n"
        cmpq $0, hw_reduced(%rip)
        jne 1f
        mov pm1a_evt(%rip), %rdx
        test %rdx, %rdx
        jnz 2f
1:      PUTS "TINY: wait-shutdown unsupported\n"
        jmp halt_forever
2:      mov pm1_evt_len(%rip), %rax     # PM1a_EN = PM1a_EVT_BLK + PM1_EVT_LEN / 2
        shr $1, %eax
        jnz 3f
        mov $2, %eax
3:      add %rax, %rdx
        in %dx, %ax
        or $0x100, %eax                 # PWRBTN_EN (QEMU sets PWRBTN_STS only when enabled)
        out %ax, %dx
4:      mov pm1a_evt(%rip), %rdx
        in %dx, %ax
        test $0x100, %eax               # PWRBTN_STS
        jnz 5f
        mov $2000000, %edi              # ~1 ms between reads
        call delay
        jmp 4b
5:      mov $0x100, %eax                # write 1 to clear
        out %ax, %dx
        PUTS "TINY: shutdown request\n"
        jmp act_poweroff

act_triple_fault:
        PUTS "TINY: triple-fault\n"
        lidt idt_null(%rip)
        ud2
        jmp halt_forever

# io-hostile: what a hostile guest can throw at the VMM's port and MMIO handlers: every port of
# 0x000-0xfff written with pseudo-random bytes, words and dwords, then read back at each width,
# and pseudo-random MMIO writes and reads across the 32-bit hole outside the LAPIC and IOAPIC.
# The two ports that end the VM on purpose are spared (0x64 reset, 0x604-0x605 ACPI sleep).
act_io_hostile:
        PUTS "TINY: io-hostile\n"
        push %rbx
        mov $0x2545f491, %ebx           # LCG state
        xor %ecx, %ecx                  # port
1:      cmp $0x64, %ecx
        je 2f
        cmp $0x3f8, %ecx                # COM1's own output would flood the console
        jb 3f
        cmp $0x3ff, %ecx
        jbe 2f
3:      cmp $0x604, %ecx
        je 2f
        cmp $0x605, %ecx
        je 2f
        imul $1103515245, %ebx, %ebx
        add $12345, %ebx
        mov %ecx, %edx
        mov %ebx, %eax
        out %al, %dx
        out %ax, %dx
        out %eax, %dx
        in %dx, %al
        in %dx, %ax
        in %dx, %eax
2:      inc %ecx
        cmp $0x1000, %ecx
        jb 1b
        # MMIO: 256 pseudo-random addresses in 0xc0000000-0xfebfffff (below the IOAPIC).
        mov $256, %ecx
4:      imul $1103515245, %ebx, %ebx
        add $12345, %ebx
        mov %ebx, %eax
        and $0x3ebffff8, %eax
        add $0xc0000000, %eax
        mov %ebx, (%rax)
        mov (%rax), %edx
        dec %ecx
        jnz 4b
        pop %rbx
        PUTS "TINY: io-hostile done\n"
        ret

# emulation-failure: an instruction this host's paravirtual KVM cannot emulate in guest kernel
# mode (HOST-LIMITS: cmpxchg16b), so the VMM must report KVM_EXIT_INTERNAL_ERROR as a crash.
# On hardware KVM it simply runs, and the guest says so.
act_emulation_failure:
        PUTS "TINY: emulation-failure\n"
        sub $32, %rsp
        and $-16, %rsp
        xor %eax, %eax
        xor %edx, %edx
        xor %ebx, %ebx
        xor %ecx, %ecx
        cmpxchg16b (%rsp)
        PUTS "TINY: emulation-failure did not fail\n"
        jmp halt_forever

act_counter:
        lea key_count_shift(%rip), %rdi
        mov $16, %esi
        call param_uint
        cmp $63, %rax
        jbe 1f
        mov $63, %eax
1:      mov %eax, %ecx
        mov $1, %ebx
        shl %cl, %rbx
        dec %rbx                        # mask
        mov $COUNTER_ADDR, %ebp
        movq $0, (%rbp)
2:      mov (%rbp), %rax
        inc %rax
        mov %rax, (%rbp)
        test %rbx, %rax
        jnz 2b
        PUTS "TINY: count="
        mov (%rbp), %rdi
        call put_dec
        call newline
        jmp 2b

# dirty: live migration's workload. Writes guest memory at a fixed rate and checks it.
# tiny.dirty_mib=N: the region, from MEM_TEST_START (default 16, at most 3000);
# tiny.dirty_rate=R: MiB written per second (default 32, paced by the TSC);
# tiny.count_shift=S: print "TINY: count=<pages written>" every 2^S pages (default 10).
# First every page's first word gets its index (pass 0); then page after page is rewritten with
# (pass << 32 | index), each time checking the word still holds what the last pass wrote, so a
# page a migration lost or left stale shows as "TINY: dirty FAIL page=<index> found=<hex>".
act_dirty:
        push %rbx
        push %rbp
        push %r12
        push %r13
        push %r14
        push %r15
        sub $16, %rsp                   # 0: next tick's TSC, 8: pages left in this tick
        lea key_dirty_mib(%rip), %rdi
        mov $16, %esi
        call param_uint
        test %rax, %rax
        jz .Ldirty_bad
        cmp $3000, %rax
        ja .Ldirty_bad
        shl $8, %rax
        mov %rax, %r12                  # r12: pages in the region
        lea key_dirty_rate(%rip), %rdi
        mov $32, %esi
        call param_uint
        shl $8, %rax                    # pages per second
        xor %edx, %edx
        mov $1000, %ecx
        div %rcx
        test %rax, %rax
        jnz 1f
        mov $1, %eax
1:      mov %rax, %r13                  # r13: pages per millisecond
        lea key_count_shift(%rip), %rdi
        mov $10, %esi
        call param_uint
        cmp $63, %rax
        jbe 1f
        mov $63, %eax
1:      mov %eax, %ecx
        mov $1, %r14d
        shl %cl, %r14
        dec %r14                        # r14: print mask
        xor %ebx, %ebx                  # pass 0: each page's index
2:      mov %rbx, %rax
        shl $12, %rax
        add $MEM_TEST_START, %rax
        mov %rbx, (%rax)
        inc %rbx
        cmp %r12, %rbx
        jb 2b
        PUTS "TINY: dirty filled\n"
        xor %ebx, %ebx                  # rbx: page index
        mov $1, %ebp                    # rbp: pass
        xor %r15d, %r15d                # r15: pages written
        call rdtsc_rax
        mov %rax, (%rsp)
.Ldirty_tick:
        mov %r13, 8(%rsp)
.Ldirty_page:
        mov %rbx, %rdi
        shl $12, %rdi
        add $MEM_TEST_START, %rdi
        lea -1(%rbp), %rax
        shl $32, %rax
        or %rbx, %rax                   # what the last pass wrote
        mov (%rdi), %rdx
        cmp %rax, %rdx
        jne .Ldirty_fail
        mov %rbp, %rax
        shl $32, %rax
        or %rbx, %rax
        mov %rax, (%rdi)
        inc %r15
        mov $COUNTER_ADDR, %eax
        mov %r15, (%rax)
        test %r14, %r15
        jnz 3f
        PUTS "TINY: count="
        mov %r15, %rdi
        call put_dec
        call newline
3:      inc %rbx
        cmp %r12, %rbx
        jb 4f
        xor %ebx, %ebx
        inc %rbp
4:      decq 8(%rsp)
        jnz .Ldirty_page
        addq $TSC_PER_MS, (%rsp)        # the next tick; after a long stop (a migration's
5:      call rdtsc_rax                  # downtime) start again from now, without a burst
        mov %rax, %rcx
        sub (%rsp), %rcx
        js 6f
        cmp $100 * TSC_PER_MS, %rcx
        jb .Ldirty_tick
        mov %rax, (%rsp)
        jmp .Ldirty_tick
6:      pause
        jmp 5b
.Ldirty_fail:
        mov %rdx, %r13
        PUTS "TINY: dirty FAIL page="
        mov %rbx, %rdi
        call put_dec
        PUTS " found="
        mov %r13, %rdi
        call put_hex
        call newline
        jmp halt_forever
.Ldirty_bad:
        PUTS "TINY: dirty FAIL dirty_mib must be 1-3000\n"
        add $16, %rsp
        pop %r15
        pop %r14
        pop %r13
        pop %r12
        pop %rbp
        pop %rbx
        ret

# =====================================================================================
# virtio 1.x ("modern") over PCI, polled: no interrupts (every MSI-X vector stays
# VIRTIO_MSI_NO_VECTOR), split virtqueues of at most VQ_MAX entries, one request in flight.
# PCI configuration space through ports 0xCF8/0xCFC; if they do not answer, through the ECAM
# window the ACPI MCFG names (QEMU microvm,pcie=on has no 0xCF8).
#
# The driver keeps the state of one device at a time (vdev_*, vio_*, vq_*): each action probes
# and resets its device again. Functions return RAX = 0 on success or a reason string (printed
# as `TINY: <device> FAIL <reason>`).

# pci_read32: EDI = configuration address as for 0xCF8, without the enable bit (bus << 16 |
# device << 11 | function << 8 | register) -> EAX. Clobbers RCX, RDX.
pci_read32:
        cmpq $PCI_ECAM, pci_mode(%rip)
        je 1f
        mov %edi, %eax
        and $0xfffffc, %eax
        or $0x80000000, %eax
        mov $0xcf8, %edx
        out %eax, %dx
        add $4, %edx
        in %dx, %eax
        ret
1:      call ecam_addr
        mov (%rax), %eax
        ret

# pci_write32: EDI = address (as pci_read32), ESI = value. Clobbers RAX, RCX, RDX.
pci_write32:
        cmpq $PCI_ECAM, pci_mode(%rip)
        je 1f
        mov %edi, %eax
        and $0xfffffc, %eax
        or $0x80000000, %eax
        mov $0xcf8, %edx
        out %eax, %dx
        add $4, %edx
        mov %esi, %eax
        out %eax, %dx
        ret
1:      call ecam_addr
        mov %esi, (%rax)
        ret

# ecam_addr: EDI = address as for 0xCF8 -> RAX = its ECAM address. Clobbers RCX.
ecam_addr:
        mov %edi, %eax
        and $0xffff00, %eax             # bus, device, function
        shl $4, %eax
        mov %edi, %ecx
        and $0xfc, %ecx
        or %ecx, %eax
        add pci_ecam(%rip), %rax
        ret

# pci_init (once): how configuration space is reached, and where unassigned BARs go.
pci_init:
        cmpq $0, pci_mode(%rip)
        jne 9f
        mov $0xcf8, %edx                # type 1: CONFIG_ADDRESS reads back what was written
        mov $0x80000000, %eax
        out %eax, %dx
        in %dx, %eax
        cmp $0x80000000, %eax
        jne 1f
        movq $PCI_CF8, pci_mode(%rip)
        jmp 2f
1:      movq $PCI_NONE, pci_mode(%rip)
        cmpq $0, pci_ecam(%rip)
        jne 3f
        call find_cba
        cmpq $0, pci_ecam(%rip)
        je 9f
3:
        movq $PCI_ECAM, pci_mode(%rip)
2:      lea key_pci_mmio_mib(%rip), %rdi
        mov $PCI_WINDOW >> 20, %esi
        call param_uint
        shl $20, %rax
        mov %rax, pci_next(%rip)
9:      ret

# find_cba: no MCFG (QEMU microvm): the ECAM base from the DSDT's `Name(_CBA, <integer>)` or
# `Method(_CBA) { Return(<integer>) }` (the PCI host bridge's), taken to cover buses 0-255.
find_cba:
        mov dsdt(%rip), %rax
        test %rax, %rax
        jz 9f
        mov 4(%rax), %ecx
        lea -14(%rax,%rcx), %rdi        # last position with room for the encoding
        lea 38(%rax), %rsi
1:      cmp %rdi, %rsi
        jae 9f
        cmpl $0x4142435f, (%rsi)        # "_CBA"
        jne 2f
        lea 4(%rsi), %rdx               # Name(_CBA, integer)
        cmpb $0x08, -1(%rsi)            # NameOp
        je 5f
        cmpb $0x14, -2(%rsi)            # MethodOp, 1-byte PkgLength, flags, ReturnOp
        jne 2f
        cmpb $0xa4, 5(%rsi)
        jne 2f
        lea 6(%rsi), %rdx
5:      movzbl (%rdx), %eax
        cmp $0x0e, %eax                 # QWordPrefix
        jne 3f
        mov 1(%rdx), %rax
        jmp 4f
3:      cmp $0x0c, %eax                 # DWordPrefix
        jne 2f
        mov 1(%rdx), %eax
4:      mov %rax, pci_ecam(%rip)
        movq $256 << 20, pci_ecam_size(%rip)
        ret
2:      inc %rsi
        jmp 1b
9:      ret

# pci_find_virtio: EDI = virtio device type -> RAX = configuration address of the first
# function 0 on bus 0 with vendor 0x1af4 and device 0x1040 + type (or a transitional
# 0x1000-0x103f whose subsystem id is the type), or -1.
pci_find_virtio:
        push %rbx
        push %rbp
        mov %edi, %ebp
        xor %ebx, %ebx                  # device number << 11
1:      mov %ebx, %edi
        call pci_read32
        cmp $VIRTIO_VENDOR, %ax
        jne 3f
        shr $16, %eax
        lea 0x1040(%rbp), %ecx
        cmp %ecx, %eax
        je 4f
        cmp $0x1000, %eax
        jb 3f
        cmp $0x103f, %eax
        ja 3f
        lea 0x2c(%rbx), %edi            # subsystem vendor / id
        call pci_read32
        shr $16, %eax
        cmp %ebp, %eax
        je 4f
3:      add $1 << 11, %ebx
        cmp $32 << 11, %ebx
        jb 1b
        mov $-1, %rax
        jmp 5f
4:      mov %rbx, %rax
5:      pop %rbp
        pop %rbx
        ret

# pci_command: EDI = bits to set, ESI = bits to keep (of the device's command register).
pci_command:
        push %rbx
        push %rbp
        mov %edi, %ebx
        mov %esi, %ebp
        mov vdev_cfg(%rip), %rdi
        add $4, %edi
        call pci_read32
        and %ebp, %eax                  # status (high half) written as 0: its bits are RW1C
        or %ebx, %eax
        movzwl %ax, %esi
        mov vdev_cfg(%rip), %rdi
        add $4, %edi
        call pci_write32
        pop %rbp
        pop %rbx
        ret

# bar_addr: EDI = BAR index of the device at vdev_cfg -> RAX = its memory address, or 0 (I/O
# BAR, no such BAR, no room). A BAR that reads 0 or lies above 4 GiB (not mapped here) gets an
# address from pci_next, aligned to its size (memory decoding is off meanwhile).
bar_addr:
        push %rbx
        push %rbp
        push %r12
        push %r13
        xor %eax, %eax
        cmp $5, %edi
        ja 9f
        mov vdev_cfg(%rip), %rbp
        lea 0x10(%rbp,%rdi,4), %ebp     # the BAR's register
        mov %ebp, %edi
        call pci_read32
        test $1, %al                    # I/O space
        jnz 8f
        mov %eax, %r12d
        xor %r13d, %r13d                # high dword
        xor %ebx, %ebx                  # 64-bit?
        and $6, %eax
        cmp $4, %eax
        jne 1f
        mov $1, %ebx
        lea 4(%rbp), %edi
        call pci_read32
        mov %eax, %r13d
1:      test %r13d, %r13d
        jnz 2f
        mov %r12d, %eax
        and $-16, %eax
        jnz 9f                          # assigned below 4 GiB
2:      xor %edi, %edi                  # memory decoding off while sizing
        mov $0xfffd, %esi
        call pci_command
        mov %ebp, %edi
        mov $-1, %esi
        call pci_write32
        mov %ebp, %edi
        call pci_read32
        and $-16, %eax
        neg %eax                        # size; 0: not implemented, or 4 GiB or more
        jz 8f
        mov %eax, %ecx
        mov pci_next(%rip), %rax
        lea -1(%rax,%rcx), %rax
        mov %rcx, %rdx
        neg %rdx
        and %rdx, %rax                  # aligned to the size
        mov pci_ecam(%rip), %rdx        # not over the ECAM window
        test %rdx, %rdx
        jz 3f
        lea (%rax,%rcx), %r8
        cmp %rdx, %r8
        jbe 3f
        add pci_ecam_size(%rip), %rdx
        cmp %rdx, %rax
        jae 3f
        lea -1(%rdx,%rcx), %rax
        mov %rcx, %rdx
        neg %rdx
        and %rdx, %rax
3:      lea (%rax,%rcx), %rdx
        mov $PCI_WINDOW_END, %r8d
        cmp %r8, %rdx
        ja 8f
        mov %rdx, pci_next(%rip)
        mov %rax, %r12
        mov %ebp, %edi
        mov %eax, %esi
        call pci_write32
        test %ebx, %ebx
        jz 4f
        lea 4(%rbp), %edi
        xor %esi, %esi
        call pci_write32
4:      mov %r12, %rax
        jmp 9f
8:      xor %eax, %eax
9:      pop %r13
        pop %r12
        pop %rbp
        pop %rbx
        ret

# vio_probe: EDI = virtio device type. Finds the device, reads its virtio capabilities (the
# first of each cfg_type: common, notify, ISR, device) and MSI-X, gives BARs addresses if
# needed, and enables memory decoding and bus mastering.
vio_probe:
        push %rbx
        push %rbp
        push %r12
        push %r13
        push %r14
        push %r15
        mov %edi, %ebx
        call pci_init
        lea s_not_found(%rip), %rax
        cmpq $PCI_NONE, pci_mode(%rip)
        je 9f
        mov %ebx, %edi
        call pci_find_virtio
        cmp $-1, %rax
        jne 1f
        lea s_not_found(%rip), %rax
        jmp 9f
1:      mov %rax, %rbx
        mov %rax, vdev_cfg(%rip)
        xor %eax, %eax
        mov %rax, vio_common(%rip)
        mov %rax, vio_notify(%rip)
        mov %rax, vio_isr(%rip)
        mov %rax, vio_devcfg(%rip)
        mov %rax, vio_notify_mul(%rip)
        mov %rax, vio_msix(%rip)
        lea 4(%rbx), %edi
        call pci_read32
        test $0x100000, %eax            # status: capabilities list
        jz .Lprobe_caps
        lea 0x34(%rbx), %edi
        call pci_read32
        movzbl %al, %ebp
        mov $48, %r12d                  # bound: a looping list ends too
.Lcap_loop:
        and $0xfc, %ebp
        jz .Lprobe_caps
        dec %r12d
        jz .Lprobe_caps
        lea (%rbx,%rbp), %edi
        call pci_read32                 # id, next, cap_len, cfg_type
        mov %eax, %r13d
        cmp $0x11, %al                  # MSI-X
        jne 1f
        movq $1, vio_msix(%rip)
        jmp .Lcap_next
1:      cmp $0x09, %al                  # vendor-specific: struct virtio_pci_cap
        jne .Lcap_next
        mov %r13d, %r14d
        shr $24, %r14d
        dec %r14d                       # cfg_type 1 common, 2 notify, 3 ISR, 4 device -> 0-3
        cmp $3, %r14d
        ja .Lcap_next
        cmpq $0, vio_caps(,%r14,8)
        jne .Lcap_next
        lea 4(%rbx,%rbp), %edi
        call pci_read32
        movzbl %al, %edi                # bar
        call bar_addr
        test %rax, %rax
        jnz 2f
        lea s_bar(%rip), %rax
        jmp 9f
2:      mov %rax, %r15
        lea 8(%rbx,%rbp), %edi          # offset
        call pci_read32
        add %rax, %r15
        mov %r15, vio_caps(,%r14,8)
        cmp $1, %r14d
        jne .Lcap_next
        lea 16(%rbx,%rbp), %edi         # notify_off_multiplier
        call pci_read32
        mov %rax, vio_notify_mul(%rip)
.Lcap_next:
        mov %r13d, %ebp
        shr $8, %ebp
        and $0xff, %ebp
        jmp .Lcap_loop
.Lprobe_caps:
        lea s_no_caps(%rip), %rax
        cmpq $0, vio_common(%rip)
        je 9f
        cmpq $0, vio_notify(%rip)
        je 9f
        mov $6, %edi                    # memory space, bus master
        mov $0xffff, %esi
        call pci_command
        xor %eax, %eax
9:      pop %r15
        pop %r14
        pop %r13
        pop %r12
        pop %rbp
        pop %rbx
        ret

# vio_start: EDI = the feature bits 0-31 the driver can use. Reset, ACKNOWLEDGE, DRIVER,
# features (VIRTIO_F_VERSION_1 required, plus the device's offer & EDI -> vio_feat), FEATURES_OK.
vio_start:
        push %rbx
        push %rbp
        mov %edi, %ebp
        mov vio_common(%rip), %rbx
        movb $0, 0x14(%rbx)             # device_status = 0: reset
        mov $100000, %ecx
1:      cmpb $0, 0x14(%rbx)
        je 2f
        dec %ecx
        jnz 1b
        lea s_reset(%rip), %rax
        jmp 9f
2:      movb $1, 0x14(%rbx)             # ACKNOWLEDGE
        movb $3, 0x14(%rbx)             # DRIVER
        movl $1, 0x00(%rbx)             # device_feature_select: bits 32-63
        mov 0x04(%rbx), %eax
        test $1, %eax                   # VIRTIO_F_VERSION_1
        jnz 3f
        lea s_no_version_1(%rip), %rax
        jmp 8f
3:      movl $0, 0x00(%rbx)
        mov 0x04(%rbx), %eax
        and %ebp, %eax
        mov %rax, vio_feat(%rip)
        movl $0, 0x08(%rbx)             # driver_feature_select / driver_feature
        mov %eax, 0x0c(%rbx)
        movl $1, 0x08(%rbx)
        movl $1, 0x0c(%rbx)
        movb $0x0b, 0x14(%rbx)          # FEATURES_OK
        movzbl 0x14(%rbx), %eax
        test $8, %eax
        jnz 4f
        lea s_features(%rip), %rax
        jmp 8f
4:      cmpq $0, vio_msix(%rip)
        je 5f
        movw $0xffff, 0x10(%rbx)        # config_msix_vector = VIRTIO_MSI_NO_VECTOR
5:      xor %eax, %eax
        jmp 9f
8:      movzbl 0x14(%rbx), %ecx         # FAILED
        or $0x80, %ecx
        mov %cl, 0x14(%rbx)
9:      pop %rbp
        pop %rbx
        ret

# vio_queue: EDI = queue index (0 or 1). Size min(queue_size, VQ_MAX) (a power of two); rings in
# dma_vq + index * 1 KiB: descriptors +0, available ring +256, used ring +512.
vio_queue:
        push %rbx
        push %rbp
        push %r12
        mov %edi, %ebp
        mov vio_common(%rip), %rbx
        mov %bp, 0x16(%rbx)             # queue_select
        movzwl 0x18(%rbx), %eax         # queue_size
        test %eax, %eax
        jnz 1f
        lea s_no_queue(%rip), %rax
        jmp 9f
1:      cmp $VQ_MAX, %eax
        jbe 2f
        mov $VQ_MAX, %eax
2:      bsr %eax, %ecx                  # round down to a power of two
        mov $1, %eax
        shl %cl, %eax
        mov %ax, 0x18(%rbx)
        dec %eax
        mov %rax, vq_mask(,%rbp,8)
        mov %ebp, %r12d
        shl $10, %r12d
        add $dma_vq, %r12d
        mov %r12, vq_base(,%rbp,8)
        mov %r12, %rdi
        mov $128, %ecx
        xor %eax, %eax
        rep stosq
        movw $1, 256(%r12)              # avail flags: VIRTQ_AVAIL_F_NO_INTERRUPT
        mov %r12d, 0x20(%rbx)           # queue_desc
        movl $0, 0x24(%rbx)
        lea 256(%r12), %eax             # queue_driver (available ring)
        mov %eax, 0x28(%rbx)
        movl $0, 0x2c(%rbx)
        lea 512(%r12), %eax             # queue_device (used ring)
        mov %eax, 0x30(%rbx)
        movl $0, 0x34(%rbx)
        cmpq $0, vio_msix(%rip)
        je 3f
        movw $0xffff, 0x1a(%rbx)        # queue_msix_vector = VIRTIO_MSI_NO_VECTOR
3:      movzwl 0x1e(%rbx), %eax         # queue_notify_off
        imul vio_notify_mul(%rip), %rax
        add vio_notify(%rip), %rax
        mov %rax, vq_notify(,%rbp,8)
        movq $0, vq_avail_idx(,%rbp,8)
        movq $0, vq_last_used(,%rbp,8)
        movw $1, 0x1c(%rbx)             # queue_enable
        xor %eax, %eax
9:      pop %r12
        pop %rbp
        pop %rbx
        ret

vio_driver_ok:
        mov vio_common(%rip), %rax
        movb $0x0f, 0x14(%rax)          # ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
        ret

# set_desc: RDI = descriptor, RSI = buffer address, EDX = length, ECX = flags | next << 16.
set_desc:
        mov %rsi, (%rdi)
        mov %edx, 8(%rdi)
        mov %ecx, 12(%rdi)
        ret

# vq_push: EDI = queue, ESI = head descriptor: append it to the available ring.
vq_push:
        mov vq_base(,%rdi,8), %r8
        mov vq_avail_idx(,%rdi,8), %rax
        mov %eax, %ecx
        and vq_mask(,%rdi,8), %ecx
        mov %si, 256 + 4(%r8,%rcx,2)
        inc %eax
        mov %rax, vq_avail_idx(,%rdi,8)
        mov %ax, 256 + 2(%r8)           # avail->idx, after the entry (x86 keeps stores in order)
        ret

# vq_kick: EDI = queue: notify the device.
vq_kick:
        mov vq_notify(,%rdi,8), %rdx
        mov %di, (%rdx)
        ret

# vq_wait: EDI = queue, RSI = timeout in TSC cycles -> RAX = 0 with ECX = descriptor id and
# EDX = bytes written of the next used entry, or RAX = s_timeout.
vq_wait:
        push %rbx
        push %rbp
        push %r12
        push %r13
        push %r14
        push %r15
        mov %edi, %ebx
        mov %rsi, %r14
        mov vq_base(,%rbx,8), %rbp
        call rdtsc_rax
        mov %rax, %r12                  # start
        mov %rax, %r13                  # previous read
        mov $1000, %r15d                # a TSC that does not advance ends the wait too
1:      movzwl 512 + 2(%rbp), %eax      # used->idx
        cmp vq_last_used(,%rbx,8), %ax
        jne 3f
        call rdtsc_rax
        cmp %r13, %rax
        jne 2f
        dec %r15d
        jz 4f
2:      mov %rax, %r13
        sub %r12, %rax
        cmp %r14, %rax
        jb 1b
4:      lea s_timeout(%rip), %rax
        jmp 9f
3:      mov vq_last_used(,%rbx,8), %rax
        and vq_mask(,%rbx,8), %rax
        mov 512 + 4(%rbp,%rax,8), %ecx  # id
        mov 512 + 8(%rbp,%rax,8), %edx  # len
        incq vq_last_used(,%rbx,8)
        xor %eax, %eax
9:      pop %r15
        pop %r14
        pop %r13
        pop %r12
        pop %rbp
        pop %rbx
        ret

# vq_submit: EDI = queue, ESI = head: push, notify, wait (VQ_TIMEOUT) -> as vq_wait.
vq_submit:
        push %rbx
        mov %edi, %ebx
        call vq_push
        mov %ebx, %edi
        call vq_kick
        mov %ebx, %edi
        mov $VQ_TIMEOUT, %rsi
        call vq_wait
        pop %rbx
        ret

# vfail: RDI = reason -> "TINY: <vdev_name> FAIL <reason>" (no newline).
vfail:
        push %rbx
        mov %rdi, %rbx
        PUTS "TINY: "
        mov vdev_name(%rip), %rdi
        call puts
        PUTS " FAIL "
        mov %rbx, %rdi
        call puts
        pop %rbx
        ret

vfail_nl:
        call vfail
        jmp newline

# vfail_num: RDI = reason, RSI = number -> "TINY: <vdev_name> FAIL <reason><number>\n".
vfail_num:
        push %rbx
        mov %rsi, %rbx
        call vfail
        mov %rbx, %rdi
        call put_dec
        pop %rbx
        jmp newline

# put_hexbytes: RDI = bytes, ESI = count: two hex digits each.
put_hexbytes:
        push %rbx
        push %rbp
        mov %rdi, %rbx
        mov %esi, %ebp
        test %ebp, %ebp
        jz 2f
1:      movzbl (%rbx), %eax
        shr $4, %eax
        call put_nibble
        movzbl (%rbx), %eax
        and $15, %eax
        call put_nibble
        inc %rbx
        dec %ebp
        jnz 1b
2:      pop %rbp
        pop %rbx
        ret

put_nibble:
        push %rcx
        lea hexdigits(%rip), %rcx
        movzbl (%rcx,%rax), %eax
        pop %rcx
        jmp putc

# ---------------------------------------------------------------------------- virtio actions
# vio_read32: EDI = device id: drive the device's queue 0 with one 32-byte writable buffer
# (rng_buf, zeroed first) -> RAX = 0 with EDX = bytes the device wrote, or RAX = failure.
vio_read32:
        call vio_probe
        test %rax, %rax
        jnz 9f
        xor %edi, %edi
        call vio_start
        test %rax, %rax
        jnz 9f
        xor %edi, %edi
        call vio_queue
        test %rax, %rax
        jnz 9f
        call vio_driver_ok
        xor %eax, %eax
        mov %rax, rng_buf(%rip)
        mov %rax, rng_buf + 8(%rip)
        mov %rax, rng_buf + 16(%rip)
        mov %rax, rng_buf + 24(%rip)
        mov vq_base(%rip), %rdi         # queue 0, descriptor 0
        lea rng_buf(%rip), %rsi
        mov $32, %edx
        mov $VIRTQ_DESC_F_WRITE, %ecx
        call set_desc
        xor %edi, %edi
        xor %esi, %esi
        call vq_submit
9:      ret

# put_read_ok: EDI = bytes read into rng_buf, ESI = most to show ->
# "TINY: <vdev_name> ok bytes=N hex=<at most ESI bytes>\n".
put_read_ok:
        push %rbx
        push %rbp
        mov %edi, %ebx
        mov %esi, %ebp
        PUTS "TINY: "
        mov vdev_name(%rip), %rdi
        call puts
        PUTS " ok bytes="
        mov %rbx, %rdi
        call put_dec
        PUTS " hex="
        mov %ebx, %esi
        cmp %ebp, %esi
        jbe 1f
        mov %ebp, %esi
1:      lea rng_buf(%rip), %rdi
        call put_hexbytes
        call newline
        pop %rbp
        pop %rbx
        ret

act_rng:
        push %rbx
        lea s_rng(%rip), %rax
        mov %rax, vdev_name(%rip)
        mov $VIRTIO_ID_RNG, %edi
        call vio_read32
        test %rax, %rax
        jnz 8f
        mov %edx, %ebx                  # bytes written
        lea s_empty(%rip), %rax
        test %ebx, %ebx
        jz 8f
        mov rng_buf(%rip), %rax
        or rng_buf + 8(%rip), %rax
        or rng_buf + 16(%rip), %rax
        or rng_buf + 24(%rip), %rax
        jnz 1f
        lea s_zeros(%rip), %rax
        jmp 8f
1:      mov %ebx, %edi
        mov $16, %esi
        call put_read_ok
        jmp 9f
8:      mov %rax, %rdi
        call vfail_nl
9:      pop %rbx
        ret

# act_console: one receive buffer on virtio-console's queue 0; what the host's client typed
# comes back as "TINY: console ok bytes=N hex=..." (or FAIL timeout after ~4 s).
act_console:
        push %rbx
        lea s_console(%rip), %rax
        mov %rax, vdev_name(%rip)
        mov $VIRTIO_ID_CONSOLE, %edi
        call vio_read32
        test %rax, %rax
        jnz 8f
        mov %edx, %ebx                  # bytes written
        lea s_empty(%rip), %rax
        test %ebx, %ebx
        jz 8f
        mov %ebx, %edi
        mov $32, %esi
        call put_read_ok
        jmp 9f
8:      mov %rax, %rdi
        call vfail_nl
9:      pop %rbx
        ret

# blk_init: virtio-blk on queue 0 (features RO and FLUSH if offered) -> blk_capacity.
blk_init:
        mov $VIRTIO_ID_BLOCK, %edi
        call vio_probe
        test %rax, %rax
        jnz 9f
        mov $VIRTIO_BLK_F_RO | VIRTIO_BLK_F_FLUSH, %edi
        call vio_start
        test %rax, %rax
        jnz 9f
        xor %edi, %edi
        call vio_queue
        test %rax, %rax
        jnz 9f
        lea s_no_devcfg(%rip), %rax
        mov vio_devcfg(%rip), %rcx
        test %rcx, %rcx
        jz 9f
        mov (%rcx), %eax                # capacity (u64, in 512-byte sectors)
        mov 4(%rcx), %edx
        shl $32, %rdx
        or %rdx, %rax
        mov %rax, blk_capacity(%rip)
        call vio_driver_ok
        xor %eax, %eax
9:      ret

# blk_req: EDI = type (0 IN, 1 OUT, 4 FLUSH), RSI = sector, EDX = data bytes in dma_data (0:
# none) -> RAX = 0 and ECX = status byte, or RAX = reason. Descriptors 0-2 of queue 0.
blk_req:
        push %rbx
        push %rbp
        push %r12
        mov %edi, %ebx
        mov %edx, %ebp
        mov %ebx, blk_hdr(%rip)
        movl $0, blk_hdr + 4(%rip)
        mov %rsi, blk_hdr + 8(%rip)
        movb $0xff, blk_status(%rip)
        mov vq_base(%rip), %r12
        mov %r12, %rdi
        lea blk_hdr(%rip), %rsi
        mov $16, %edx
        mov $VIRTQ_DESC_F_NEXT | 1 << 16, %ecx
        call set_desc
        add $16, %r12
        test %ebp, %ebp
        jz 2f
        mov %r12, %rdi
        lea dma_data(%rip), %rsi
        mov %ebp, %edx
        mov $VIRTQ_DESC_F_NEXT | 2 << 16, %ecx
        test %ebx, %ebx
        jnz 1f
        or $VIRTQ_DESC_F_WRITE, %ecx    # IN: the device writes the data
1:      call set_desc
        add $16, %r12
2:      mov %r12, %rdi
        lea blk_status(%rip), %rsi
        mov $1, %edx
        mov $VIRTQ_DESC_F_WRITE, %ecx
        call set_desc
        xor %edi, %edi
        xor %esi, %esi
        call vq_submit
        movzbl blk_status(%rip), %ecx
        pop %r12
        pop %rbp
        pop %rbx
        ret

# blk_pattern: RDI = first sector, RSI = seed -> RAX = the word at byte 0 of that sector; the
# word at byte offset o of the 4 KiB is RAX + o (seed * 0x9e3779b97f4a7c15 + disk byte offset).
blk_pattern:
        mov $0x9e3779b97f4a7c15, %rax
        imul %rsi, %rax
        shl $9, %rdi
        add %rdi, %rax
        ret

# blk_fill: RDI = sector, RSI = seed: the pattern into dma_data (4 KiB).
blk_fill:
        call blk_pattern
        lea dma_data(%rip), %rdi
        xor %ecx, %ecx
1:      lea (%rax,%rcx), %rdx
        mov %rdx, (%rdi,%rcx)
        add $8, %ecx
        cmp $4096, %ecx
        jb 1b
        ret

# blk_check: RDI = sector, RSI = seed -> RAX = -1 if dma_data holds the pattern, else the byte
# offset of the first word that differs.
blk_check:
        call blk_pattern
        lea dma_data(%rip), %rdi
        xor %ecx, %ecx
1:      lea (%rax,%rcx), %rdx
        cmp %rdx, (%rdi,%rcx)
        jne 2f
        add $8, %ecx
        cmp $4096, %ecx
        jb 1b
        mov $-1, %rax
        ret
2:      mov %rcx, %rax
        ret

# blk_zero: clear dma_data.
blk_zero:
        lea dma_data(%rip), %rdi
        mov $512, %ecx
        xor %eax, %eax
        rep stosq
        ret

# blk_params -> R12 = tiny.blk_sector (default 8), R13 = tiny.blk_seed (default 1).
blk_params:
        lea key_blk_sector(%rip), %rdi
        mov $8, %esi
        call param_uint
        mov %rax, %r12
        lea key_blk_seed(%rip), %rdi
        mov $1, %esi
        call param_uint
        mov %rax, %r13
        ret

act_blk:
        push %rbx
        push %rbp
        push %r12
        push %r13
        push %r14
        push %r15
        lea s_blk(%rip), %rax
        mov %rax, vdev_name(%rip)
        call blk_init
        test %rax, %rax
        jnz .Lblk_fail
        xor %edi, %edi                  # read sector 0
        xor %esi, %esi
        mov $512, %edx
        call blk_req
        test %rax, %rax
        jnz .Lblk_fail
        lea s_read_status(%rip), %rax
        test %ecx, %ecx
        jnz .Lblk_fail_num
        PUTS "TINY: blk sector0="
        lea dma_data(%rip), %rdi
        mov $16, %esi
        call put_hexbytes
        call newline
        call blk_params
        mov vio_feat(%rip), %r14
        shr $5, %r14d                   # VIRTIO_BLK_F_RO
        and $1, %r14d
        xor %r15d, %r15d                # flushed
        xor %ebx, %ebx                  # wrote
        test %r14d, %r14d
        jz .Lblk_rw
        lea key_blk_try_write(%rip), %rdi
        xor %esi, %esi
        call param_uint
        cmp $1, %rax
        jne .Lblk_ok
        mov %r12, %rdi                  # read-only, and a write was asked for
        mov %r13, %rsi
        call blk_fill
        mov $VIRTIO_BLK_T_OUT, %edi
        mov %r12, %rsi
        mov $4096, %edx
        call blk_req
        test %rax, %rax
        jnz .Lblk_fail
        mov %ecx, %ebp
        PUTS "TINY: blk write-status="
        mov %rbp, %rdi
        call put_dec
        call newline
        jmp .Lblk_ok
.Lblk_rw:
        lea 8(%r12), %rax
        cmp blk_capacity(%rip), %rax
        jbe 1f
        lea s_sector_range(%rip), %rax
        jmp .Lblk_fail
1:      mov %r12, %rdi
        mov %r13, %rsi
        call blk_fill
        mov $VIRTIO_BLK_T_OUT, %edi
        mov %r12, %rsi
        mov $4096, %edx
        call blk_req
        test %rax, %rax
        jnz .Lblk_fail
        lea s_write_status(%rip), %rax
        test %ecx, %ecx
        jnz .Lblk_fail_num
        testl $VIRTIO_BLK_F_FLUSH, vio_feat(%rip)
        jz 2f
        mov $VIRTIO_BLK_T_FLUSH, %edi
        xor %esi, %esi
        xor %edx, %edx
        call blk_req
        test %rax, %rax
        jnz .Lblk_fail
        lea s_flush_status(%rip), %rax
        test %ecx, %ecx
        jnz .Lblk_fail_num
        mov $1, %r15d
2:      call blk_zero
        mov $VIRTIO_BLK_T_IN, %edi
        mov %r12, %rsi
        mov $4096, %edx
        call blk_req
        test %rax, %rax
        jnz .Lblk_fail
        lea s_read_status(%rip), %rax
        test %ecx, %ecx
        jnz .Lblk_fail_num
        mov %r12, %rdi
        mov %r13, %rsi
        call blk_check
        cmp $-1, %rax
        je 3f
        mov %eax, %ecx
        lea s_mismatch(%rip), %rax
        jmp .Lblk_fail_num
3:      mov $1, %ebx
.Lblk_ok:
        PUTS "TINY: blk ok capacity="
        mov blk_capacity(%rip), %rdi
        call put_dec
        PUTS " ro="
        mov %r14, %rdi
        call put_dec
        PUTS " wrote="
        mov %rbx, %rdi
        call put_dec
        PUTS " flush="
        mov %r15, %rdi
        call put_dec
        call newline
        jmp .Lblk_done
.Lblk_fail_num:                         # RAX = reason, ECX = number
        mov %rax, %rdi
        mov %ecx, %esi
        call vfail_num
        jmp .Lblk_done
.Lblk_fail:
        mov %rax, %rdi
        call vfail_nl
.Lblk_done:
        pop %r15
        pop %r14
        pop %r13
        pop %r12
        pop %rbp
        pop %rbx
        ret

act_blk_verify:
        push %r12
        push %r13
        lea s_blk_verify(%rip), %rax
        mov %rax, vdev_name(%rip)
        call blk_init
        test %rax, %rax
        jnz 8f
        call blk_params
        lea 8(%r12), %rax
        cmp blk_capacity(%rip), %rax
        jbe 1f
        lea s_sector_range(%rip), %rax
        jmp 8f
1:      call blk_zero
        mov $VIRTIO_BLK_T_IN, %edi
        mov %r12, %rsi
        mov $4096, %edx
        call blk_req
        test %rax, %rax
        jnz 8f
        lea s_read_status(%rip), %rax
        test %ecx, %ecx
        jnz 7f
        mov %r12, %rdi
        mov %r13, %rsi
        call blk_check
        cmp $-1, %rax
        je 2f
        mov %eax, %ecx
        lea s_mismatch(%rip), %rax
        jmp 7f
2:      PUTS "TINY: blk-verify ok\n"
        jmp 9f
7:      mov %rax, %rdi
        mov %ecx, %esi
        call vfail_num
        jmp 9f
8:      mov %rax, %rdi
        call vfail_nl
9:      pop %r13
        pop %r12
        ret

act_net:
        push %rbx
        push %rbp
        push %r12
        push %r13
        push %r14
        push %r15
        lea s_net(%rip), %rax
        mov %rax, vdev_name(%rip)
        mov $VIRTIO_ID_NET, %edi
        call vio_probe
        test %rax, %rax
        jnz .Lnet_fail
        mov $VIRTIO_NET_F_MAC, %edi
        call vio_start
        test %rax, %rax
        jnz .Lnet_fail
        xor %edi, %edi                  # receiveq1
        call vio_queue
        test %rax, %rax
        jnz .Lnet_fail
        mov $1, %edi                    # transmitq1
        call vio_queue
        test %rax, %rax
        jnz .Lnet_fail
        lea net_mac(%rip), %rdi         # without VIRTIO_NET_F_MAC: 02:00:00:00:00:01
        movl $0x00000002, (%rdi)
        movw $0x0100, 4(%rdi)
        testl $VIRTIO_NET_F_MAC, vio_feat(%rip)
        jz 2f
        mov vio_devcfg(%rip), %rsi
        test %rsi, %rsi
        jz 2f
        xor %ecx, %ecx
1:      movzbl (%rsi,%rcx), %eax        # virtio_net_config.mac, byte by byte
        mov %al, (%rdi,%rcx)
        inc %ecx
        cmp $6, %ecx
        jb 1b
2:      PUTS "TINY: net mac="
        xor %ebx, %ebx
3:      lea net_mac(%rip), %rdi
        add %rbx, %rdi
        mov $1, %esi
        call put_hexbytes
        inc %ebx
        cmp $6, %ebx
        jae 4f
        mov $0x3a, %eax                 # ':'
        call putc
        jmp 3b
4:      call newline
        xor %ebx, %ebx                  # receive buffers: descriptors 0-3 of queue 0
5:      mov %ebx, %edi
        shl $4, %edi
        add vq_base(%rip), %rdi
        imul $NET_RX_STRIDE, %ebx, %esi
        add $net_rx, %esi
        mov $NET_HDR_LEN + 1514, %edx
        mov $VIRTQ_DESC_F_WRITE, %ecx
        call set_desc
        xor %edi, %edi
        mov %ebx, %esi
        call vq_push
        inc %ebx
        cmp $NET_RX_BUFS, %ebx
        jb 5b
        lea net_tx(%rip), %rdi          # virtio_net_hdr (zero) + 60-byte frame
        mov $(NET_HDR_LEN + 60) / 8, %ecx
        xor %eax, %eax
        rep stosq
        lea net_tx + NET_HDR_LEN(%rip), %rdi
        movl $-1, (%rdi)                # destination: broadcast
        movw $-1, 4(%rdi)
        mov net_mac(%rip), %eax         # source: our MAC
        mov %eax, 6(%rdi)
        movzwl net_mac + 4(%rip), %eax
        mov %ax, 10(%rdi)
        movw $0xb588, 12(%rdi)          # ethertype 0x88b5 (big-endian)
        lea s_ping(%rip), %rsi
        add $14, %rdi
        mov $s_ping_len, %ecx
        rep movsb
        mov vq_base + 8(%rip), %rdi     # queue 1, descriptor 0
        lea net_tx(%rip), %rsi
        mov $NET_HDR_LEN + 60, %edx
        xor %ecx, %ecx
        call set_desc
        call vio_driver_ok
        xor %edi, %edi                  # the receive buffers are there
        call vq_kick
        mov $1, %edi
        xor %esi, %esi
        call vq_submit
        test %rax, %rax
        jnz .Lnet_fail
        PUTS "TINY: net sent\n"
        lea key_net_wait_ms(%rip), %rdi
        mov $3000, %esi
        call param_uint
        imul $TSC_PER_MS, %rax, %r14
        call rdtsc_rax
        add %rax, %r14                  # deadline
.Lnet_rx:
        call rdtsc_rax
        mov %r14, %rsi
        sub %rax, %rsi
        jbe .Lnet_noreply
        xor %edi, %edi
        call vq_wait
        test %rax, %rax
        jnz .Lnet_noreply
        cmp $NET_RX_BUFS, %ecx
        jae .Lnet_rx
        mov %ecx, %ebx                  # descriptor = buffer number
        mov %edx, %ebp
        imul $NET_RX_STRIDE, %ebx, %r12d
        add $net_rx + NET_HDR_LEN, %r12d  # the frame
        sub $NET_HDR_LEN, %ebp          # its length
        jb .Lnet_repost
        cmp $14 + s_pong_len, %ebp
        jb .Lnet_repost
        cmpw $0xb588, 12(%r12)
        jne .Lnet_repost
        lea s_pong(%rip), %rsi
        xor %ecx, %ecx
6:      movzbl (%rsi,%rcx), %eax
        cmp 14(%r12,%rcx), %al
        jne .Lnet_repost
        inc %ecx
        cmp $s_pong_len, %ecx
        jb 6b
        PUTS "TINY: net rx len="
        mov %rbp, %rdi
        call put_dec
        PUTS " payload="
        lea -14(%rbp), %r13d            # payload bytes, at most 32 printed
        cmp $32, %r13d
        jbe 7f
        mov $32, %r13d
7:      add $14, %r12
8:      test %r13d, %r13d
        jz 10f
        movzbl (%r12), %eax
        test %eax, %eax
        jz 10f
        cmp $0x20, %eax
        jb 9f
        cmp $0x7e, %eax
        jbe 11f
9:      mov $0x2e, %eax                 # '.' for what is not printable ASCII
11:     call putc
        inc %r12
        dec %r13d
        jmp 8b
10:     call newline
        jmp .Lnet_done
.Lnet_repost:
        xor %edi, %edi
        mov %ebx, %esi
        call vq_push
        xor %edi, %edi
        call vq_kick
        jmp .Lnet_rx
.Lnet_noreply:
        lea s_no_reply(%rip), %rax
.Lnet_fail:
        mov %rax, %rdi
        call vfail_nl
.Lnet_done:
        pop %r15
        pop %r14
        pop %r13
        pop %r12
        pop %rbp
        pop %rbx
        ret

act_balloon:
        push %rbx
        push %r12
        push %r13
        lea s_balloon(%rip), %rax
        mov %rax, vdev_name(%rip)
        mov $VIRTIO_ID_BALLOON, %edi
        call vio_probe
        test %rax, %rax
        jnz 8f
        xor %edi, %edi                  # no features but VERSION_1 (no stats queue)
        call vio_start
        test %rax, %rax
        jnz 8f
        xor %edi, %edi                  # inflateq
        call vio_queue
        test %rax, %rax
        jnz 8f
        lea s_no_devcfg(%rip), %rax
        cmpq $0, vio_devcfg(%rip)
        je 8f
        call vio_driver_ok
        lea key_balloon_pages(%rip), %rdi
        mov $256, %esi
        call param_uint
        mov %rax, %rbx                  # pages
        lea s_not_ram(%rip), %rax
        cmp $1 << 20, %rbx
        ja 8f
        mov $BALLOON_START, %edi        # they must be RAM (below 4 GiB: PFNs are u32 here)
        mov %rbx, %rsi
        shl $12, %rsi
        add %rdi, %rsi
        call e820_covers
        test %rax, %rax
        jz 1f
        lea s_not_ram(%rip), %rax
        jmp 8f
1:      xor %r12d, %r12d                # pages sent
2:      mov %rbx, %r13
        sub %r12, %r13
        jz 4f
        cmp $BALLOON_CHUNK, %r13
        jbe 3f
        mov $BALLOON_CHUNK, %r13d
3:      lea dma_data(%rip), %rdi        # PFNs (u32), BALLOON_CHUNK at most per buffer
        mov %r12d, %eax
        add $BALLOON_START >> 12, %eax
        xor %ecx, %ecx
5:      mov %eax, (%rdi,%rcx,4)
        inc %eax
        inc %ecx
        cmp %r13d, %ecx
        jb 5b
        mov vq_base(%rip), %rdi
        lea dma_data(%rip), %rsi
        lea (,%r13,4), %edx
        xor %ecx, %ecx
        call set_desc
        xor %edi, %edi
        xor %esi, %esi
        call vq_submit
        test %rax, %rax
        jnz 8f
        add %r13, %r12
        jmp 2b
4:      mov vio_devcfg(%rip), %rax
        mov %ebx, 4(%rax)               # actual
        PUTS "TINY: balloon ok inflated="
        mov %rbx, %rdi
        call put_dec
        call newline
        jmp 9f
8:      mov %rax, %rdi
        call vfail_nl
9:      pop %r13
        pop %r12
        pop %rbx
        ret

# =====================================================================================
        .section .rodata
name_linux64:   .asciz "linux64"
name_linux32:   .asciz "linux32"
name_pvh:       .asciz "pvh"
key_test:       .asciz "tiny.test="
key_mem_mib:    .asciz "tiny.mem_mib="
key_count_shift: .asciz "tiny.count_shift="
key_dirty_mib:  .asciz "tiny.dirty_mib="
key_dirty_rate: .asciz "tiny.dirty_rate="
hexdigits:      .ascii "0123456789abcdef"
s_smp:          .asciz "smp"
s_mem:          .asciz "mem"
s_reset:        .asciz "reset"
s_poweroff:     .asciz "poweroff"
s_wait_shutdown: .asciz "wait-shutdown"
s_triple_fault: .asciz "triple-fault"
s_counter:      .asciz "counter"
s_dirty:        .asciz "dirty"
s_io_hostile:   .asciz "io-hostile"
s_emulation_failure: .asciz "emulation-failure"
s_rng:          .asciz "rng"
s_blk:          .asciz "blk"
s_blk_verify:   .asciz "blk-verify"
s_net:          .asciz "net"
s_balloon:      .asciz "balloon"
s_console:      .asciz "console"
key_pci_mmio_mib: .asciz "tiny.pci_mmio_mib="
key_blk_sector: .asciz "tiny.blk_sector="
key_blk_seed:   .asciz "tiny.blk_seed="
key_blk_try_write: .asciz "tiny.blk_try_write="
key_net_wait_ms: .asciz "tiny.net_wait_ms="
key_balloon_pages: .asciz "tiny.balloon_pages="
s_not_found:    .asciz "not-found"
s_bar:          .asciz "bar"
s_no_caps:      .asciz "no-virtio-caps"
s_no_version_1: .asciz "no-version-1"
s_features:     .asciz "features"
s_no_queue:     .asciz "no-queue"
s_no_devcfg:    .asciz "no-device-cfg"
s_timeout:      .asciz "timeout"
s_empty:        .asciz "empty"
s_zeros:        .asciz "zeros"
s_read_status:  .asciz "read-status="
s_write_status: .asciz "write-status="
s_flush_status: .asciz "flush-status="
s_sector_range: .asciz "sector-range"
s_mismatch:     .asciz "mismatch offset="
s_no_reply:     .asciz "no-reply"
s_not_ram:      .asciz "not-ram"
s_ping:         .ascii "TINY-NET-PING"
        .set s_ping_len, . - s_ping
s_pong:         .ascii "TINY-NET-PONG"
        .set s_pong_len, . - s_pong
        .balign 8
actions:
        .quad s_smp, act_smp
        .quad s_mem, act_mem
        .quad s_reset, act_reset
        .quad s_poweroff, act_poweroff
        .quad s_wait_shutdown, act_wait_shutdown
        .quad s_triple_fault, act_triple_fault
        .quad s_counter, act_counter
        .quad s_dirty, act_dirty
        .quad s_io_hostile, act_io_hostile
        .quad s_emulation_failure, act_emulation_failure
        .quad s_rng, act_rng
        .quad s_blk, act_blk
        .quad s_blk_verify, act_blk_verify
        .quad s_net, act_net
        .quad s_balloon, act_balloon
        .quad s_console, act_console
        .quad 0, 0
# m16:32 far pointers to the 64-bit continuations (for `ljmp *(%ebp)`).
far_bp64:       .long bp64
                .word SEL_CODE64
far_pvh64:      .long pvh64
                .word SEL_CODE64
far_ap64:       .long ap64
                .word SEL_CODE64
        .balign 16
        .globl gdt, gdt_end
gdt:    .quad 0
        .quad 0x00cf9b000000ffff        # 0x08 code32 (accessed bit preset: no GDT writes)
        .quad 0x00cf93000000ffff        # 0x10 data
        .quad 0x00af9b000000ffff        # 0x18 code64
gdt_end:
        .balign 8
gdt_ptr: .word gdt_end - gdt - 1        # works for lgdt in 32- and 64-bit code
        .quad gdt
idt_null: .word 0
        .quad 0

# PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY = 18), as Linux writes it.
        .section .note.Xen, "a", @note
        .balign 4
        .long 4                         # namesz
        .long 8                         # descsz
        .long 18                        # type
        .asciz "Xen"
        .balign 4
        .quad pvh_entry

# =====================================================================================
        .section .bss, "aw", @nobits
        .balign 4096
pml4:   .skip 4096
pdpt:   .skip 4096
pds:    .skip 4 * 4096
        .skip 16384
stack_top:
cmdline: .skip CMDLINE_MAX
        .balign 8
e820:   .skip MAX_E820 * 24             # internal: addr u64, size u64, type u32, pad u32
e820_n: .skip 8
boot_kind: .skip 8
bootinfo: .skip 8
rsdp:   .skip 8
fadt:   .skip 8
madt:   .skip 8
dsdt:   .skip 8
pm1a_evt: .skip 8
pm1a_cnt: .skip 8
pm1_evt_len: .skip 8
hw_reduced: .skip 8
sleep_ctl_space: .skip 8
sleep_ctl_addr: .skip 8
s5_typ: .skip 8
lapic_base: .skip 8
ncpus:  .skip 8
cpu_ids: .skip MAX_CPUS * 4
bsp_id: .skip 4
ap_slot: .skip 4
ap_done: .skip 4
ap_ids: .skip MAX_CPUS * 4
s5_found: .skip 1
lsr_broken: .skip 1
        .balign 8
pci_mode: .skip 8
pci_ecam: .skip 8
pci_ecam_size: .skip 8
pci_next: .skip 8
vdev_cfg: .skip 8                       # the device's configuration address (as for 0xCF8)
vdev_name: .skip 8
vio_caps:                               # addresses of the virtio structures, by cfg_type - 1
vio_common: .skip 8
vio_notify: .skip 8
vio_isr: .skip 8
vio_devcfg: .skip 8
vio_notify_mul: .skip 8
vio_msix: .skip 8
vio_feat: .skip 8                       # negotiated feature bits 0-31
vq_base: .skip 2 * 8
vq_mask: .skip 2 * 8
vq_notify: .skip 2 * 8
vq_avail_idx: .skip 2 * 8
vq_last_used: .skip 2 * 8
blk_capacity: .skip 8
net_mac: .skip 8

# Buffers the virtio devices read and write. Not zeroed at entry (the actions initialize what
# they use); after the BSS, inside the image's memory size.
        .section .dma, "aw", @nobits
        .balign 4096
dma_vq: .skip 2 * 1024                  # queue n at dma_vq + n * 1 KiB
blk_hdr: .skip 16
blk_status: .skip 16
rng_buf: .skip 32
        .balign 64
net_tx: .skip 128
        .balign 4096
dma_data: .skip 4096                    # blk data, balloon PFNs
net_rx: .skip NET_RX_BUFS * NET_RX_STRIDE
