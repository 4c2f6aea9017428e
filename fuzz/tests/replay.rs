//! Replays every committed input through its target's checks on stable,
//! without libFuzzer: `corpus/<target>/` (the seeds, from real streams) and
//! `regressions/<target>/` (inputs that once crashed a target, kept after
//! the fix). Run by `scripts/test.d/40-fuzz.sh` and by
//! `cargo test --manifest-path fuzz/Cargo.toml --tests`.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("records", xen_postcopy_fuzz::records),
    ("fault_channel", xen_postcopy_fuzz::fault_channel),
    ("recovery", xen_postcopy_fuzz::recovery),
    ("strategy", xen_postcopy_fuzz::strategy),
    ("trace", xen_postcopy_fuzz::trace),
    ("link_hello", xen_postcopy_fuzz::link_hello),
    ("tunnel_frames", xen_postcopy_fuzz::tunnel_frames),
    ("sealed_records", xen_postcopy_fuzz::sealed_records),
    ("capabilities", xen_postcopy_fuzz::capabilities),
    ("owed_set", xen_postcopy_fuzz::owed_set),
];

fn replay(dir: &str, name: &str, f: Target) -> usize {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(name);
    let Ok(entries) = std::fs::read_dir(&d) else {
        return 0;
    };
    let mut n = 0;
    let mut paths: Vec<_> = entries.map(|e| e.expect("dir entry").path()).collect();
    paths.sort();
    for p in paths {
        let bytes = std::fs::read(&p).expect("read input");
        let r = std::panic::catch_unwind(|| f(&bytes));
        assert!(r.is_ok(), "{} panics target {name}", p.display());
        n += 1;
    }
    n
}

#[test]
fn every_target_has_seeds_and_none_crashes() {
    for &(name, f) in TARGETS {
        let n = replay("corpus", name, f);
        assert!(n > 0, "no seeds in corpus/{name}");
    }
}

#[test]
fn regressions_stay_fixed() {
    for &(name, f) in TARGETS {
        replay("regressions", name, f);
    }
}
