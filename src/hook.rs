//! Runs an admin's program (a decision hook, an authentication command) safely: no shell, a
//! clean environment, the input as bytes on stdin, a deadline, and bounded output.
//!
//! The program runs in its own process group, so that a timeout kills whatever it started too.
//! Its stdout is kept up to a limit (a flood kills it and is an error); of its stderr, the
//! first [`STDERR_KEPT`] bytes are kept for the log. Callers decide what an exit code means.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Bytes of stderr kept for the log.
pub const STDERR_KEPT: usize = 2048;

/// How often a running program is checked for having ended.
const POLL: Duration = Duration::from_millis(5);

/// The `PATH` a program sees; nothing else of otad's environment is passed on.
const CLEAN_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How a program may run.
#[derive(Debug, Clone)]
pub struct Limits {
    /// From start to exit, stdin written and stdout read.
    pub timeout: Duration,
    /// Most bytes of stdout accepted.
    pub max_output: usize,
}

/// A program that ran to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// Its exit code; `None` when a signal ended it (a crash).
    pub code: Option<i32>,
    /// The signal that ended it, where one did.
    pub signal: Option<i32>,
    /// Everything it wrote to stdout (at most `Limits::max_output` bytes).
    pub stdout: Vec<u8>,
    /// The start of what it wrote to stderr, lossily decoded.
    pub stderr: String,
}

impl Finished {
    /// The first line of stdout, trimmed, lossily decoded.
    pub fn first_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.stdout);
        text.lines().next().unwrap_or("").trim().to_string()
    }
}

/// Why a program gave no answer.
#[derive(Debug)]
pub enum HookError {
    /// It could not be started (missing, not executable).
    Start(PathBuf, io::Error),
    /// It did not finish within the timeout; it was killed.
    TimedOut(PathBuf, Duration),
    /// It wrote more than the output limit to stdout; it was killed.
    OutputTooLong(PathBuf, usize),
    /// Waiting for it failed.
    Wait(PathBuf, io::Error),
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookError::Start(program, err) => write!(
                f,
                "{}: cannot start: {err}; check the path and that it is executable",
                program.display()
            ),
            HookError::TimedOut(program, after) => write!(
                f,
                "{}: no answer within {} ms; killed",
                program.display(),
                after.as_millis()
            ),
            HookError::OutputTooLong(program, limit) => write!(
                f,
                "{}: wrote more than {limit} bytes to stdout; killed",
                program.display()
            ),
            HookError::Wait(program, err) => {
                write!(f, "{}: waiting for it: {err}", program.display())
            }
        }
    }
}

impl std::error::Error for HookError {}

/// What the stdout reader saw.
enum Output {
    Complete(Vec<u8>),
    TooLong,
}

/// Runs `program` with no arguments, `input` on stdin, under `limits`.
pub fn run(program: &Path, input: &[u8], limits: &Limits) -> Result<Finished, HookError> {
    let deadline = Instant::now() + limits.timeout;
    let mut command = Command::new(program);
    // SAFETY: between fork and exec only async-signal-safe calls: the server blocks SIGTERM,
    // SIGINT and SIGHUP for its signal thread, and the program must not inherit that mask
    // (it could not be stopped, nor could its own `timeout` work).
    unsafe {
        command.pre_exec(|| {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut child = command
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .env("LANG", "C.UTF-8")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|err| HookError::Start(program.to_path_buf(), err))?;

    // Stdin, stdout and stderr each on a thread, so that a program that reads nothing or
    // writes much cannot wedge the others; the threads end when the pipes close.
    if let Some(mut stdin) = child.stdin.take() {
        let input = input.to_vec();
        thread::spawn(move || {
            // A program that exits without reading its input is its own business.
            let _ = stdin.write_all(&input);
        });
    }
    let (stdout_sender, stdout_receiver) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        let max_output = limits.max_output;
        thread::spawn(move || {
            let _ = stdout_sender.send(read_bounded(stdout, max_output));
        });
    }
    let (stderr_sender, stderr_receiver) = mpsc::channel();
    if let Some(stderr) = child.stderr.take() {
        thread::spawn(move || {
            let mut kept = Vec::new();
            let _ = stderr.take(STDERR_KEPT as u64).read_to_end(&mut kept);
            let _ = stderr_sender.send(kept);
        });
    }

    // Wait for the exit, killing the group on a timeout or a stdout flood.
    let mut stdout: Option<Vec<u8>> = None;
    let status = loop {
        if stdout.is_none() {
            match stdout_receiver.try_recv() {
                Ok(Output::Complete(bytes)) => stdout = Some(bytes),
                Ok(Output::TooLong) => {
                    kill_group(&mut child);
                    return Err(HookError::OutputTooLong(
                        program.to_path_buf(),
                        limits.max_output,
                    ));
                }
                Err(_) => {}
            }
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(err) => {
                kill_group(&mut child);
                return Err(HookError::Wait(program.to_path_buf(), err));
            }
        }
        if Instant::now() >= deadline {
            kill_group(&mut child);
            return Err(HookError::TimedOut(program.to_path_buf(), limits.timeout));
        }
        thread::sleep(POLL);
    };

    // The program has exited; its stdout ends when every process holding the pipe has.
    let stdout = match stdout {
        Some(bytes) => bytes,
        None => {
            let left = deadline.saturating_duration_since(Instant::now());
            match stdout_receiver.recv_timeout(left) {
                Ok(Output::Complete(bytes)) => bytes,
                Ok(Output::TooLong) => {
                    kill_group(&mut child);
                    return Err(HookError::OutputTooLong(
                        program.to_path_buf(),
                        limits.max_output,
                    ));
                }
                Err(_) => {
                    // Something it left behind still holds stdout open.
                    kill_group(&mut child);
                    return Err(HookError::TimedOut(program.to_path_buf(), limits.timeout));
                }
            }
        }
    };
    // Whatever it left running in its process group (a `cmd &`) goes with it, so that no
    // stray process keeps a pipe, and with it a reader thread, alive.
    signal_group(&child, libc::SIGKILL);
    let stderr = stderr_receiver
        .recv_timeout(Duration::from_millis(50))
        .unwrap_or_default();

    Ok(Finished {
        code: status.code(),
        signal: status.signal(),
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// Reads `from` to its end, or gives up once it is over `limit` bytes.
fn read_bounded(from: impl Read, limit: usize) -> Output {
    let mut bytes = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    match from.take(cap).read_to_end(&mut bytes) {
        Ok(_) if bytes.len() > limit => Output::TooLong,
        _ => Output::Complete(bytes),
    }
}

/// Kills the program and everything in its process group, and reaps it.
fn kill_group(child: &mut Child) {
    signal_group(child, libc::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends `signal` to the process group the program leads.
fn signal_group(child: &Child, signal: libc::c_int) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals the process group the child leads
        // (it was started with process_group(0)); it touches no memory of ours.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn limits(ms: u64) -> Limits {
        Limits {
            timeout: Duration::from_millis(ms),
            max_output: 1024,
        }
    }

    #[test]
    fn input_reaches_stdin_and_the_exit_code_and_stdout_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let hook = script(dir.path(), "echo", "cat; echo; echo second >&2; exit 3");
        let finished = run(&hook, b"{\"UDID\":\"x\"}", &limits(5000)).unwrap();
        assert_eq!(finished.code, Some(3));
        assert_eq!(finished.signal, None);
        assert_eq!(finished.stdout, b"{\"UDID\":\"x\"}\n");
        assert_eq!(finished.first_line(), "{\"UDID\":\"x\"}");
        assert_eq!(finished.stderr, "second\n");
    }

    #[test]
    fn the_environment_is_clean() {
        let dir = tempfile::tempdir().unwrap();
        let hook = script(dir.path(), "env", "env | sort; pwd");
        let finished = run(&hook, b"", &limits(5000)).unwrap();
        let text = String::from_utf8(finished.stdout).unwrap();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|line| line.split('=').next())
            .filter(|name| !name.starts_with('/'))
            .collect();
        // sh itself may add PWD, SHLVL and _; nothing of the test runner's environment.
        for name in &names {
            assert!(
                ["PATH", "LANG", "PWD", "SHLVL", "_"].contains(name),
                "unexpected variable {name} in {text}"
            );
        }
        assert!(text.contains(&format!("PATH={CLEAN_PATH}")));
        assert!(text.ends_with("/\n"), "runs in /: {text}");
    }

    #[test]
    fn a_hanging_program_and_what_it_started_are_killed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let body = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let hook = script(dir.path(), "hang", &body);

        let started = Instant::now();
        let err = run(&hook, b"", &limits(200)).unwrap_err();
        assert!(matches!(err, HookError::TimedOut(_, _)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));

        thread::sleep(Duration::from_millis(2500));
        assert!(
            !marker.exists(),
            "the background child outlived the timeout"
        );
    }

    #[test]
    fn what_a_program_leaves_running_is_ended_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        // Stdout closed, stderr still the pipe: a reader thread would wait for this child.
        let body = format!("(sleep 1; touch {}) >/dev/null & exit 0", marker.display());
        let hook = script(dir.path(), "leave", &body);
        let finished = run(&hook, b"", &limits(5000)).unwrap();
        assert_eq!(finished.code, Some(0));
        thread::sleep(Duration::from_millis(1500));
        assert!(
            !marker.exists(),
            "the background child outlived its program"
        );
    }

    #[test]
    fn the_program_can_be_stopped_with_the_signals_the_server_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let hook = script(dir.path(), "mask", "grep SigBlk /proc/self/status");
        let mut blocked: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid set, blocked in this test thread only.
        unsafe {
            libc::sigemptyset(&mut blocked);
            libc::sigaddset(&mut blocked, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &blocked, std::ptr::null_mut());
        }
        let finished = run(&hook, b"", &limits(5000)).unwrap();
        // SAFETY: as above, undone.
        unsafe {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &blocked, std::ptr::null_mut());
        }
        assert_eq!(finished.first_line(), "SigBlk:\t0000000000000000");
    }

    #[test]
    fn a_flood_of_output_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let hook = script(dir.path(), "flood", "yes flood");
        let err = run(&hook, b"", &limits(5000)).unwrap_err();
        assert!(matches!(err, HookError::OutputTooLong(_, 1024)), "{err}");
    }

    #[test]
    fn a_crash_is_reported_with_its_signal() {
        let dir = tempfile::tempdir().unwrap();
        let hook = script(dir.path(), "crash", "kill -SEGV $$");
        let finished = run(&hook, b"", &limits(5000)).unwrap();
        assert_eq!(finished.code, None);
        assert_eq!(finished.signal, Some(libc::SIGSEGV));
    }

    #[test]
    fn a_missing_program_cannot_start() {
        let err = run(Path::new("/nonexistent/hook"), b"", &limits(1000)).unwrap_err();
        assert!(matches!(err, HookError::Start(_, _)));
        assert!(err.to_string().contains("/nonexistent/hook: cannot start"));
    }

    #[test]
    fn a_program_that_ignores_its_input_still_answers() {
        let dir = tempfile::tempdir().unwrap();
        let hook = script(dir.path(), "ignore", "echo allowed");
        let input = vec![b'x'; 1 << 20];
        let finished = run(&hook, &input, &limits(5000)).unwrap();
        assert_eq!(finished.code, Some(0));
        assert_eq!(finished.first_line(), "allowed");
    }
}
