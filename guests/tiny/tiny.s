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
        jne .Lsdt_loop
        mov %rax, madt(%rip)
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

# =====================================================================================
        .section .rodata
name_linux64:   .asciz "linux64"
name_linux32:   .asciz "linux32"
name_pvh:       .asciz "pvh"
key_test:       .asciz "tiny.test="
key_mem_mib:    .asciz "tiny.mem_mib="
key_count_shift: .asciz "tiny.count_shift="
hexdigits:      .ascii "0123456789abcdef"
s_smp:          .asciz "smp"
s_mem:          .asciz "mem"
s_reset:        .asciz "reset"
s_poweroff:     .asciz "poweroff"
s_wait_shutdown: .asciz "wait-shutdown"
s_triple_fault: .asciz "triple-fault"
s_counter:      .asciz "counter"
s_io_hostile:   .asciz "io-hostile"
s_emulation_failure: .asciz "emulation-failure"
        .balign 8
actions:
        .quad s_smp, act_smp
        .quad s_mem, act_mem
        .quad s_reset, act_reset
        .quad s_poweroff, act_poweroff
        .quad s_wait_shutdown, act_wait_shutdown
        .quad s_triple_fault, act_triple_fault
        .quad s_counter, act_counter
        .quad s_io_hostile, act_io_hostile
        .quad s_emulation_failure, act_emulation_failure
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
