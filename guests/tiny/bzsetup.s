# bzsetup: the real-mode part of tiny.bzImage (GNU as, AT&T syntax).
#
# Linked with `ld --just-symbols=tiny.elf` (it uses gdt, entry32 and the sizes from tiny.ld);
# tiny.bzImage = this part ((SETUP_SECTS + 1) * 512 bytes) + tiny.elf's image as a flat binary
# (objcopy -O binary), which a loader puts at 0x100000 (code32_start = pref_address).
#
# - 64-bit boot protocol loaders (vireo-vmm, Firecracker, Cloud Hypervisor) read only the
#   setup header below and enter the image at 0x100200 in long mode.
# - 16-bit boot protocol loaders (QEMU -kernel, SeaBIOS/qboot) load this part at a segment
#   boundary and jump to it at offset 0x200 in real mode: the code at 0x1000 fills the
#   boot_params (this very sector: e820 via int 15h; the loader wrote cmd_line_ptr), enables
#   A20, identity-maps the first 1 GiB, switches straight to long mode and enters the image
#   at 0x100200 with RSI = boot_params, as a 64-bit boot protocol VMM does. So
#   `qemu -kernel tiny.bzImage` exercises the same entry64 path (`entry=linux64`).
# Offsets 0-0x1f0 and 0x26c-0xfff are the zero page (struct boot_params) fields and stay 0
# in the file.

        .set SETUP_SECTS, 8
        .code16
        .section .setup, "ax"
        .globl _start
_start:
        .org 0x1f1
setup_sects:    .byte SETUP_SECTS
root_flags:     .word 0
syssize:        .long tiny_syssize      # protected-mode part in 16-byte units
ram_size:       .word 0
vid_mode:       .word 0xffff            # NORMAL_VGA
root_dev:       .word 0
boot_flag:      .word 0xaa55
        .org 0x200
jump:           .byte 0xeb, setup16_jmp - 0x202
header:         .ascii "HdrS"
version:        .word 0x020c            # boot protocol 2.12 (xloadflags)
realmode_swtch: .long 0
start_sys_seg:  .word 0x1000
kernel_version: .word 0
type_of_loader: .byte 0
loadflags:      .byte 0x01              # LOADED_HIGH
setup_move_size: .word 0x8000
code32_start:   .long 0x100000
ramdisk_image:  .long 0
ramdisk_size:   .long 0
bootsect_kludge: .long 0
heap_end_ptr:   .word 0
ext_loader_ver: .byte 0
ext_loader_type: .byte 0
cmd_line_ptr:   .long 0
initrd_addr_max: .long 0x7fffffff
kernel_alignment: .long 0x200000
relocatable_kernel: .byte 0
min_alignment:  .byte 21
xloadflags:     .word 0x0001            # XLF_KERNEL_64: 64-bit entry at load address + 0x200
cmdline_size:   .long 2047
hardware_subarch: .long 0
hardware_subarch_data: .quad 0
payload_offset: .long 0
payload_length: .long 0
setup_data:     .quad 0
pref_address:   .quad 0x100000
init_size:      .long tiny_init_size    # memory used from the load address on (with bss)
handover_offset: .long 0
setup16_jmp:                            # 0x268: after the 2.12 header
        jmp setup16

        .org 0x1000                     # after the zero page's fields
setup16:
        cli
        cld
        mov %cs, %ax
        sub $0x20, %ax                  # entered at segment + 0x20, offset 0
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $0xe000, %sp
        inb $0x92, %al                  # fast A20
        orb $0x02, %al
        andb $0xfe, %al
        outb %al, $0x92
        xor %ebx, %ebx                  # e820 -> boot_params.e820_table / e820_entries
        xor %si, %si
        mov $0x2d0, %di
1:      mov $0xe820, %eax
        mov $20, %ecx
        mov $0x534d4150, %edx           # "SMAP"
        int $0x15
        jc 2f
        cmp $0x534d4150, %eax
        jne 2f
        inc %si
        add $20, %di
        cmp $128, %si
        jae 2f
        test %ebx, %ebx
        jnz 1b
2:      mov %si, %ax
        mov %al, 0x1e8
        xor %esi, %esi                  # ESI = linear address of boot_params
        mov %ds, %si
        shl $4, %esi
        # Page tables as a 64-bit boot protocol VMM builds them: the first 1 GiB identity-mapped
        # with 2 MiB pages. PML4, PDPT, PD in the 3 pages from the first 4 KiB boundary at or
        # above boot_params + 0x2000 (free: we use 0x0000-0x11ff and the stack below 0xe000).
        lea 0x2fff(%esi), %ebp
        and $0xfffff000, %ebp
        mov %ebp, %eax
        shr $4, %eax
        mov %ax, %es
        xor %di, %di
        mov $0xc00, %cx
        xor %eax, %eax
        rep stosl
        lea 0x1003(%ebp), %eax
        mov %eax, %es:0
        lea 0x2003(%ebp), %eax
        mov %eax, %es:0x1000
        mov $0x83, %eax
        mov $0x2000, %di
        mov $512, %cx
3:      mov %eax, %es:(%di)
        add $0x200000, %eax
        add $8, %di
        loop 3b
        lea stub64(%esi), %eax          # far pointer to stub64 (linear address)
        mov %eax, farp
        movw $0x18, farp + 4
        cli
        lgdtl gdtp                      # tiny's GDT: 0x10 data, 0x18 64-bit code
        mov %cr4, %eax
        orl $0x20, %eax                 # PAE
        mov %eax, %cr4
        mov %ebp, %cr3
        mov $0xc0000080, %ecx           # EFER.LME
        rdmsr
        orl $0x100, %eax
        wrmsr
        mov %cr0, %eax
        orl $0x80000001, %eax           # PG + PE: straight to IA-32e mode
        mov %eax, %cr0
        ljmpl *farp                     # DS still has the real-mode base (CS is DS + 0x200)
        .code64
stub64:                                 # long mode, 64-bit boot protocol state
        mov $0x10, %eax
        mov %eax, %ds
        mov %eax, %es
        mov %eax, %ss
        mov %esi, %esi                  # RSI = boot_params
        mov $entry64, %eax
        jmp *%rax
        .balign 8
gdtp:   .word tiny_gdt_limit
        .long gdt
farp:   .long 0
        .word 0
        .org (SETUP_SECTS + 1) * 512
