//! Sidecar worker processes: spawned, watched and reaped natively.
//!
//! * Spawned by one long-lived thread of the process (`sark-sidecar-spawn`, started on first use,
//!   rebuilt in a forked child): `PR_SET_PDEATHSIG` fires when the *thread* that forked the child
//!   exits, so spawning from whatever thread called (an executor thread, a thread running its own
//!   event loop) could kill the workers when that thread ends.
//! * In the child, before exec: a new session (a Ctrl-C in the gateway's terminal is the
//!   gateway's to handle), `PR_SET_PDEATHSIG(SIGTERM)` on Linux, and an immediate exit if the
//!   parent is already gone. stdin is a pipe the parent holds (the worker's `--watch-stdin` sees
//!   EOF when the parent dies or closes it); stdout and stderr go to one pipe.
//! * A thread per worker reads its output (each line kept in a tail of 40 and handed to a
//!   callback), and one waits for its exit without reaping it (`waitid(WNOWAIT)`), marks it
//!   exited, then reaps it: [`Worker::signal`] never signals a pid that could have been reused.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::core::error::{Error, Result};

/// Lines of output kept per worker (for error messages).
pub const OUTPUT_TAIL: usize = 40;

/// How to start a worker.
#[derive(Debug, Clone)]
pub struct Spec {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// The whole environment of the child.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
}

type LineHook = Box<dyn Fn(&str) + Send + 'static>;
type ExitHook = Box<dyn FnOnce(i32) + Send + 'static>;

#[derive(Default)]
struct State {
    /// Python's `returncode`: the exit status, or minus the signal that killed it.
    returncode: Option<i32>,
    /// Exited (a zombie or reaped): never signal it again.
    exited: bool,
}

/// One worker process.
pub struct Worker {
    pid: u32,
    stdin: Mutex<Option<ChildStdin>>,
    tail: Mutex<VecDeque<String>>,
    state: Mutex<State>,
    exited: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Worker {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `None` while it runs.
    pub fn returncode(&self) -> Option<i32> {
        lock(&self.state).returncode
    }

    /// Sends `sig` unless the process has exited (its pid may belong to another process by now).
    pub fn signal(&self, sig: i32) {
        let state = lock(&self.state);
        if !state.exited {
            // SAFETY: kill(2) with a pid we spawned and have not reaped (see `state.exited`).
            unsafe {
                libc::kill(self.pid as libc::pid_t, sig);
            }
        }
    }

    /// Closes the worker's stdin: it sees EOF and shuts down.
    pub fn close_stdin(&self) {
        lock(&self.stdin).take();
    }

    /// The last `lines` lines of output, joined (at most 4,000 characters), or "(no output)".
    pub fn tail(&self, lines: usize) -> String {
        let tail = lock(&self.tail);
        let skip = tail.len().saturating_sub(lines);
        let text: Vec<&str> = tail.iter().skip(skip).map(String::as_str).collect();
        let text = text.join("\n");
        if text.is_empty() {
            return "(no output)".into();
        }
        let chars: Vec<char> = text.chars().collect();
        if chars.len() > 4000 {
            chars[chars.len() - 4000..].iter().collect()
        } else {
            text
        }
    }

    /// Waits up to `timeout` (forever with `None`) for the exit; the returncode if it exited.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<i32> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = lock(&self.state);
        while state.returncode.is_none() {
            match deadline {
                None => {
                    state = self
                        .exited
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    state = self
                        .exited
                        .wait_timeout(state, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
        state.returncode
    }
}

type SpawnJob = Box<dyn FnOnce() + Send + 'static>;

static SPAWNER: Mutex<Option<(u32, mpsc::Sender<SpawnJob>)>> = Mutex::new(None);

/// Runs `job` on the spawn thread (started on first use, and again in a forked child).
fn on_spawn_thread<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    let job: SpawnJob = Box::new(move || {
        let _ = tx.send(job());
    });
    let sender = {
        let mut g = lock(&SPAWNER);
        let pid = std::process::id();
        match &*g {
            Some((owner, s)) if *owner == pid => s.clone(),
            _ => {
                let (s, r) = mpsc::channel::<SpawnJob>();
                std::thread::Builder::new()
                    .name("sark-sidecar-spawn".into())
                    .spawn(move || {
                        for job in r {
                            job();
                        }
                    })
                    .map_err(|e| Error::Internal(format!("cannot start the spawn thread: {e}")))?;
                *g = Some((pid, s.clone()));
                s
            }
        }
    };
    sender
        .send(job)
        .map_err(|_| Error::Internal("the spawn thread is gone".into()))?;
    rx.recv()
        .map_err(|_| Error::Internal("the spawn thread dropped a job".into()))
}

fn start(spec: Spec) -> std::io::Result<(Child, std::io::PipeReader)> {
    let (reader, writer) = std::io::pipe()?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::from(writer.try_clone()?))
        .stderr(Stdio::from(writer));
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            #[cfg(target_os = "linux")]
            {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // The parent's copies of the pipe's write end are gone with `cmd`: EOF comes with the exit.
    drop(cmd);
    Ok((child, reader))
}

/// Waits until `pid` has exited, without reaping it (the pid stays ours: a zombie).
fn wait_exited(pid: u32) {
    // SAFETY: waitid on our own child with a valid out-pointer.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        while libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        ) != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
    }
}

/// Reaps `pid`: Python's returncode (the status, or minus the signal).
fn reap(pid: u32) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid on our own exited child.
    unsafe {
        while libc::waitpid(pid as libc::pid_t, &mut status, 0) < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
    }
    if libc::WIFSIGNALED(status) {
        -libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// Starts a worker; `on_line` gets each line of its output (on the output thread), `on_exit` its
/// returncode once it exited (on the wait thread).
pub fn spawn(spec: Spec, on_line: LineHook, on_exit: ExitHook) -> Result<Arc<Worker>> {
    let program = spec.program.to_string_lossy().into_owned();
    let (child, reader) = on_spawn_thread(move || start(spec))?
        .map_err(|e| Error::InvalidArgument(format!("cannot start a worker ({program}): {e}")))?;
    let mut child = child;
    let worker = Arc::new(Worker {
        pid: child.id(),
        stdin: Mutex::new(child.stdin.take()),
        tail: Mutex::new(VecDeque::with_capacity(OUTPUT_TAIL)),
        state: Mutex::new(State::default()),
        exited: Condvar::new(),
    });
    let pid = worker.pid;
    let out = worker.clone();
    std::thread::Builder::new()
        .name(format!("sark-sidecar-output-{pid}"))
        .spawn(move || {
            let mut lines = BufReader::new(reader);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match lines.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&raw);
                        let line = line.trim_end_matches(['\r', '\n']).to_string();
                        {
                            let mut tail = lock(&out.tail);
                            if tail.len() == OUTPUT_TAIL {
                                tail.pop_front();
                            }
                            tail.push_back(line.clone());
                        }
                        on_line(&line);
                    }
                }
            }
        })
        .map_err(|e| Error::Internal(format!("cannot start an output thread: {e}")))?;
    let waited = worker.clone();
    std::thread::Builder::new()
        .name(format!("sark-sidecar-wait-{pid}"))
        .spawn(move || {
            wait_exited(pid);
            // Exited but not reaped: from here on `signal` leaves it alone, then it is reaped.
            lock(&waited.state).exited = true;
            let code = reap(pid);
            drop(child); // reaped by hand: the handle only closes its pipes
            lock(&waited.state).returncode = Some(code);
            waited.exited.notify_all();
            on_exit(code);
        })
        .map_err(|e| Error::Internal(format!("cannot start a wait thread: {e}")))?;
    Ok(worker)
}
