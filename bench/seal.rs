//! What netcode pays per datagram to seal it: ChaCha20-Poly1305 (the AEAD renetcode uses), a key
//! set up per packet as netcode does, at the sizes the gateway and the bots send (an input, a
//! small update, a full one).
//!
//! Run: cargo bench --bench seal (the build's own poly1305 backend: the portable one, which
//! .cargo/config.toml asks for), and `RUSTFLAGS= cargo bench --bench seal` (the crate's
//! default, its AVX2 backend where the CPU has it) to compare.

use std::time::Instant;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use side_by_side::{json_path, write_json};

#[allow(dead_code)]
mod side_by_side;

fn main() {
    const PACKETS: u64 = 200_000;
    let key = [7u8; 32];
    println!("seal per packet, {PACKETS} packets a size, median of 5 runs:");
    let mut sizes = Vec::new();
    for len in [40usize, 200, 1200] {
        let mut buf = vec![1u8; len];
        let mut runs: Vec<f64> = (0..5)
            .map(|_| {
                let began = Instant::now();
                for i in 0..PACKETS {
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&i.to_le_bytes());
                    let cipher = ChaCha20Poly1305::new(&key.into());
                    let tag = cipher.encrypt_in_place_detached(Nonce::from_slice(&nonce), &[1, 2, 3], &mut buf);
                    std::hint::black_box(tag.expect("seals"));
                }
                began.elapsed().as_nanos() as f64 / PACKETS as f64
            })
            .collect();
        runs.sort_by(f64::total_cmp);
        println!("  {len:>5} bytes: {:>6.0} ns", runs[2]);
        sizes.push(serde_json::json!({"bytes": len, "ns_per_packet": runs[2]}));
    }
    let command = "cargo bench --bench seal";
    write_json(
        &json_path("seal"),
        &serde_json::json!({"bench": "seal", "command": command, "packets": PACKETS, "sizes": sizes}),
    );
    println!("reproduce: {command}");
}
