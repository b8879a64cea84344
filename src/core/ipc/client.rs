//! The sidecar client's state machine, without Python: ids, the in-flight bound (a FIFO of
//! waiters), connections to one Unix socket (opened on demand, pipelined, the one with the fewest
//! requests in flight first), write buffers with a high-water mark, connect backoff, timeouts and
//! late answers.
//!
//! It does the socket I/O itself (non-blocking `std` sockets) and is driven by an event loop it
//! does not own: the binding calls it when a socket is readable or writable, when a request's
//! timer fires or its caller goes away, and carries out the [`Effect`]s it returns (settling
//! futures, watching sockets). Responses are decoded by the caller (they become Python objects),
//! which then reports each one with [`ClientCore::deliver`]. Messages follow `docs/sidecar.md`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Instant;

use super::codec::{BadLength, FrameReader, request_frame};
use super::metrics;

pub type ReqId = u64;
pub type ConnId = u64;

/// Connect backoff: 10 ms, doubling to 1 s, reset by a successful connect.
const BACKOFF_LOW: f64 = 0.01;
const BACKOFF_HIGH: f64 = 1.0;
/// Past this many unsent bytes on a connection, new requests wait until the peer reads.
const HIGH_WATER: usize = 64 * 1024;
/// Read at most this much per readable event before letting the loop run other callbacks.
const READ_CHUNK: usize = 256 * 1024;

/// Client settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub socket_path: PathBuf,
    pub max_frame: u32,
    pub connections: usize,
    pub max_in_flight: usize,
}

/// Why a request failed (each becomes the Python exception of the same name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Timeout(String),
    Unavailable(String),
    Protocol(String),
}

/// What the driver must do after a call into the core, in order.
#[derive(Debug)]
pub enum Effect {
    /// Settle request `id` with this failure (or, when it asked for it, with "unsent").
    Fail(ReqId, Failure),
    /// The request could not be sent at all; it asked to be told rather than failed.
    Unsent(ReqId),
    /// Watch the socket for reading.
    WatchRead(ConnId, RawFd),
    WatchWrite(ConnId, RawFd),
    UnwatchWrite(ConnId, RawFd),
    /// Stop watching the socket; the stream (if any) is closed when the effect is dropped,
    /// after the driver stopped watching its descriptor.
    Unwatch(ConnId, RawFd, Option<UnixStream>),
    /// The peer dropped a connection (the supervisor's hint that the worker may be dying).
    Lost,
    /// Call [`ClientCore::expire_due`] at this monotonic time (seconds), unless a timer is
    /// already set for an earlier one.
    Arm(f64),
    /// Call [`ClientCore::flush`] once the caller's current step is over (requests written in
    /// one step of the event loop go out in one write).
    Flush,
}

/// What became of a response's id.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Request `id` waited for it: settle it with the answer.
    Awaited,
    /// Issued, but nobody waits any more: dropped.
    Late,
    /// Never issued: a protocol error (the connection has been dropped).
    NeverIssued,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for an in-flight slot.
    Slot,
    /// Waiting for the connection's write buffer to drain.
    Write(ConnId),
    /// Written (or buffered); waiting for the answer.
    Sent(ConnId),
}

#[derive(Debug)]
struct Req {
    frame: Option<Vec<u8>>,
    method: String,
    timeout: f64,
    bounded: bool,
    has_slot: bool,
    stage: Stage,
    unsent_ok: bool,
    metered: bool,
    started: Instant,
    deadline: f64,
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    stream: UnixStream,
    fd: RawFd,
    reader: FrameReader,
    pending: HashSet<ReqId>,
    wbuf: Vec<u8>,
    wpos: usize,
    watching_write: bool,
    /// Requests waiting for the write buffer to drain, in order.
    waiting: VecDeque<ReqId>,
}

impl Conn {
    fn unsent(&self) -> usize {
        self.wbuf.len() - self.wpos
    }
}

/// The client state machine (see the module doc).
#[derive(Debug)]
pub struct ClientCore {
    opts: Options,
    path: String,
    next_id: u64,
    closed: bool,
    close_message: String,
    slots_free: usize,
    slot_queue: VecDeque<ReqId>,
    reqs: HashMap<ReqId, Req>,
    conns: Vec<Conn>,
    conn_seq: ConnId,
    failures: u32,
    retry_at: f64,
    last_error: String,
    late_answers: u64,
    /// A connection the peer closed during [`ClientCore::on_readable`], dropped by
    /// [`ClientCore::finish_read`] once the answers that came before the close are delivered.
    pending_close: Option<(ConnId, String)>,
    /// Deadlines of the requests, earliest first (entries of finished requests are skipped when
    /// they come up): one loop timer serves them all.
    deadlines: BinaryHeap<Reverse<(Deadline, ReqId)>>,
    /// A flush is scheduled.
    flush_pending: bool,
}

/// A deadline in nanoseconds, ordered.
type Deadline = u64;

fn to_nanos(seconds: f64) -> Deadline {
    (seconds.max(0.0) * 1e9) as u64
}

/// Python's `repr(s)` for a str (quotes chosen as Python chooses them).
pub fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `f"{x:g}"`: six significant digits, trailing zeros dropped.
pub fn py_g(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let exp = x.abs().log10().floor() as i32;
    if !(-4..6).contains(&exp) {
        let s = format!("{x:.5e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let m = m.trim_end_matches('0').trim_end_matches('.');
        let e: i32 = e.parse().unwrap_or(0);
        return format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    let decimals = (5 - exp).max(0) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn io_reason(e: &io::Error) -> String {
    // Like Python's OSError.strerror: the OS message without "(os error N)".
    let text = e.to_string();
    match text.rfind(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

impl ClientCore {
    pub fn new(opts: Options) -> Self {
        let path = opts.socket_path.to_string_lossy().into_owned();
        ClientCore {
            close_message: format!("the client of {path} is closed"),
            slots_free: opts.max_in_flight,
            path,
            opts,
            next_id: 1,
            closed: false,
            slot_queue: VecDeque::new(),
            reqs: HashMap::new(),
            conns: Vec::new(),
            conn_seq: 0,
            failures: 0,
            retry_at: 0.0,
            last_error: String::new(),
            late_answers: 0,
            pending_close: None,
            deadlines: BinaryHeap::new(),
            flush_pending: false,
        }
    }

    /// Forgets the connect backoff: the next request connects at once.
    pub fn reset_backoff(&mut self) {
        self.failures = 0;
        self.retry_at = 0.0;
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn close_message(&self) -> &str {
        &self.close_message
    }

    pub fn late_answers(&self) -> u64 {
        self.late_answers
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Requests written and awaiting their answer.
    pub fn in_flight(&self) -> usize {
        self.conns.iter().map(|c| c.pending.len()).sum()
    }

    /// Requests not finished yet (waiting for a slot, a write, or an answer).
    pub fn active(&self) -> usize {
        self.reqs.len()
    }

    /// Allocates an id and the frame of a request whose encoded suffix (after the id) is
    /// `suffix`; `Err` when the client is closed (`Unavailable`) or the frame would be over
    /// `max_frame` (the `ValueError` message). Nothing is sent and no id is used on error.
    #[allow(clippy::too_many_arguments)] // a request's settings, one each
    pub fn prepare(
        &mut self,
        method: &str,
        suffix: &[u8],
        timeout: f64,
        bounded: bool,
        unsent_ok: bool,
        metered: bool,
    ) -> Result<ReqId, PrepareError> {
        if self.closed {
            return Err(PrepareError::Closed(self.close_message.clone()));
        }
        let id = self.next_id;
        let frame = request_frame(id, suffix, self.opts.max_frame).map_err(|size| {
            PrepareError::TooLarge(format!(
                "the request to {} is {size} bytes encoded, over max_frame ({} bytes)",
                py_repr(method),
                self.opts.max_frame
            ))
        })?;
        self.next_id += 1;
        if metered {
            metrics::request_started();
        }
        self.reqs.insert(
            id,
            Req {
                frame: Some(frame),
                method: method.to_string(),
                timeout,
                bounded,
                has_slot: false,
                stage: Stage::Slot,
                unsent_ok,
                metered,
                started: Instant::now(),
                deadline: f64::INFINITY,
            },
        );
        Ok(id)
    }

    /// Moves request `id` forward (a slot, a connection, the write) and starts its clock: it
    /// fails with `SidecarTimeoutError` at `now + timeout`.
    pub fn start(&mut self, id: ReqId, now: f64, fx: &mut Vec<Effect>) {
        if let Some(req) = self.reqs.get_mut(&id) {
            let deadline = now + req.timeout;
            req.deadline = deadline;
            let earliest = self.deadlines.peek().map(|Reverse((d, _))| *d);
            self.deadlines.push(Reverse((to_nanos(deadline), id)));
            if earliest.is_none_or(|e| to_nanos(deadline) < e) {
                fx.push(Effect::Arm(deadline));
            }
            if self.deadlines.len() > 2 * self.reqs.len() + 1024 {
                // Mostly finished requests: rebuild from the live ones.
                self.deadlines = self
                    .reqs
                    .iter()
                    .filter(|(_, r)| r.deadline.is_finite())
                    .map(|(id, r)| Reverse((to_nanos(r.deadline), *id)))
                    .collect();
            }
        }
        self.advance(id, now, fx);
    }

    /// Fails the requests whose deadline has passed; arms the timer for the next one.
    pub fn expire_due(&mut self, now: f64, fx: &mut Vec<Effect>) {
        let limit = to_nanos(now);
        while let Some(Reverse((when, id))) = self.deadlines.peek().copied() {
            let live = self
                .reqs
                .get(&id)
                .is_some_and(|r| to_nanos(r.deadline) == when);
            if !live {
                self.deadlines.pop();
                continue;
            }
            if when > limit {
                fx.push(Effect::Arm(when as f64 / 1e9));
                return;
            }
            self.deadlines.pop();
            self.expire(id, now, fx);
        }
    }

    fn advance(&mut self, id: ReqId, now: f64, fx: &mut Vec<Effect>) {
        let Some(req) = self.reqs.get_mut(&id) else {
            return;
        };
        if req.bounded && !req.has_slot {
            if self.slots_free > 0 && self.slot_queue.is_empty() {
                self.slots_free -= 1;
                req.has_slot = true;
            } else {
                req.stage = Stage::Slot;
                self.slot_queue.push_back(id);
                return;
            }
        }
        let idx = match self.pick(now, fx) {
            Some(i) => i,
            None => match self.connect(now, fx) {
                Ok(i) => i,
                Err(message) => {
                    self.finish(id, Some(Failure::Unavailable(message)), now, fx);
                    return;
                }
            },
        };
        if self.conns[idx].unsent() > HIGH_WATER || !self.conns[idx].waiting.is_empty() {
            let conn = self.conns[idx].id;
            if let Some(req) = self.reqs.get_mut(&id) {
                req.stage = Stage::Write(conn);
            }
            self.conns[idx].waiting.push_back(id);
            return;
        }
        self.send(idx, id, now, fx);
    }

    /// Writes request `id` on connection `idx` (what the socket does not take is buffered).
    fn send(&mut self, idx: usize, id: ReqId, _now: f64, fx: &mut Vec<Effect>) {
        let Some(req) = self.reqs.get_mut(&id) else {
            return;
        };
        let frame = req.frame.take().unwrap_or_default();
        let conn_id = self.conns[idx].id;
        req.stage = Stage::Sent(conn_id);
        let conn = &mut self.conns[idx];
        conn.pending.insert(id);
        if conn.unsent() == 0 {
            conn.wbuf.clear();
            conn.wpos = 0;
        }
        conn.wbuf.extend_from_slice(&frame);

        if !self.flush_pending {
            self.flush_pending = true;
            fx.push(Effect::Flush);
        }
    }

    /// Writes what the connections have buffered (the [`Effect::Flush`] the driver scheduled);
    /// what a socket does not take now waits for it to be writable.
    pub fn flush(&mut self, now: f64, fx: &mut Vec<Effect>) {
        self.flush_pending = false;
        let mut i = 0;
        while i < self.conns.len() {
            let conn = self.conns[i].id;
            if self.conns[i].unsent() > 0 && !self.conns[i].watching_write {
                self.on_writable(conn, now, fx);
                if let Some(idx) = self.conn_index(conn)
                    && self.conns[idx].unsent() > 0
                    && !self.conns[idx].watching_write
                {
                    self.conns[idx].watching_write = true;
                    fx.push(Effect::WatchWrite(conn, self.conns[idx].fd));
                }
            }
            if self.conn_index(conn) == Some(i) {
                i += 1;
            }
        }
    }

    /// The open connection with the fewest requests in flight; opens another when all are busy
    /// and the pool has room (a failure then only sets the backoff).
    fn pick(&mut self, now: f64, fx: &mut Vec<Effect>) -> Option<usize> {
        let (best, conn) = self
            .conns
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| c.pending.len() + c.waiting.len())?;
        let busy = !conn.pending.is_empty();
        if busy
            && self.conns.len() < self.opts.connections
            && now >= self.retry_at
            && let Ok(extra) = self.connect(now, fx)
        {
            return Some(extra);
        }
        Some(best)
    }

    /// A new connection (Unix connects complete at once, or fail): its index in `conns`.
    fn connect(&mut self, now: f64, fx: &mut Vec<Effect>) -> Result<usize, String> {
        if now < self.retry_at {
            return Err(format!(
                "cannot connect to {}: {} (next attempt in {:.3} s)",
                self.path,
                self.last_error,
                self.retry_at - now
            ));
        }
        let attempt = UnixStream::connect(&self.opts.socket_path).and_then(|s| {
            s.set_nonblocking(true)?;
            Ok(s)
        });
        match attempt {
            Ok(stream) => {
                self.failures = 0;
                self.retry_at = 0.0;
                self.conn_seq += 1;
                let fd = stream.as_raw_fd();
                let id = self.conn_seq;
                self.conns.push(Conn {
                    id,
                    stream,
                    fd,
                    reader: FrameReader::new(self.opts.max_frame),
                    pending: HashSet::new(),
                    wbuf: Vec::new(),
                    wpos: 0,
                    watching_write: false,
                    waiting: VecDeque::new(),
                });
                fx.push(Effect::WatchRead(id, fd));
                Ok(self.conns.len() - 1)
            }
            Err(e) => {
                self.failures += 1;
                let delay = (BACKOFF_LOW * 2f64.powi(self.failures as i32 - 1)).min(BACKOFF_HIGH);
                self.retry_at = now + delay;
                self.last_error = io_reason(&e);
                Err(format!(
                    "cannot connect to {}: {}",
                    self.path, self.last_error
                ))
            }
        }
    }

    fn conn_index(&self, conn: ConnId) -> Option<usize> {
        self.conns.iter().position(|c| c.id == conn)
    }

    /// Reads what the socket has: complete frame bodies, to be decoded and reported with
    /// [`deliver`](Self::deliver) (or [`protocol_error`](Self::protocol_error)). A closed or
    /// failing socket, or a bad length, drops the connection (its callers are failed).
    pub fn on_readable(&mut self, conn: ConnId, now: f64, fx: &mut Vec<Effect>) -> Vec<Vec<u8>> {
        let Some(idx) = self.conn_index(conn) else {
            return Vec::new();
        };
        let mut frames = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        let mut total = 0;
        let mut lost: Option<String> = None;
        loop {
            match self.conns[idx].stream.read(&mut buf) {
                Ok(0) => {
                    lost = Some(String::new());
                    break;
                }
                Ok(n) => {
                    total += n;
                    self.conns[idx].reader.extend(&buf[..n]);
                    if total >= READ_CHUNK {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    lost = Some(format!(": {e}"));
                    break;
                }
            }
        }
        loop {
            match self.conns[idx].reader.next_frame() {
                Ok(Some(body)) => frames.push(body.to_vec()),
                Ok(None) => break,
                Err(bad) => {
                    // Frames before the bad length are still answers.
                    self.bad_length(idx, &bad, now, fx);
                    return frames;
                }
            }
        }
        if let Some(why) = lost {
            // Answers that arrived before the close are delivered first: the caller reports them,
            // then calls `peer_closed`.
            fx.push(Effect::Lost);
            let message = format!("the connection to {} was lost{why}", self.path);
            self.pending_close = Some((conn, message));
        }
        frames
    }

    fn bad_length(&mut self, idx: usize, bad: &BadLength, now: f64, fx: &mut Vec<Effect>) {
        let message = format!("{}: {bad}; connection dropped", self.path);
        self.drop_conn(idx, Failure::Protocol(message), false, now, fx);
    }

    /// After the frames of [`on_readable`](Self::on_readable) were reported: drops the
    /// connection if the peer closed it.
    pub fn finish_read(&mut self, now: f64, fx: &mut Vec<Effect>) {
        if let Some((conn, message)) = self.pending_close.take()
            && let Some(idx) = self.conn_index(conn)
        {
            self.drop_conn(idx, Failure::Unavailable(message), false, now, fx);
        }
    }

    /// Reports a decoded response for `id` on `conn`; on [`Delivery::Awaited`] the caller
    /// settles request `id` with the answer (`remote`: an error response).
    pub fn deliver(
        &mut self,
        conn: ConnId,
        id: u64,
        remote: bool,
        now: f64,
        fx: &mut Vec<Effect>,
    ) -> Delivery {
        let Some(idx) = self.conn_index(conn) else {
            return Delivery::Late;
        };
        if self.conns[idx].pending.remove(&id) {
            if let Some(req) = self.reqs.get(&id)
                && req.metered
            {
                metrics::request_finished(req.started.elapsed(), remote.then_some("remote"));
            }
            self.release(id, now, fx);
            return Delivery::Awaited;
        }
        if id < self.next_id {
            self.late_answers += 1;
            return Delivery::Late;
        }
        let message = format!(
            "{}: a response for id {id}, which was never issued; connection dropped",
            self.path
        );
        self.drop_conn(idx, Failure::Protocol(message), false, now, fx);
        Delivery::NeverIssued
    }

    /// A frame on `conn` that is not a valid response: the connection is dropped and its callers
    /// get `SidecarProtocolError`.
    pub fn protocol_error(&mut self, conn: ConnId, why: &str, now: f64, fx: &mut Vec<Effect>) {
        if let Some(idx) = self.conn_index(conn) {
            let message = format!("{}: {why}; connection dropped", self.path);
            self.drop_conn(idx, Failure::Protocol(message), false, now, fx);
        }
    }

    /// The socket of `conn` can take more bytes.
    pub fn on_writable(&mut self, conn: ConnId, now: f64, fx: &mut Vec<Effect>) {
        let Some(idx) = self.conn_index(conn) else {
            return;
        };
        let c = &mut self.conns[idx];
        while c.unsent() > 0 {
            match write_some(&mut c.stream, &c.wbuf[c.wpos..]) {
                Ok(0) => break,
                Ok(n) => c.wpos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    let message = format!("the connection to {} was lost: {e}", self.path);
                    self.drop_conn(idx, Failure::Unavailable(message), true, now, fx);
                    return;
                }
            }
        }
        if c.unsent() == 0 {
            c.wbuf.clear();
            c.wpos = 0;
        }
        // Requests that waited for room go out, in order.
        while self.conns[idx].unsent() <= HIGH_WATER {
            let Some(next) = self.conns[idx].waiting.pop_front() else {
                break;
            };
            self.send(idx, next, now, fx);
            if self.conn_index(conn) != Some(idx) {
                return; // the connection was dropped by the write
            }
        }
        let c = &mut self.conns[idx];
        if c.unsent() == 0 && c.watching_write {
            c.watching_write = false;
            fx.push(Effect::UnwatchWrite(c.id, c.fd));
        }
    }

    /// The timer of request `id` fired.
    pub fn expire(&mut self, id: ReqId, now: f64, fx: &mut Vec<Effect>) {
        let Some(req) = self.reqs.get(&id) else {
            return;
        };
        let t = py_g(req.timeout);
        let message = match req.stage {
            Stage::Slot => format!(
                "no free slot ({} requests in flight) within {t} s",
                self.opts.max_in_flight
            ),
            Stage::Write(_) => format!("{} is not reading its requests", self.path),
            Stage::Sent(_) => format!("no answer to {} within {t} s", py_repr(&req.method)),
        };
        self.finish(id, Some(Failure::Timeout(message)), now, fx);
    }

    /// The caller of request `id` stopped waiting (its task was cancelled): forget it.
    pub fn cancel(&mut self, id: ReqId, now: f64, fx: &mut Vec<Effect>) {
        if let Some(req) = self.reqs.get(&id)
            && req.metered
        {
            metrics::request_finished(req.started.elapsed(), None);
        }
        self.release(id, now, fx);
    }

    /// Fails every request, drops every connection; with `closing`, also refuses new requests.
    pub fn abort(&mut self, message: &str, closing: bool, now: f64, fx: &mut Vec<Effect>) {
        if closing {
            if self.closed {
                return;
            }
            self.closed = true;
            self.close_message = message.to_string();
        }
        while !self.conns.is_empty() {
            let last = self.conns.len() - 1;
            self.drop_conn(
                last,
                Failure::Unavailable(message.to_string()),
                false,
                now,
                fx,
            );
        }
        if closing {
            let waiting: Vec<ReqId> = self.reqs.keys().copied().collect();
            for id in waiting {
                self.finish(id, Some(Failure::Unavailable(message.to_string())), now, fx);
            }
        }
    }

    /// Drops connection `idx`: its callers (sent, and waiting for its buffer) fail with
    /// `failure`; `lost`: the peer is gone (the supervisor hears of it).
    fn drop_conn(
        &mut self,
        idx: usize,
        failure: Failure,
        lost: bool,
        now: f64,
        fx: &mut Vec<Effect>,
    ) {
        let conn = self.conns.swap_remove(idx);
        if lost {
            fx.push(Effect::Lost);
        }
        if self
            .pending_close
            .as_ref()
            .is_some_and(|(id, _)| *id == conn.id)
        {
            self.pending_close = None;
        }
        fx.push(Effect::Unwatch(conn.id, conn.fd, Some(conn.stream)));
        let mut victims: Vec<ReqId> = conn.pending.into_iter().collect();
        victims.sort_unstable();
        victims.extend(conn.waiting);
        for id in victims {
            self.finish(id, Some(failure.clone()), now, fx);
        }
    }

    /// Ends request `id` with `failure` (or quietly when `None`), releasing what it held.
    fn finish(&mut self, id: ReqId, failure: Option<Failure>, now: f64, fx: &mut Vec<Effect>) {
        let Some(req) = self.reqs.get(&id) else {
            return;
        };
        if req.metered {
            let kind = failure.as_ref().map(|f| match f {
                Failure::Timeout(_) => "timeout",
                Failure::Unavailable(_) => "unavailable",
                Failure::Protocol(_) => "protocol",
            });
            metrics::request_finished(req.started.elapsed(), kind);
        }
        let unsent_ok = req.unsent_ok && !matches!(req.stage, Stage::Sent(_));
        match failure {
            Some(Failure::Unavailable(_)) if unsent_ok => fx.push(Effect::Unsent(id)),
            Some(f) => fx.push(Effect::Fail(id, f)),
            None => {}
        }
        self.release(id, now, fx);
    }

    /// Forgets request `id` and hands its slot to the next waiter.
    fn release(&mut self, id: ReqId, now: f64, fx: &mut Vec<Effect>) {
        let Some(req) = self.reqs.remove(&id) else {
            return;
        };
        match req.stage {
            Stage::Sent(conn) | Stage::Write(conn) => {
                if let Some(idx) = self.conn_index(conn) {
                    let c = &mut self.conns[idx];
                    c.pending.remove(&id);
                    c.waiting.retain(|w| *w != id);
                }
            }
            Stage::Slot => self.slot_queue.retain(|w| *w != id),
        }
        if req.has_slot {
            match self.slot_queue.pop_front() {
                Some(next) => {
                    if let Some(r) = self.reqs.get_mut(&next) {
                        r.has_slot = true;
                    }
                    self.advance(next, now, fx);
                }
                None => self.slots_free += 1,
            }
        }
    }
}

/// Why [`ClientCore::prepare`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareError {
    /// The client is closed (`SidecarUnavailableError`).
    Closed(String),
    /// The frame would be over `max_frame` (`ValueError`).
    TooLarge(String),
}

fn write_some(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    loop {
        match stream.write(data) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}
