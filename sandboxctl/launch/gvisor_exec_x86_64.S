# The gvisor backend's native launcher (x86-64): load the seccomp program, execute the command.
#
# Assembled once, by hand, into CODE in gvisor_exec.py (tests/unit/test_gvisor_exec.py checks
# that the bytes there are this file's, whenever GNU as is installed):
#     as --64 -o exec.o gvisor_exec_x86_64.S && objcopy -O binary -j .text exec.o exec.bin
#
# It replaces `python3 gvisor_init.py` when there is no proxy forwarder to start: an interpreter
# started in a cold gVisor sandbox costs ~80 ms (every file it imports goes through the gofer).
# Everything it needs is in a table at TABLE, written by gvisor_exec.py for this one run; the
# code never changes. Same behaviour as gvisor_init.exec_command: the candidates are tried in
# order, ENOENT/ENOTDIR go on to the next, and when PATH is searched a candidate that is not a
# regular file is skipped; the first EACCES is remembered, any other error ends it (126). Every
# failure exits 125 (seccomp), 126 or 127 and never runs the command.
        .intel_syntax noprefix
        .set TABLE, 0x400400
        .set FPROG, TABLE + 0          # &struct sock_fprog
        .set ARGV, TABLE + 8           # char **
        .set ENVP, TABLE + 16          # char **
        .set CANDIDATES, TABLE + 24    # char **, NULL-terminated
        .set SEARCHING, TABLE + 32     # 1: PATH is searched (only regular files count)
        .set DENIED, TABLE + 40        # (ptr, len) per candidate: "...: permission denied ..."
        .set NOT_FOUND, TABLE + 48     # ptr, then len at +56: "...: command not found ..."
        .set EXEC_ERROR, TABLE + 64    # (ptr, len) per candidate: "sandboxctl: error: PATH: "
        .set SECCOMP_ERROR, TABLE + 72 # ptr, then len at +80: "...: cannot load the seccomp filter ...: "
        .set ERRNO_TEXT, TABLE + 88    # (ptr, len) per errno: strerror + "\n" (0: unknown)
        .set ERRNO_COUNT, TABLE + 96
        .set EXEC_HINT, TABLE + 104    # ptr, then len at +112: "  hint: ..." after an exec error's errno
        .set SECCOMP_HINT, TABLE + 120 # ptr, then len at +128: "  hint: ..." after the seccomp error's errno
        .text
        .globl _start
_start:
        sub rsp, 256                    # room for a struct stat
        mov eax, 157                    # prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        mov edi, 38
        mov esi, 1
        xor edx, edx
        xor r10d, r10d
        xor r8d, r8d
        syscall
        test rax, rax
        jnz seccomp_failed
        mov eax, 317                    # seccomp(SECCOMP_SET_MODE_FILTER, 0, &fprog)
        mov edi, 1
        xor esi, esi
        mov rdx, [FPROG]
        syscall
        test rax, rax
        jnz seccomp_failed
        xor r12d, r12d                  # index of the next candidate
        mov r13, -1                     # index of the first candidate refused with EACCES
next:
        mov rax, [CANDIDATES]
        mov r14, [rax + r12 * 8]
        test r14, r14
        jz exhausted
        inc r12
        mov eax, 59                     # execve(candidate, argv, envp): returns only on failure
        mov rdi, r14
        mov rsi, [ARGV]
        mov rdx, [ENVP]
        syscall
        mov r15, rax                    # -errno
        cmp r15, -2                     # ENOENT
        je next
        cmp r15, -20                    # ENOTDIR
        je next
        cmp qword ptr [SEARCHING], 0
        je counted
        mov eax, 262                    # newfstatat(AT_FDCWD, candidate, &stat, 0)
        mov edi, -100
        mov rsi, r14
        mov rdx, rsp
        xor r10d, r10d
        syscall
        test rax, rax
        jnz next
        mov eax, [rsp + 24]             # st_mode
        and eax, 0xf000
        cmp eax, 0x8000                 # S_IFREG
        jne next
counted:
        cmp r15, -13                    # EACCES
        jne exec_failed
        cmp r13, -1
        jne next
        lea r13, [r12 - 1]
        jmp next
exhausted:
        cmp r13, -1
        je not_found
        mov rax, [DENIED]
        shl r13, 4
        mov rsi, [rax + r13]
        mov rdx, [rax + r13 + 8]
        call say
        mov edi, 126
        jmp leave
not_found:
        mov rsi, [NOT_FOUND]
        mov rdx, [NOT_FOUND + 8]
        call say
        mov edi, 127
        jmp leave
exec_failed:
        mov rax, [EXEC_ERROR]
        lea rcx, [r12 - 1]
        shl rcx, 4
        mov rsi, [rax + rcx]
        mov rdx, [rax + rcx + 8]
        call say
        mov rdi, r15
        call say_errno
        mov rsi, [EXEC_HINT]
        mov rdx, [EXEC_HINT + 8]
        call say
        mov edi, 126
        jmp leave
seccomp_failed:
        mov r15, rax
        mov rsi, [SECCOMP_ERROR]
        mov rdx, [SECCOMP_ERROR + 8]
        call say
        mov rdi, r15
        call say_errno
        mov rsi, [SECCOMP_HINT]
        mov rdx, [SECCOMP_HINT + 8]
        call say
        mov edi, 125
leave:
        mov eax, 231                    # exit_group(edi)
        syscall
        hlt

say:                                    # write(2, rsi, rdx)
        mov eax, 1
        mov edi, 2
        syscall
        ret

say_errno:                              # rdi = -errno: its text, or entry 0 when out of range
        neg rdi
        cmp rdi, [ERRNO_COUNT]
        jb known
        xor edi, edi
known:
        mov rax, [ERRNO_TEXT]
        shl rdi, 4
        mov rsi, [rax + rdi]
        mov rdx, [rax + rdi + 8]
        jmp say
