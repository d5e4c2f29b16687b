//! What answering a stored blob over loopback TCP costs, sender and receiver, with the two
//! ways the node sends stored bytes: a `pread` into a reused buffer and a `write` (the HTTP
//! answer today), or `sendfile(2)` (piece uploads on plain TCP).
//!
//! `cargo run --release -p shoal-swarm --example send_cost [-- DIR]`: writes a 512 MiB file in
//! DIR (default `/dev/shm`, a tmpfs like the harness's stores), sends it five times each way in
//! turn in `CHUNK` steps to a client thread on 127.0.0.1 that reads and drops it, and prints
//! each side's thread CPU per byte and their medians. The file is removed at the end.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

const SIZE: u64 = 512 << 20;
const CHUNK: usize = 1 << 20;
const ROUNDS: usize = 5;

fn thread_cpu() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    #[allow(clippy::cast_precision_loss)]
    let secs = t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9;
    secs
}

#[allow(clippy::cast_precision_loss)]
fn ns_per_byte(secs: f64) -> f64 {
    secs * 1e9 / SIZE as f64
}

/// Sends the file once; returns (sender CPU-s, receiver CPU-s).
fn send_once(listener: &TcpListener, file: &File, sendfile: bool) -> std::io::Result<(f64, f64)> {
    let addr = listener.local_addr()?;
    let client = std::thread::spawn(move || -> std::io::Result<f64> {
        let mut s = TcpStream::connect(addr)?;
        let mut buf = vec![0u8; CHUNK];
        let (c0, mut got) = (thread_cpu(), 0u64);
        loop {
            match s.read(&mut buf)? {
                0 => break,
                n => got += n as u64,
            }
        }
        let cpu = thread_cpu() - c0;
        if got != SIZE {
            return Err(std::io::Error::other(format!("received {got} bytes of {SIZE}")));
        }
        Ok(cpu)
    });
    let (mut s, _) = listener.accept()?;
    let c0 = thread_cpu();
    let mut off = 0u64;
    let mut buf = vec![0u8; CHUNK];
    while off < SIZE {
        let want = usize::try_from(SIZE - off).map_or(CHUNK, |left| left.min(CHUNK));
        let n = if sendfile {
            let mut at = off;
            rustix::fs::sendfile(&s, file, Some(&mut at), want)?
        } else {
            let n = file.read_at(&mut buf[..want], off)?;
            s.write_all(&buf[..n])?;
            n
        };
        if n == 0 {
            return Err(std::io::Error::other("the file ended early"));
        }
        off += n as u64;
    }
    let cpu = thread_cpu() - c0;
    drop(s);
    let client_cpu = client.join().map_err(|_| std::io::Error::other("the client panicked"))??;
    Ok((cpu, client_cpu))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
    let path = dir.join(format!("shoal-send-cost-{}.blob", std::process::id()));
    let chunk: Vec<u8> = (0..u32::try_from(CHUNK).expect("a chunk fits u32"))
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect();
    let result = (|| {
        let mut f = File::create(&path)?;
        for _ in 0..SIZE / CHUNK as u64 {
            f.write_all(&chunk)?;
        }
        let file = File::open(&path)?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let mut totals = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
        for round in 0..ROUNDS {
            for (i, sendfile) in [false, true].into_iter().enumerate() {
                let (tx, rx) = send_once(&listener, &file, sendfile)?;
                let name = if sendfile { "sendfile" } else { "pread + write" };
                println!(
                    "round {round} {name:13}: sender {:.3} ns/B, receiver {:.3} ns/B, both {:.3} ns/B",
                    ns_per_byte(tx),
                    ns_per_byte(rx),
                    ns_per_byte(tx + rx)
                );
                totals[i].0.push(ns_per_byte(tx));
                totals[i].1.push(ns_per_byte(rx));
            }
        }
        for (name, (tx, rx)) in ["pread + write", "sendfile"].iter().zip(totals) {
            let both: Vec<f64> = tx.iter().zip(&rx).map(|(a, b)| a + b).collect();
            println!(
                "median {name:13}: sender {:.3} ns/B, receiver {:.3} ns/B, both {:.3} ns/B",
                median(tx),
                median(rx),
                median(both)
            );
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result
}
