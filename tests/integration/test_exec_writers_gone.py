"""A writer of the exec path that is gone, or hidden, by the time the supervisor looks for it.

The checks that nobody else can write the caller's memory used to run after the read, against
the sandbox's processes: a thread or a CLONE_VM process that rewrote the path just after the
read and then exited was never seen, and neither was a live thread of a process whose leader had
exited (kcmp compares the caller's memory with the zombie leader's, which has none). Each attempt
here forks a caller whose path names `goodprog`, and a writer that puts `evilprog` there after a
delay that grows from attempt to attempt; a vfork parent excused as blocked that waits for
another child than the caller; and a process that changes what a relative (or empty) path starts
from. Judged from outside: the program that really ran writes
its own /proc/self/exe (the kernel's word) to a canary on an inherited descriptor; the log says
what the supervisor recorded. A record may name the wrong program only if it says it is not
verified.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

PROGRAM_C = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char exe[4096], line[4200];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    int len = snprintf(line, sizeof line, "%s %s\n", argc > 1 ? argv[1] : "?", exe);
    return write(3, line, len) == len ? 0 : 1;
}
"""

RACER_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char *page;             /* private anonymous: the path, then argv[1] */
static volatile long *shared;  /* same memory: go, start, delay, stay */
static const char *evil;

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static int writer(void *arg) {
    (void)arg;
    while (!shared[0]) {}
    while (now_ns() < shared[1] + shared[2]) {}
    memcpy(page, evil, strlen(evil) + 1);
    if (shared[3]) { struct timespec pause = {0, 50000000}; nanosleep(&pause, NULL); }
    syscall(SYS_exit, 0);
    return 0;
}

static void *stack(void) {
    return (char *)mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) + (1 << 16);
}

static int hollow(void *arg) {  /* a CLONE_VM process whose leader leaves its one thread behind */
    (void)arg;
    if (clone(writer, stack(), CLONE_VM | CLONE_THREAD | CLONE_SIGHAND, NULL) < 0) _exit(3);
    syscall(SYS_exit, 0);
    return 0;
}

static char state_of(int pid) {
    char name[64], buf[512];
    snprintf(name, sizeof name, "/proc/%d/stat", pid);
    int fd = open(name, O_RDONLY);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
    if (fd >= 0) close(fd);
    if (n <= 0) return '?';
    buf[n] = 0;
    char *end = strrchr(buf, ')');
    return end ? end[2] : '?';
}

int main(int argc, char **argv) {
    const char *good = argv[1], *mode = argv[5];
    evil = argv[2];
    int attempts = atoi(argv[3]);
    long step = atol(argv[4]);
    for (int i = 0; i < attempts; i++) {
        pid_t caller = fork();
        if (caller == 0) {
            page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            strcpy(page, good);
            snprintf(page + 2048, 32, "%d", i);
            char *args[3] = {page, page + 2048, NULL}, *envp[1] = {NULL};
            shared[2] = (i % 64) * step;
            int other;
            if (!strcmp(mode, "thread")) {
                other = clone(writer, stack(), CLONE_VM | CLONE_THREAD | CLONE_SIGHAND, NULL);
            } else if (!strcmp(mode, "process")) {
                other = clone(writer, stack(), CLONE_VM | SIGCHLD, NULL);
            } else {
                shared[3] = 1;  /* the hidden thread stays after its write */
                other = clone(hollow, stack(), CLONE_VM | SIGCHLD, NULL);
                for (int k = 0; k < 20000 && other > 0 && state_of(other) != 'Z'; k++) usleep(50);
            }
            if (other < 0) _exit(4);
            shared[1] = now_ns();
            shared[0] = 1;
            execve(page, args, envp);
            _exit(5);
        }
        int status;
        waitpid(caller, &status, 0);
    }
    return 0;
}
"""

VFORK_RACER_C = r"""
/* The excused vfork parent P waits for another vfork child C, not for the caller A (P's CLONE_VM
 * child). C exits while the supervisor looks; P wakes and rewrites A's path. */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char *page;
static volatile long *shared; /* 0: go, 1: t0, 2: delay_c, 3: delay_p */
static const char *good, *evil;

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void *stack(void) {
    return (char *)mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) + (1 << 16);
}

static int caller(void *arg) {
    (void)arg;
    while (shared[0] != 1) {}
    char *args[3] = {page, page + 2048, NULL}, *envp[1] = {NULL};
    shared[1] = now_ns();
    shared[0] = 2;
    execve(page, args, envp);
    syscall(SYS_exit, 5);
    return 0;
}

static int other_child(void *arg) {
    (void)arg;
    while (shared[0] != 2) {}
    while (now_ns() < shared[1] + shared[2]) {}
    syscall(SYS_exit, 0);
    return 0;
}

int main(int argc, char **argv) {
    good = argv[1]; evil = argv[2];
    int attempts = atoi(argv[3]);
    long step_c = atol(argv[4]), step_p = atol(argv[5]);
    for (int i = 0; i < attempts; i++) {
        pid_t p = fork();
        if (p == 0) {
            page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            strcpy(page, good);
            snprintf(page + 2048, 32, "%d", i);
            shared[2] = (i % 40) * step_c;
            shared[3] = ((i / 40) % 6) * step_p;
            int a = clone(caller, stack(), CLONE_VM | SIGCHLD, NULL);
            if (a < 0) _exit(3);
            shared[0] = 1;
            /* blocks (D) until other_child exits: the supervisor excuses this process */
            if (clone(other_child, stack(), CLONE_VM | CLONE_VFORK | SIGCHLD, NULL) < 0) _exit(4);
            long woke = now_ns();
            while (now_ns() < woke + shared[3]) {}
            memcpy(page, evil, strlen(evil) + 1);
            int status;
            waitpid(a, &status, __WALL);
            _exit(0);
        }
        waitpid(p, NULL, 0);
    }
    return 0;
}
"""

START_RACER_C = r"""
/* A CLONE_FILES sharer (not CLONE_VM) swaps the descriptor an execveat(AT_EMPTY_PATH) names, or
 * (mode cwd) a CLONE_FS sharer changes the directory a relative path starts from, and exits. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile long *shared;
static int good_fd, evil_fd;
static const char *evil_dir;
static int cwd_mode;

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static int swapper(void *arg) {
    (void)arg;
    while (!shared[0]) {}
    while (now_ns() < shared[1] + shared[2]) {}
    if (cwd_mode) { if (chdir(evil_dir)) _exit(7); }
    else dup2(evil_fd, good_fd);
    syscall(SYS_exit, 0);
    return 0;
}

int main(int argc, char **argv) {
    /* argv: gooddir evildir attempts step mode(fd|cwd); both dirs hold "prog" */
    const char *good_dir = argv[1]; evil_dir = argv[2];
    int attempts = atoi(argv[3]); long step = atol(argv[4]);
    cwd_mode = !strcmp(argv[5], "cwd") || !strcmp(argv[5], "proccwd");
    int proc_mode = !strcmp(argv[5], "procfd") || !strcmp(argv[5], "proccwd");
    shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    char *stack = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    stack += 1 << 16;
    char gp[4096], ep[4096];
    snprintf(gp, sizeof gp, "%s/prog", good_dir); snprintf(ep, sizeof ep, "%s/prog", evil_dir);
    for (int i = 0; i < attempts; i++) {
        shared[0] = 0;
        pid_t a = fork();
        if (a == 0) {
            char number[32]; snprintf(number, sizeof number, "%d", i);
            char name[8] = "prog", rel[8] = "./prog", empty[1] = "";
            char *args[3] = {name, number, NULL}, *envp[1] = {NULL};
            good_fd = open(gp, O_PATH); evil_fd = open(ep, O_PATH);
            if (chdir(good_dir)) _exit(6);
            shared[2] = (i % 64) * step;
            int q = clone(swapper, stack, (cwd_mode ? CLONE_FS : CLONE_FILES) | SIGCHLD, NULL);
            if (q < 0) _exit(4);
            shared[1] = now_ns(); shared[0] = 1;
            char procpath[64];
            if (!strcmp(argv[5], "procfd")) snprintf(procpath, sizeof procpath, "/proc/self/fd/%d", good_fd);
            else snprintf(procpath, sizeof procpath, "/proc/self/cwd/prog");
            if (proc_mode) execve(procpath, args, envp);
            else if (cwd_mode) execve(rel, args, envp);
            else syscall(SYS_execveat, good_fd, empty, args, envp, AT_EMPTY_PATH);
            _exit(5);
        }
        waitpid(a, NULL, 0);
    }
    return 0;
}
"""

ATTEMPTS = 128
START_ATTEMPTS = 256
VFORK_ATTEMPTS = 640
STEP_NS = 15000  # delays of 0 to ~1 ms: the supervisor's checks take ~0.1-0.5 ms between read and answer


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> Path:
    """The programs, compiled once for the module (each test copies them into its workspace)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler on this machine")
    built = tmp_path_factory.mktemp("racers")
    for name, source in (("goodprog", PROGRAM_C), ("racer", RACER_C), ("start-racer", START_RACER_C),
                         ("vfork-racer", VFORK_RACER_C)):
        (built / f"{name}.c").write_text(source)
        subprocess.run([cc, "-O2", "-o", str(built / name), str(built / f"{name}.c")], check=True)
    return built


@pytest.fixture
def racer(sandbox, programs: Path) -> Path:
    bin_dir = sandbox.workspace / "bin"
    bin_dir.mkdir()
    for name in ("racer", "start-racer", "vfork-racer", "goodprog"):
        shutil.copy(programs / name, bin_dir / name)
    shutil.copy(programs / "goodprog", bin_dir / "evilprog")
    for directory in ("gd", "ed"):  # one program name in two directories (it writes its own exe's path)
        (bin_dir / directory).mkdir()
        shutil.copy(programs / "goodprog", bin_dir / directory / "prog")
    return bin_dir


@pytest.mark.parametrize("mode", ["thread", "process", "hidden-thread", "vfork-parent-of-another", "descriptor",
                                  "working-directory"])
def test_a_record_naming_another_program_than_ran_is_never_verified(sandbox, racer, mode):
    """descriptor / working-directory: a process sharing the caller's descriptor table
    (CLONE_FILES) or working directory (CLONE_FS), not its memory, dup2s another file onto the
    descriptor of an execveat(AT_EMPTY_PATH), or chdirs under a relative path, and exits.
    vfork-parent-of-another: the caller is the clone(CLONE_VM) child of a parent that then
    vforks another child, which exits while the supervisor looks, so the parent, excused as
    blocked, wakes and writes. Its race is narrow (~1 win in 500 attempts without the fix; 640
    attempts find it about 3 times in 4): a regression here shows as a failure most of the
    time, not every time (tests/unit/test_exec_parents.py holds the rule itself)."""
    canary = sandbox.workspace / "ran"
    good, evil = racer / "goodprog", racer / "evilprog"
    attempts = ATTEMPTS
    if mode == "vfork-parent-of-another":
        attempts = VFORK_ATTEMPTS
        command = f"{racer / 'vfork-racer'} {good} {evil} {attempts} {STEP_NS} {STEP_NS}"
    elif mode in ("descriptor", "working-directory"):  # execveat(fd, "", AT_EMPTY_PATH) / execve("./prog")
        attempts, good, evil = START_ATTEMPTS, racer / "gd" / "prog", racer / "ed" / "prog"
        how = "fd" if mode == "descriptor" else "cwd"
        command = f"{racer / 'start-racer'} {good.parent} {evil.parent} {attempts} {STEP_NS} {how}"
    else:
        command = f"{racer / 'racer'} {good} {evil} {attempts} {STEP_NS} {mode}"
    result = sandbox.sh(f"exec 3>>{canary}; {command}", timeout=120)
    assert result.returncode == 0, result.stderr
    ran = dict(line.split() for line in canary.read_text().splitlines())
    records = [json.loads(line) for line in sandbox.log_path.read_text().splitlines()]
    execs = {r["argv"][1]: r for r in records
             if r["event"] == "exec" and len(r.get("argv", ())) == 2 and r["argv"][1].isdigit()}
    assert len(execs) == attempts, sorted(execs)
    lies = [(i, r) for i, r in execs.items() if r["path"] != ran.get(i) and r["verified"]]
    assert not lies, lies[:3]
    # the race was won: the supervisor read goodprog, and evilprog ran (so the check above proves something)
    won = [r for i, r in execs.items() if r["path"] == str(good) and ran.get(i) == str(evil)]
    assert won, "the writer never won the race on this machine"
    assert all(r["verified"] is False for r in won), won[:3]
