//! Measures piece-hash candidates on this machine: `cargo run --release -p shoal-core --example hash_speed`.
use std::time::Instant;

// The test data keeps only the low byte of a hash on purpose.
#[allow(clippy::cast_possible_truncation)]
fn main() {
    let data: Vec<u8> = (0..64u32 * 1024 * 1024).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let gib = data.len() as f64 / (1u64 << 30) as f64;
    for round in 0..3 {
        let t = Instant::now();
        let mut acc = 0u8;
        for c in data.chunks(1 << 20) {
            acc ^= shoal_core::Digest::of(c).as_bytes()[0];
        }
        let s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for c in data.chunks(1 << 20) {
            acc ^= shoal_core::PieceHash::of(c).0[0];
        }
        let b = t.elapsed().as_secs_f64();
        println!(
            "round {round}: sha256 {:.2} GiB/s, blake3 {:.2} GiB/s (1 MiB pieces, one core) [{acc}]",
            gib / s,
            gib / b
        );
    }
}
