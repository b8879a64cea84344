//! The sidecar's native side without Python: the frame codec, JSON text as Python's `json.dumps`
//! writes it, the client state machine against a real Unix socket server, and worker processes.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sark_native::core::ipc::client::{
    ClientCore, Delivery, Effect, Failure, Options, PrepareError, py_g, py_repr,
};
use sark_native::core::ipc::codec::{
    FrameReader, push_json_string, push_py_float, request_frame, request_suffix,
};
use sark_native::core::ipc::process::{Spec, spawn};

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[test]
fn frames_split_and_joined() {
    let mut r = FrameReader::new(100);
    let mut stream = frame(b"{\"a\":1}");
    stream.extend(frame(b"[2]"));
    // Byte by byte: nothing until a frame is complete.
    let mut got = Vec::new();
    for b in &stream {
        r.extend(std::slice::from_ref(b));
        while let Some(f) = r.next_frame().unwrap() {
            got.push(f.to_vec());
        }
    }
    assert_eq!(got, vec![b"{\"a\":1}".to_vec(), b"[2]".to_vec()]);
    assert_eq!(r.buffered(), 0);
}

#[test]
fn bad_lengths_are_refused_before_the_body() {
    let mut r = FrameReader::new(10);
    r.extend(&0u32.to_be_bytes());
    assert_eq!(
        r.next_frame().unwrap_err().to_string(),
        "frame length 0 is out of range (1..10)"
    );
    let mut r = FrameReader::new(10);
    r.extend(&u32::MAX.to_be_bytes()); // 4 GiB announced, nothing allocated
    assert!(r.next_frame().is_err());
    assert!(r.buffered() <= 4);
}

fn json_str(s: &str) -> String {
    let mut out = Vec::new();
    push_json_string(&mut out, s);
    String::from_utf8(out).unwrap()
}

fn py_float(f: f64) -> String {
    let mut out = Vec::new();
    push_py_float(&mut out, f);
    String::from_utf8(out).unwrap()
}

#[test]
fn json_text_as_python_writes_it() {
    assert_eq!(json_str("a\"b\\c"), r#""a\"b\\c""#);
    assert_eq!(json_str("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
    assert_eq!(
        json_str("\u{1}\u{1f}\u{7f}é€"),
        "\"\\u0001\\u001f\u{7f}é€\""
    );
    for (f, repr) in [
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (1.0, "1.0"),
        (2.5, "2.5"),
        (0.1, "0.1"),
        (1e-4, "0.0001"),
        (1e-5, "1e-05"),
        (1.5e-7, "1.5e-07"),
        (123456789.125, "123456789.125"),
        (1e15, "1000000000000000.0"),
        (1e16, "1e+16"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (5e-324, "5e-324"),
        (-3.25e100, "-3.25e+100"),
        (0.30000000000000004, "0.30000000000000004"),
    ] {
        assert_eq!(py_float(f), repr, "{f}");
    }
    assert_eq!(py_g(5.0), "5");
    assert_eq!(py_g(0.25), "0.25");
    assert_eq!(py_g(1e-7), "1e-07");
    assert_eq!(py_g(1234567.0), "1.23457e+06");
    assert_eq!(py_repr("echo"), "'echo'");
    assert_eq!(py_repr("it's"), "\"it's\"");
}

#[test]
fn request_frames_and_their_cap() {
    let suffix = request_suffix("echo", b"{\"x\":1}");
    let f = request_frame(7, &suffix, 1000).unwrap();
    assert_eq!(
        &f[4..],
        br#"{"id":7,"method":"echo","params":{"x":1}}"#.as_slice()
    );
    assert_eq!(
        u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
        f.len() - 4
    );
    assert_eq!(request_frame(7, &suffix, 10), Err(f.len() - 4));
}

fn sock_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sn-ipc-{}-{name}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("s.sock");
    let _ = std::fs::remove_file(&path);
    path
}

fn core(path: &Path, max_in_flight: usize) -> ClientCore {
    ClientCore::new(Options {
        socket_path: path.to_path_buf(),
        max_frame: 1 << 20,
        connections: 1,
        max_in_flight,
    })
}

/// Flushes what the core buffered (the driver's job) and returns the effects.
fn drive(c: &mut ClientCore, fx: &mut Vec<Effect>) {
    if fx.iter().any(|e| matches!(e, Effect::Flush)) {
        c.flush(0.0, fx);
    }
}

fn read_request(s: &mut UnixStream) -> serde_json::Value {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn conn_of(fx: &[Effect]) -> u64 {
    fx.iter()
        .find_map(|e| match e {
            Effect::WatchRead(c, _) => Some(*c),
            _ => None,
        })
        .expect("a connection")
}

fn read_frames(c: &mut ClientCore, conn: u64, fx: &mut Vec<Effect>) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let frames = c.on_readable(conn, 0.0, fx);
        if !frames.is_empty() || Instant::now() > deadline {
            return frames;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn pipelined_requests_late_answers_and_unknown_ids() {
    let path = sock_path("pipe");
    let listener = UnixListener::bind(&path).unwrap();
    let mut c = core(&path, 10);
    let mut fx = Vec::new();
    let a = c
        .prepare(
            "echo",
            &request_suffix("echo", b"1"),
            5.0,
            true,
            false,
            false,
        )
        .unwrap();
    let b = c
        .prepare(
            "echo",
            &request_suffix("echo", b"2"),
            5.0,
            true,
            false,
            false,
        )
        .unwrap();
    c.start(a, 0.0, &mut fx);
    c.start(b, 0.0, &mut fx);
    drive(&mut c, &mut fx);
    let conn = conn_of(&fx);
    let (mut server, _) = listener.accept().unwrap();
    assert_eq!(read_request(&mut server)["id"], 1);
    assert_eq!(read_request(&mut server)["id"], 2);
    assert_eq!(c.in_flight(), 2);
    // Answers out of order; b first.
    server.write_all(&frame(br#"{"id":2,"result":2}"#)).unwrap();
    server.write_all(&frame(br#"{"id":1,"result":1}"#)).unwrap();
    fx.clear();
    let frames = read_frames(&mut c, conn, &mut fx);
    assert!(!frames.is_empty());
    assert_eq!(c.deliver(conn, 2, false, 0.0, &mut fx), Delivery::Awaited);
    // Request a times out; its answer arrives later and is dropped, never handed on.
    c.expire(a, 10.0, &mut fx);
    assert!(fx.iter().any(|e| matches!(e, Effect::Fail(id, Failure::Timeout(m)) if *id == a && m == "no answer to 'echo' within 5 s")));
    assert_eq!(c.deliver(conn, 1, false, 0.0, &mut fx), Delivery::Late);
    assert_eq!(c.late_answers(), 1);
    // An id never issued drops the connection.
    assert_eq!(
        c.deliver(conn, 99, false, 0.0, &mut fx),
        Delivery::NeverIssued
    );
    assert_eq!(c.connection_count(), 0);
}

#[test]
fn the_in_flight_bound_queues_and_times_out_waiters() {
    let path = sock_path("slots");
    let _listener = UnixListener::bind(&path).unwrap();
    let mut c = core(&path, 1);
    let mut fx = Vec::new();
    let a = c
        .prepare("m", &request_suffix("m", b"null"), 1.0, true, false, false)
        .unwrap();
    let b = c
        .prepare("m", &request_suffix("m", b"null"), 1.0, true, false, false)
        .unwrap();
    c.start(a, 0.0, &mut fx);
    c.start(b, 0.0, &mut fx);
    assert_eq!(c.active(), 2);
    fx.clear();
    c.expire(b, 2.0, &mut fx);
    assert!(fx.iter().any(|e| matches!(e, Effect::Fail(id, Failure::Timeout(m)) if *id == b && m.starts_with("no free slot (1 requests in flight)"))));
    // a's slot passes to the next waiter when a ends.
    let d = c
        .prepare("m", &request_suffix("m", b"null"), 1.0, true, false, false)
        .unwrap();
    c.start(d, 0.0, &mut fx);
    c.cancel(a, 0.0, &mut fx);
    assert_eq!(c.active(), 1);
    assert_eq!(c.in_flight(), 1);
}

#[test]
fn connect_failures_back_off_and_closing_refuses() {
    let path = sock_path("nobody");
    let mut c = core(&path, 4);
    let mut fx = Vec::new();
    let a = c
        .prepare("m", &request_suffix("m", b"null"), 1.0, true, false, false)
        .unwrap();
    c.start(a, 100.0, &mut fx);
    let first = fx
        .iter()
        .find_map(|e| match e {
            Effect::Fail(_, Failure::Unavailable(m)) => Some(m.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        first.contains("cannot connect to") && first.contains("No such file"),
        "{first}"
    );
    fx.clear();
    let b = c
        .prepare("m", &request_suffix("m", b"null"), 1.0, true, false, false)
        .unwrap();
    c.start(b, 100.001, &mut fx);
    assert!(fx.iter().any(
        |e| matches!(e, Effect::Fail(_, Failure::Unavailable(m)) if m.contains("next attempt in"))
    ));
    // A request that asked to be told gets Unsent instead of a failure.
    fx.clear();
    let u = c
        .prepare("m", &request_suffix("m", b"null"), 1.0, true, true, false)
        .unwrap();
    c.start(u, 100.002, &mut fx);
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Unsent(id) if *id == u))
    );
    c.abort("closed now", true, 0.0, &mut fx);
    assert_eq!(
        c.prepare("m", b"}", 1.0, true, false, false),
        Err(PrepareError::Closed("closed now".into()))
    );
}

#[test]
fn frames_over_the_cap_are_refused_without_an_id() {
    let path = sock_path("cap");
    let mut c = ClientCore::new(Options {
        socket_path: path,
        max_frame: 32,
        connections: 1,
        max_in_flight: 1,
    });
    let big = request_suffix("m", &[b'1'; 64]);
    let err = c.prepare("m", &big, 1.0, true, false, false).unwrap_err();
    assert!(matches!(err, PrepareError::TooLarge(m) if m.contains("over max_frame (32 bytes)")));
    let ok = c
        .prepare("m", &request_suffix("m", b"1"), 1.0, true, false, false)
        .unwrap();
    assert_eq!(ok, 1, "no id was used by the refused request");
}

#[test]
fn worker_processes_output_exit_and_signals() {
    let spec = |script: &str| Spec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        env: std::env::vars_os().collect(),
        cwd: None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let w = spawn(
        spec("echo one; echo two >&2; exit 3"),
        Box::new(|_| {}),
        Box::new(move |code| {
            let _ = tx.send(code);
        }),
    )
    .unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 3);
    assert_eq!(w.wait(Some(Duration::from_secs(5))), Some(3));
    // The output thread may still be draining: wait for both lines.
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.tail(20).lines().count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let tail = w.tail(20);
    assert!(tail.contains("one") && tail.contains("two"), "{tail}");
    // A running worker: SIGKILL is reported as -9; signals after the exit are ignored.
    let sleeper = spawn(spec("sleep 30"), Box::new(|_| {}), Box::new(|_| {})).unwrap();
    assert_eq!(sleeper.wait(Some(Duration::from_millis(50))), None);
    sleeper.signal(libc::SIGKILL);
    assert_eq!(sleeper.wait(Some(Duration::from_secs(10))), Some(-9));
    sleeper.signal(libc::SIGKILL);
    // EOF on stdin ends a worker that reads it.
    let reader = spawn(
        spec("cat > /dev/null; exit 0"),
        Box::new(|_| {}),
        Box::new(|_| {}),
    )
    .unwrap();
    reader.close_stdin();
    assert_eq!(reader.wait(Some(Duration::from_secs(10))), Some(0));
    assert!(
        spawn(
            Spec {
                program: "/nonexistent/python".into(),
                args: vec![],
                env: vec![],
                cwd: None
            },
            Box::new(|_| {}),
            Box::new(|_| {})
        )
        .is_err()
    );
}
