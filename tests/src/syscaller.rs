//! A child process that makes real system calls and reports what each one
//! returned, for the syscall fault tests.
//!
//! The child is forked from the test (no extra binary, so it runs in the VM
//! matrix as is); before its calls it can join a cgroup, a network
//! namespace and take a command name (comm). After `fork` it only makes raw
//! system calls on memory prepared before the fork (async-signal-safe), and
//! an `alarm` bounds its life time. It returns, per errno, how many calls
//! failed with it.

use std::{
    collections::BTreeMap,
    ffi::CString,
    net::SocketAddrV4,
    os::unix::ffi::OsStrExt,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};

/// The calls the child can make, `count` times each run.
#[derive(Clone, Debug)]
pub enum Call {
    /// socket(AF_INET, SOCK_STREAM) + connect + close (with linger 0, so no
    /// TIME_WAIT is left behind).
    TcpConnect(SocketAddrV4),
    /// socket(AF_INET, SOCK_DGRAM) + close.
    UdpSocket,
    /// openat(AT_FDCWD, path, O_RDONLY) + close.
    OpenRead(std::path::PathBuf),
    /// write(fd, 16 bytes) to a file opened once (O_WRONLY|O_APPEND).
    Write(std::path::PathBuf),
    /// getpid(2) as a raw system call (no LSM or cgroup hook has it).
    Getpid,
}

/// Where the child runs.
#[derive(Clone, Debug, Default)]
pub struct Placement<'a> {
    /// A cgroup directory to join (its `cgroup.procs`).
    pub cgroup: Option<&'a Path>,
    /// A network namespace file to enter (`/run/netns/NAME`).
    pub netns: Option<&'a Path>,
    /// A command name to take (prctl PR_SET_NAME), at most 15 bytes.
    pub comm: Option<&'a str>,
}

/// What the calls returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub ok: u64,
    /// errno -> calls that failed with it.
    pub errors: BTreeMap<i32, u64>,
    /// Set up failures of the child (joining the cgroup, ...), as errno.
    pub setup_errno: Option<i32>,
}

impl Outcome {
    pub fn failed_with(&self, errno: i32) -> u64 {
        self.errors.get(&errno).copied().unwrap_or(0)
    }

    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn total(&self) -> u64 {
        self.ok + self.failed()
    }
}

/// Slots of the report: [ok, setup errno, errno 0..=4095 counts, done].
const SLOTS: usize = 2 + 4096 + 1;
const DONE: usize = SLOTS - 1;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Forks a child that makes `call` `count` times from `place`, and returns
/// the outcome. The child is killed after `limit`.
pub fn run_calls(
    place: &Placement<'_>,
    call: &Call,
    count: u32,
    limit: Duration,
) -> Result<Outcome> {
    spawn_calls(place, call, count, limit)?.go()
}

/// A child set up in its place and waiting for [`go`](Self::go) before its
/// calls, so a test can target its pid first.
pub struct Pending {
    pub pid: i32,
    gate: i32,
    shared: *mut u32,
    limit: Duration,
}

impl Pending {
    /// Lets the child make its calls and collects the outcome.
    pub fn go(self) -> Result<Outcome> {
        // SAFETY: our descriptor; closing the gate wakes the child.
        unsafe { libc::close(self.gate) };
        collect(self.pid, self.shared, self.limit)
    }
}

/// As [`run_calls`], but the child waits for [`Pending::go`].
pub fn spawn_calls(
    place: &Placement<'_>,
    call: &Call,
    count: u32,
    limit: Duration,
) -> Result<Pending> {
    ensure!(count <= 1_000_000, "count too large");
    let procs = place
        .cgroup
        .map(|c| CString::new(c.join("cgroup.procs").as_os_str().as_bytes()))
        .transpose()?;
    let netns = place
        .netns
        .map(|n| CString::new(n.as_os_str().as_bytes()))
        .transpose()?;
    let comm = place.comm.map(CString::new).transpose()?;
    let path = match call {
        Call::OpenRead(p) | Call::Write(p) => Some(CString::new(p.as_os_str().as_bytes())?),
        _ => None,
    };
    // The report lives in memory shared with the child, so reporting needs
    // no system call (the child's own writes may be the ones failing).
    // SAFETY: a fresh anonymous shared mapping of SLOTS u32s.
    let shared = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SLOTS * 4,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    ensure!(
        shared != libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    let shared = shared as *mut u32;
    let mut gate = [0i32; 2];
    // SAFETY: valid array of two ints.
    ensure!(
        unsafe { libc::pipe2(gate.as_mut_ptr(), libc::O_CLOEXEC) } == 0,
        "pipe2"
    );
    let secs = limit.as_secs().clamp(1, 600) as u32;
    // SAFETY: the child below only makes raw system calls on memory
    // allocated before the fork, then `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // Child.
        unsafe {
            let report = std::slice::from_raw_parts_mut(shared, SLOTS);
            libc::close(gate[1]);
            libc::alarm(secs);
            let setup = child_setup(procs.as_ref(), netns.as_ref(), comm.as_ref());
            // Wait for the parent to close its end of the gate.
            let mut byte = 0u8;
            while libc::read(gate[0], &mut byte as *mut u8 as *mut libc::c_void, 1) < 0 {}
            if setup != 0 {
                report[1] = setup as u32;
            } else {
                child_calls(call, path.as_ref(), count, report);
            }
            report[DONE] = 1;
            libc::_exit(0);
        }
    }
    // Parent.
    // SAFETY: our copy of the child's end.
    unsafe { libc::close(gate[0]) };
    Ok(Pending {
        pid,
        gate: gate[1],
        shared,
        limit,
    })
}

fn collect(pid: i32, shared: *mut u32, limit: Duration) -> Result<Outcome> {
    let until = Instant::now() + limit + Duration::from_secs(2);
    let mut status = 0;
    loop {
        // SAFETY: our child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r != 0 {
            break;
        }
        if Instant::now() >= until {
            // SAFETY: our child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: the mapping made in spawn_calls; the child is gone.
    let buf: Vec<u32> = unsafe { std::slice::from_raw_parts(shared, SLOTS).to_vec() };
    // SAFETY: unmapping our own mapping once.
    unsafe { libc::munmap(shared as *mut libc::c_void, SLOTS * 4) };
    ensure!(buf[DONE] == 1, "the calling child died before reporting");
    let slot = |i: usize| buf[i];
    let mut out = Outcome {
        ok: u64::from(slot(0)),
        setup_errno: match slot(1) {
            0 => None,
            e => Some(e as i32),
        },
        ..Outcome::default()
    };
    for e in 1..4096 {
        let n = slot(2 + e);
        if n > 0 {
            out.errors.insert(e as i32, u64::from(n));
        }
    }
    if let Some(e) = out.setup_errno {
        bail!(
            "the calling child could not set itself up: {}",
            std::io::Error::from_raw_os_error(e)
        );
    }
    Ok(out)
}

/// Joins the cgroup and namespace and takes the name; returns 0 or an errno.
unsafe fn child_setup(
    procs: Option<&CString>,
    netns: Option<&CString>,
    comm: Option<&CString>,
) -> i32 {
    unsafe {
        if let Some(p) = procs {
            let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return errno();
            }
            // "0" is the writing process itself.
            let rc = libc::write(fd, b"0".as_ptr() as *const libc::c_void, 1);
            let e = errno();
            libc::close(fd);
            if rc != 1 {
                return e;
            }
        }
        if let Some(n) = netns {
            let fd = libc::open(n.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return errno();
            }
            libc::close(fd);
        }
        if let Some(c) = comm
            && libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) != 0
        {
            return errno();
        }
    }
    0
}

unsafe fn child_calls(call: &Call, path: Option<&CString>, count: u32, report: &mut [u32]) {
    let mut tally = |rc: i64| {
        if rc >= 0 {
            report[0] += 1;
        } else {
            let e = errno() as usize;
            if e < 4096 {
                report[2 + e] += 1;
            }
        }
    };
    unsafe {
        match call {
            Call::TcpConnect(addr) => {
                let sa = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: addr.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(addr.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                for _ in 0..count {
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                    if fd < 0 {
                        report[1] = errno() as u32;
                        return;
                    }
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        &linger as *const _ as *const libc::c_void,
                        size_of::<libc::linger>() as u32,
                    );
                    let rc = libc::connect(
                        fd,
                        &sa as *const _ as *const libc::sockaddr,
                        size_of::<libc::sockaddr_in>() as u32,
                    );
                    tally(i64::from(rc));
                    libc::close(fd);
                }
            }
            Call::UdpSocket => {
                for _ in 0..count {
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                    tally(i64::from(fd));
                    if fd >= 0 {
                        libc::close(fd);
                    }
                }
            }
            Call::OpenRead(_) => {
                let Some(p) = path else { return };
                for _ in 0..count {
                    let fd =
                        libc::openat(libc::AT_FDCWD, p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    tally(i64::from(fd));
                    if fd >= 0 {
                        libc::close(fd);
                    }
                }
            }
            Call::Getpid => {
                for _ in 0..count {
                    tally(libc::syscall(libc::SYS_getpid));
                }
            }
            Call::Write(_) => {
                let Some(p) = path else { return };
                let fd = libc::open(
                    p.as_ptr(),
                    libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC,
                );
                if fd < 0 {
                    report[1] = errno() as u32;
                    return;
                }
                let data = [b'x'; 16];
                for _ in 0..count {
                    let rc = libc::write(fd, data.as_ptr() as *const libc::c_void, data.len());
                    tally(rc as i64);
                }
                libc::close(fd);
            }
        }
    }
}

/// A TCP listener in one side of a namespace pair that accepts (and
/// drops) connections on a thread until dropped, bounded to two minutes:
/// the peer of `Call::TcpConnect`.
pub struct Acceptor {
    pub addr: SocketAddrV4,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Acceptor {
    pub fn start(pair: &crate::NetnsPair, side: crate::Side, port: u16) -> Result<Acceptor> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let ip = match side {
            crate::Side::A => pair.v4_a(),
            crate::Side::B => pair.v4_b(),
        };
        let addr = SocketAddrV4::new(ip, port);
        let sock = pair.run_in(side, move || std::net::TcpListener::bind(addr))??;
        sock.set_nonblocking(true)?;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::Relaxed) && Instant::now() < until {
                if sock.accept().is_err() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Ok(Acceptor { addr, stop })
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `count` TCP connects from side a of `pair` to `to`, from inside
/// `cgroup` or from outside it.
pub fn tcp_connects(
    pair: &crate::NetnsPair,
    cgroup: Option<&Path>,
    to: SocketAddrV4,
    count: u32,
) -> Result<Outcome> {
    let ns = pair.netns_path(crate::Side::A);
    let place = Placement {
        cgroup,
        netns: Some(&ns),
        comm: None,
    };
    run_calls(
        &place,
        &Call::TcpConnect(to),
        count,
        Duration::from_secs(60),
    )
}
