//! What a well-behaved daemon owes its service manager, without libsystemd: a listening socket
//! passed by socket activation (`LISTEN_FDS`, sd_listen_fds(3)), readiness and status through
//! `NOTIFY_SOCKET` (sd_notify(3)), and the signals it is stopped and reloaded with.
//!
//! Each part is a no-op outside systemd, so `otad serve` behaves the same from a shell.

use std::env;
use std::fmt;
use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The first file descriptor systemd passes (SD_LISTEN_FDS_START).
const FIRST_PASSED_FD: RawFd = 3;

/// Most passed sockets otad looks at; it serves one.
const MAX_PASSED_FDS: usize = 16;

/// Why a passed socket cannot be used.
#[derive(Debug)]
pub enum ActivationError {
    /// LISTEN_FDS is not a number, or more sockets than otad takes.
    BadCount(String),
    /// More than one socket passed: otad serves one, and would not know which.
    SeveralSockets(usize),
    /// The passed descriptor is not a listening TCP socket.
    NotATcpListener(io::Error),
}

impl fmt::Display for ActivationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActivationError::BadCount(value) => write!(
                f,
                "LISTEN_FDS={value:?}: not a count of passed sockets; check the .socket unit"
            ),
            ActivationError::SeveralSockets(n) => write!(
                f,
                "systemd passed {n} sockets; otad serves one: give otad.socket one \
                 ListenStream="
            ),
            ActivationError::NotATcpListener(err) => write!(
                f,
                "the socket systemd passed is not a listening TCP socket ({err}); \
                 use ListenStream= with an address:port"
            ),
        }
    }
}

impl std::error::Error for ActivationError {}

/// The listening socket systemd passed to this process, if it passed one.
///
/// The variables are removed afterwards, so that no program otad starts (a hook) believes the
/// socket is meant for it.
pub fn passed_listener() -> Result<Option<TcpListener>, ActivationError> {
    let pid = env::var("LISTEN_PID").ok();
    let fds = env::var("LISTEN_FDS").ok();
    forget_activation_variables();

    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    // Meant for another process (a parent that did not clear them).
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let count = fds
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n <= MAX_PASSED_FDS)
        .ok_or_else(|| ActivationError::BadCount(fds.clone()))?;
    match count {
        0 => Ok(None),
        1 => listener_from_fd(FIRST_PASSED_FD).map(Some),
        n => Err(ActivationError::SeveralSockets(n)),
    }
}

fn forget_activation_variables() {
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // Called at start-up in `serve`, before any other thread exists.
        env::remove_var(name);
    }
}

/// Takes ownership of `fd` as a TCP listener after checking it is one.
fn listener_from_fd(fd: RawFd) -> Result<TcpListener, ActivationError> {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `kind`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(ActivationError::NotATcpListener(io::Error::last_os_error()));
    }
    if kind != libc::SOCK_STREAM {
        return Err(ActivationError::NotATcpListener(io::Error::other(
            "not a stream socket",
        )));
    }

    // SAFETY: systemd handed this descriptor to us and nothing else in the process uses it.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    listener
        .local_addr()
        .map_err(ActivationError::NotATcpListener)?;
    set_cloexec(fd);
    Ok(listener)
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own; a failure only leaves it inheritable.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// Tells the service manager something (`READY=1`, `STOPPING=1`, `RELOADING=1`,
/// `STATUS=...`), when it listens on `NOTIFY_SOCKET`; does nothing otherwise.
pub fn notify(state: &str) -> io::Result<()> {
    let Some(path) = env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    send_notification(&path.to_string_lossy(), state)
}

/// Sends `state` to the datagram socket at `path` (`@name` for the abstract namespace).
fn send_notification(path: &str, state: &str) -> io::Result<()> {
    let address = match path.strip_prefix('@') {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes())?,
        None => SocketAddr::from_pathname(path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &address)?;
    Ok(())
}

/// A signal otad acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: finish what is in flight, then exit.
    Stop,
    /// SIGHUP: reload what can be reloaded (the TLS certificate, the log).
    Reload,
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and every thread it starts later,
/// so that they reach only [`wait_for_signal`]. Call it first thing in `serve`.
pub fn block_signals() -> io::Result<()> {
    let set = handled_signals();
    // SAFETY: pthread_sigmask with a valid, initialised set and no old-set output.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Waits for the next SIGTERM, SIGINT or SIGHUP (blocked beforehand by [`block_signals`]).
pub fn wait_for_signal() -> io::Result<Signal> {
    let set = handled_signals();
    loop {
        let mut number: libc::c_int = 0;
        // SAFETY: sigwait reads the initialised set and writes one int.
        let rc = unsafe { libc::sigwait(&set, &mut number) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        match number {
            libc::SIGHUP => return Ok(Signal::Reload),
            libc::SIGTERM | libc::SIGINT => return Ok(Signal::Stop),
            _ => continue,
        }
    }
}

fn handled_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; sigaddset adds valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn notifications_reach_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        send_notification(&path.to_string_lossy(), "READY=1").unwrap();
        let mut buffer = [0u8; 64];
        let n = receiver.recv(&mut buffer).unwrap();
        assert_eq!(buffer.get(..n), Some(&b"READY=1"[..]));

        let name = format!("otad-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&address).unwrap();
        send_notification(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = receiver.recv(&mut buffer).unwrap();
        assert_eq!(buffer.get(..n), Some(&b"STOPPING=1"[..]));

        let missing = dir.path().join("nobody");
        assert!(send_notification(&missing.to_string_lossy(), "READY=1").is_err());
    }

    #[test]
    fn a_passed_listener_is_taken_only_when_it_is_a_stream_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let fd = listener.into_raw_fd();
        let taken = listener_from_fd(fd).unwrap();
        assert_eq!(taken.local_addr().unwrap(), address);

        let datagram = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = datagram.into_raw_fd();
        let err = listener_from_fd(fd).unwrap_err();
        assert!(
            err.to_string().contains("not a listening TCP socket"),
            "{err}"
        );
        // SAFETY: the test still owns the descriptor listener_from_fd refused.
        drop(unsafe { std::net::UdpSocket::from_raw_fd(fd) });
    }

    #[test]
    fn activation_errors_tell_the_admin_what_to_fix() {
        let err = ActivationError::SeveralSockets(2);
        assert!(err.to_string().contains("one ListenStream="), "{err}");
        let err = ActivationError::BadCount("x".into());
        assert!(err.to_string().contains("LISTEN_FDS=\"x\""), "{err}");
    }
}
