//! The Prometheus metrics listener over loopback, without root: the daemon's own listener
//! serving the daemon's own report of a real engine that crafted packets go through. Checks
//! what a scraper receives (status line, content type, samples), that the counters move with
//! the traffic, and that the listener stays bounded (only `GET /metrics`, slow clients dropped,
//! a client that never asks delays nobody for long).

mod common;
use common::*;
use pptp_alg::alg::{AlgConfig, Direction, Verdict};
use pptp_alg::daemon::metrics::{MetricsServer, CLIENT_TIMEOUT, MAX_CLIENTS};
use pptp_alg::daemon::shared::{lock, Shared, SharedRef};
use pptp_alg::daemon::status::{Installed, RulesInfo};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use Direction::{FromInside as OUT, ToInside as IN};

/// Sends `request` and reads the whole answer (the server closes the connection).
fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the answer");
    out
}

fn scrape(addr: SocketAddr, accept: &str) -> (String, String) {
    let a = http(
        addr,
        &format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n"),
    );
    let (head, body) = a.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(len, body.len(), "{head}");
    (head.to_string(), body.to_string())
}

/// The value of the sample whose line starts with `series ` (name and labels as written).
fn sample(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{body}"))
        .parse()
        .unwrap()
}

/// Runs `f` on the engine inside `shared`, as the packet thread does.
fn with_engine(shared: &SharedRef, f: impl FnOnce(&mut Sim)) {
    let mut sim = Sim::new(AlgConfig::default());
    std::mem::swap(&mut lock(shared).alg, &mut sim.alg);
    f(&mut sim);
    std::mem::swap(&mut lock(shared).alg, &mut sim.alg);
}

fn server() -> (MetricsServer, SharedRef) {
    let cfg = AlgConfig {
        max_calls_per_host: 1,
        ..AlgConfig::default()
    };
    let rules = RulesInfo {
        table: "pptp_alg".into(),
        installed: Installed::External,
        queue_backend: None,
    };
    let shared = Shared::new(pptp_alg::alg::Alg::new(cfg), rules);
    let s = MetricsServer::start("127.0.0.1:0".parse().unwrap(), shared.clone()).expect("bind");
    (s, shared)
}

#[test]
fn a_scrape_shows_counters_that_move_with_traffic() {
    let (srv, shared) = server();
    let addr = srv.local_addr();

    let (head, before) = scrape(addr, "application/openmetrics-text;version=1.0.0");
    assert!(
        head.contains("\r\nContent-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(before.ends_with("# EOF\n"), "{before}");
    assert_eq!(sample(&before, "pptp_alg_calls_created_total"), 0);
    assert_eq!(sample(&before, "pptp_alg_calls_active"), 0);

    with_engine(&shared, |sim| {
        let mut c = Conn::client_inside(host(2), 40000, SERVER);
        sim.start_control(&mut c);
        assert_eq!(sim.send(&mut c, OUT, &ocrq(0x4000)).0, Verdict::Accept);
        sim.send(&mut c, IN, &ocrp(0x0700, 0x4000, 1));
        // The host's second call is over its limit of one: refused, its segment dropped.
        assert!(matches!(
            sim.send(&mut c, OUT, &ocrq(0x4001)).0,
            Verdict::Drop(_)
        ));
        // GRE for a call nobody has.
        sim.gre_in(SERVER, 0x5555, b"nobody");
    });

    // A plain `curl` gets the classic text format.
    let (head, after) = scrape(addr, "*/*");
    assert!(
        head.contains("\r\nContent-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert_eq!(sample(&after, "pptp_alg_calls_created_total"), 1);
    assert_eq!(sample(&after, "pptp_alg_calls_active"), 1);
    assert_eq!(
        sample(
            &after,
            "pptp_alg_calls_refused_total{reason=\"max_calls_per_host\"}"
        ),
        1
    );
    assert_eq!(
        sample(
            &after,
            "pptp_alg_packets_dropped_total{reason=\"call_refused\"}"
        ),
        1
    );
    assert_eq!(
        sample(
            &after,
            "pptp_alg_gre_unknown_call_total{seen_by=\"daemon\"}"
        ),
        1
    );
    assert_eq!(sample(&after, "pptp_alg_connections"), 1);
    // SCCRQ, SCCRP, OCRQ, OCRP (the refused OCRQ is counted too).
    assert!(sample(&after, "pptp_alg_messages_total") >= 4, "{after}");
}

#[test]
fn only_get_metrics_is_served() {
    let (srv, _shared) = server();
    let addr = srv.local_addr();
    let status = |req: &str| http(addr, req).lines().next().unwrap_or("").to_string();
    assert_eq!(
        status("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(
        status("GET /status HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(status("hello\r\n\r\n"), "HTTP/1.1 400 Bad Request");
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    // The server answers after 8 KiB and closes; the rest of the request may meet a reset.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(huge.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn clients_that_never_ask_are_dropped_and_block_nobody_for_long() {
    let (srv, _shared) = server();
    let addr = srv.local_addr();
    // Every slot held by a client that connects and says nothing.
    let idle: Vec<TcpStream> = (0..MAX_CLIENTS)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let (_, body) = scrape(addr, "*/*");
    let waited = t.elapsed();
    assert!(body.contains("pptp_alg_calls_active 0"), "{body}");
    // It waited for a slot: the idle clients were dropped after their time.
    assert!(
        waited >= CLIENT_TIMEOUT - Duration::from_millis(500) && waited < CLIENT_TIMEOUT * 3,
        "waited {waited:?}"
    );
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(c.read(&mut buf).expect("closed, not timed out"), 0);
    }
}

#[test]
fn a_stopped_listener_frees_its_port() {
    let (srv, _shared) = server();
    let addr = srv.local_addr();
    drop(srv);
    assert!(TcpStream::connect(addr).is_err(), "still listening");
}
