//! Memory per call and per control connection, measured with a counting
//! allocator: the numbers the README documents, and the bound of issue's
//! target (10,000 live calls in at most 2.5 MB).

mod common;
use common::*;
use pptp_alg::alg::{AlgConfig, Direction};
use std::alloc::{GlobalAlloc, Layout, System};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Engine heap bytes for `conns` connections with `per_conn` calls each
/// (inside ids spread over high bytes, as real clients' ids are).
fn heap_for(conns: u16, per_conn: u16) -> isize {
    heap_with(u32::from(conns), per_conn, |i, k| {
        (i as u16)
            .wrapping_mul(per_conn)
            .wrapping_add(k)
            .rotate_left(8)
    })
}

/// Engine heap bytes for `conns` connections (each its own host) with
/// `per_conn` calls each, call `k` of connection `i` using inside id
/// `id(i, k)`.
fn heap_with(conns: u32, per_conn: u16, id: impl Fn(u32, u16) -> u16) -> isize {
    let cfg = AlgConfig {
        max_calls: 70_000,
        max_connections: 70_000,
        max_calls_per_host: 1000,
        ..AlgConfig::default()
    };
    let before = LIVE.load(Ordering::Relaxed);
    let mut sim = Sim::new(cfg);
    for i in 0..conns {
        let h = Ipv4Addr::from(0x0a01_0000 + i);
        let mut c = Conn::client_inside(h, 40000, SERVER);
        sim.start_control(&mut c);
        for k in 0..per_conn {
            let (_, out) = sim.send(&mut c, Direction::FromInside, &ocrq(id(i, k)));
            let nat = u16_at(&out, 12);
            sim.send(&mut c, Direction::ToInside, &ocrp(0x100 + k, nat, 1));
        }
        sim.events.clear();
    }
    sim.events = Vec::new();
    assert_eq!(
        sim.alg.stats().calls_active,
        u64::from(conns) * u64::from(per_conn)
    );
    let used = LIVE.load(Ordering::Relaxed) - before;
    drop(sim);
    used
}

#[test]
fn memory_per_call_and_connection() {
    let one_conn_each = heap_for(10_000, 1);
    let hundred_per_conn = heap_for(100, 100);
    let per_call = hundred_per_conn / 10_000;
    let per_conn_and_call = one_conn_each / 10_000;
    println!("10,000 calls on 100 connections: {hundred_per_conn} B ({per_call} B/call)");
    println!("10,000 calls on 10,000 connections: {one_conn_each} B ({per_conn_and_call} B/call+connection)");
    assert!(hundred_per_conn <= 2_500_000, "{hundred_per_conn}");
    // A control connection of its own per call costs about 400 B more.
    assert!(one_conn_each <= 6_300_000, "{one_conn_each}");
    // Colliding ids at carrier scale, 60,000 calls to one server: the
    // per-call cost is the same whatever ids the hosts use.
    let same_250 = heap_with(240, 250, |_, k| 0x0100 + k);
    let all_4000 = heap_with(60_000, 1, |_, _| 0x4000);
    println!(
        "60,000 calls, 240 hosts with ids 0x0100..0x01f9: {same_250} B ({} B/call)",
        same_250 / 60_000
    );
    println!(
        "60,000 calls, 60,000 hosts with id 0x4000: {all_4000} B ({} B/call+connection)",
        all_4000 / 60_000
    );
    assert!(same_250 / 60_000 <= 215, "{same_250}");
    assert!(all_4000 / 60_000 <= 600, "{all_4000}");
}
