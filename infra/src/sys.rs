//! The suite's only `unsafe` code: the few system calls that neither std nor a safe wrapper of
//! the `nix` crate offers, each behind a safe function whose documentation states what it does
//! and what, if anything, its caller must keep to.
//!
//! Every other module of every crate is built with `unsafe_code = "deny"` (the workspace's
//! lints) and uses std (`File::lock`, ...) or `nix`'s safe functions (`geteuid`, `pipe2`,
//! `poll`, `waitpid`, `umount2`, `umask`, `User`, `Group`, ...). What is here is here because
//! it cannot be made safe by a library that does not know how it is used:
//!
//! - [`fork`]: `nix::unistd::fork` is `unsafe` because, in a process with several threads, the
//!   child may only do what cannot deadlock on a lock another thread held. Whether that holds
//!   depends on the caller, so the obligation is written on [`fork`] and kept by its one user
//!   (zkey-cryptsetup's FUSE server, see `zkey_cryptsetup::fuse`).
//! - [`exit_immediately`]: `_exit(2)`, which a forked child needs so that the parent's exit
//!   handlers and buffered output are not run a second time; `nix` 0.29 has no wrapper, libc's
//!   is an `unsafe extern` function.
//! - Signals ([`default_sigpipe`], [`ignore_signal`], [`unmount_on_terminate`]): `sigaction`
//!   is `unsafe` because a handler runs at any point of any thread; the only handler of the
//!   suite is written here, where it can be checked to make one async-signal-safe call.
//! - [`protect_memory`]: `mlock(2)` and `madvise(MADV_DONTDUMP)` of a buffer holding key
//!   material take a raw address range; here they are given the range of one live object.
//! - [`lock_all_memory`]: `mlockall(2)` with `MCL_ONFAULT`, which `nix` 0.29's flags lack.
//!
//! Nothing else belongs here: a call that `nix` or std wraps safely is made where it is used.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
pub use nix::unistd::Pid;

/// Which side of a [`fork`] the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Fork {
    /// The calling process; the value is the child's process id.
    Parent(Pid),
    /// The new process: a copy of the caller with one thread, the one that called [`fork`].
    Child,
}

/// `fork(2)`: creates a child process that continues from this call, like the caller.
///
/// # Contract
///
/// The child holds only the calling thread. A lock that another thread held at the moment of
/// the fork stays held in the child for ever, so until the child execs or exits it must not
/// take a lock another thread may have held: no `std::io::stdout`/`stderr`, no environment
/// (`std::env::var`, `set_var`), no global thread pool; it should leave through
/// [`exit_immediately`] and never return into code that belongs to the parent (destructors of
/// the parent's values, a test harness). A child that forks again is single-threaded, so its
/// own children are under no such restriction. Allocation is fine on this platform: glibc
/// re-initialises its allocator's locks in the child.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: fork(2) copies the whole address space, so every value and reference of the
    // calling thread stays valid in the child, and the parent is unaffected. The hazard nix's
    // `unsafe` marks is in the child of a multithreaded process: state another thread was
    // changing is guarded by a lock that thread held (or by atomics), and such a lock stays
    // held, so the child can block on it for ever but does not run concurrently with a writer
    // (no other thread exists in the child). POSIX allows only async-signal-safe functions in
    // that child; beyond plain system calls, what Rust code needs there is chiefly the
    // allocator, which glibc's own atfork handlers make usable. The rest (no stdio, no
    // environment, no return into the parent's code) is the contract above, which is written
    // on this function and kept by its one caller, zkey_cryptsetup::fuse::Server::spawn.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Fork::Parent(child)),
        Ok(nix::unistd::ForkResult::Child) => Ok(Fork::Child),
        Err(e) => Err(e.into()),
    }
}

/// `_exit(2)`: ends the process at once with `code`, without running exit handlers, flushing
/// stdio or running destructors (a forked child must not run the parent's). Values still alive
/// are simply not dropped; the kernel releases the process's memory and descriptors.
pub fn exit_immediately(code: i32) -> ! {
    // SAFETY: _exit has no preconditions and never returns; skipping destructors is a leak at
    // worst, and the process's resources go with it.
    unsafe { libc::_exit(code) }
}

/// Restores the default SIGPIPE action, so that `zkey list | head` ends quietly like other
/// Unix tools instead of panicking on a closed stdout (Rust's runtime ignores SIGPIPE).
pub fn default_sigpipe() {
    // SAFETY: no handler is installed (SIG_DFL), so no code of ours runs in signal context.
    let _ = unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// Ignores `sig` in this process (SIG_IGN; inherited by children and across exec).
///
/// Refused (`InvalidInput`) for the signals of synchronous faults (SIGSEGV, SIGBUS, SIGFPE,
/// SIGILL), whose ignoring POSIX leaves undefined, and for SIGKILL and SIGSTOP, which cannot be
/// ignored.
pub fn ignore_signal(sig: Signal) -> io::Result<()> {
    use Signal::*;
    if matches!(sig, SIGSEGV | SIGBUS | SIGFPE | SIGILL | SIGKILL | SIGSTOP) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{sig} must not be ignored"),
        ));
    }
    // SAFETY: no handler is installed (SIG_IGN), so no code of ours runs in signal context;
    // the fault signals, for which SIG_IGN is undefined, are refused above.
    unsafe { signal::signal(sig, SigHandler::SigIgn) }
        .map(drop)
        .map_err(io::Error::from)
}

/// The mount point [`on_terminate`] detaches, prepared before the handler is installed.
static TERMINATE_MOUNTPOINT: OnceLock<CString> = OnceLock::new();

/// The SIGTERM/SIGINT handler of [`unmount_on_terminate`]: one `umount2(MNT_DETACH)`.
extern "C" fn on_terminate(_sig: libc::c_int) {
    // Async-signal-safe: an atomic load (OnceLock::get of an initialised cell), umount2 on a
    // string prepared before the handler was installed, and errno saved and restored so that
    // the interrupted code does not see ours.
    let saved = nix::errno::Errno::last_raw();
    if let Some(mp) = TERMINATE_MOUNTPOINT.get() {
        // SAFETY: `mp` is a valid NUL-terminated string that lives for the rest of the
        // process (a static that is never changed once set); umount2 only reads it.
        unsafe { libc::umount2(mp.as_ptr(), libc::MNT_DETACH) };
    }
    nix::errno::Errno::set_raw(saved);
}

/// Makes SIGTERM and SIGINT detach the mount at `mountpoint` (`umount2(MNT_DETACH)`) instead
/// of killing the process: a FUSE server then sees its session end and exits normally, running
/// its destructors (zeroizing its key), instead of dying with the mount left dangling.
///
/// Once per process: a second call with another path fails (`AlreadyExists`) and changes
/// nothing; a path with a NUL byte fails (`InvalidInput`).
pub fn unmount_on_terminate(mountpoint: &Path) -> io::Result<()> {
    let c = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if TERMINATE_MOUNTPOINT.get_or_init(|| c.clone()) != &c {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the terminate handler already unmounts another path",
        ));
    }
    let action = SigAction::new(
        SigHandler::Handler(on_terminate),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: `on_terminate` is async-signal-safe (see its body) and only reads a static
        // that was initialised above, before the handler can run.
        unsafe { signal::sigaction(sig, &action) }.map_err(io::Error::from)?;
    }
    Ok(())
}

/// Best effort: keeps the memory of `value` (key material) out of swap (`mlock`) and out of
/// core dumps (`madvise(MADV_DONTDUMP)` on the pages that hold it). The pages stay locked
/// until the process exits. Both calls are made; the first error is returned.
pub fn protect_memory<T: ?Sized>(value: &T) -> io::Result<()> {
    let len = std::mem::size_of_val(value);
    if len == 0 {
        return Ok(());
    }
    let addr = value as *const T as *const libc::c_void;
    let page = page_size();
    let start = (addr as usize) & !(page - 1);
    let end = (addr as usize + len).div_ceil(page) * page;
    // SAFETY: [addr, addr + len) is one live object, borrowed for the duration of the calls,
    // and the enclosing pages [start, end) are mapped because that object is in them. mlock
    // and madvise(MADV_DONTDUMP) read and write no byte of the range: they only pin the pages
    // in RAM and flag them for core dumps, which cannot invalidate any memory.
    let locked = match unsafe { libc::mlock(addr, len) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    };
    // SAFETY: as above. The pages may also hold neighbouring objects, which are then left out
    // of core dumps too: that changes no memory either.
    let advised = match unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTDUMP)
    } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    };
    locked.and(advised)
}

/// Locks every page of this process in RAM, those mapped now and those mapped later (heap
/// growth, thread stacks), each as it is first touched: `mlockall(MCL_CURRENT | MCL_FUTURE |
/// MCL_ONFAULT)`. For a process whose only purpose is to hold a key (the FUSE server): then no
/// copy the compiler or a library makes of it, on any stack or in any buffer, can reach swap.
///
/// Future mappings count against `RLIMIT_MEMLOCK` too, so a process under a small limit (not
/// root) must not call this: its later allocations could fail. `MCL_ONFAULT` keeps pages that are
/// never touched (most of the address space inherited through a fork) from being faulted in.
pub fn lock_all_memory() -> io::Result<()> {
    // SAFETY: mlockall takes only flags, reads and writes no memory of the process: it pins
    // pages in RAM, which cannot invalidate any value.
    match unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| (p as usize).max(4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_runs_the_child_and_reports_its_pid() {
        match fork().unwrap() {
            Fork::Child => exit_immediately(7),
            Fork::Parent(pid) => {
                let status = nix::sys::wait::waitpid(pid, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(pid, 7));
            }
        }
    }

    #[test]
    fn fault_signals_are_not_ignored() {
        for sig in [Signal::SIGSEGV, Signal::SIGBUS, Signal::SIGKILL] {
            let e = ignore_signal(sig).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn locks_all_memory_of_a_child() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        // In a child: the test harness's own process must not stay locked.
        match fork().unwrap() {
            Fork::Child => {
                let locked = lock_all_memory().is_ok()
                    && std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
                        s.lines().any(|l| {
                            l.starts_with("VmLck:") && l.split_whitespace().nth(1) != Some("0")
                        })
                    });
                exit_immediately(if locked { 0 } else { 1 })
            }
            Fork::Parent(pid) => {
                let status = nix::sys::wait::waitpid(pid, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(pid, 0));
            }
        }
    }

    #[test]
    fn protects_a_buffer() {
        let key = Box::new([0x5au8; 300]);
        // mlock may be refused under a small RLIMIT_MEMLOCK (ENOMEM, EPERM), nothing else.
        match protect_memory(&*key) {
            Ok(()) => {}
            Err(e) => assert!(
                matches!(e.raw_os_error(), Some(libc::ENOMEM | libc::EPERM)),
                "{e}"
            ),
        }
        assert!(protect_memory(&()).is_ok());
        assert_eq!(key[299], 0x5a);
    }
}
