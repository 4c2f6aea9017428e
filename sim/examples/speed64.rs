//! The speed target of issue 9: a 64 GiB guest at 10 Gb/s simulates in
//! under 10 s (release build).
//!
//! `cargo run --release -p postcopy-sim --example speed64 [GIB]`

use std::time::Instant;

use postcopy_sim::experiments::{scale_workload, SCALE_NS_PER_PAGE};
use postcopy_sim::net::NetModel;
use postcopy_sim::{simulate, SimConfig};

fn main() {
    let gib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let t0 = Instant::now();
    let w = match scale_workload(gib * 1024, SCALE_NS_PER_PAGE, 2009) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let gen = t0.elapsed();
    let cfg = SimConfig {
        net: NetModel::datacenter(10.0),
        ..SimConfig::default()
    };
    let r = match simulate(&w, &cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let total = t0.elapsed();
    println!(
        "{gib} GiB guest ({} pages) at 10 Gb/s, bubble: simulated {:.1} s of migration, {} faults",
        r.guest_pages,
        r.engine.total_time_ms / 1e3,
        r.engine.network_faults
    );
    println!(
        "wall: workload {:.2} s + simulation {:.2} s = {:.2} s ({:.0} ns per page) — target < 10 s: {}",
        gen.as_secs_f64(),
        r.wall_ms / 1e3,
        total.as_secs_f64(),
        total.as_nanos() as f64 / r.guest_pages as f64,
        if total.as_secs_f64() < 10.0 { "met" } else { "MISSED" }
    );
}
