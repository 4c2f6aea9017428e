//! Runs one experiment: `cargo run --release -p postcopy-sim --example
//! experiment -- NAME [OUT_DIR] [--quick]`. Until `xl-postcopy simulate`
//! exists, this is the way to run them.

use postcopy_sim::experiments::{run_experiment, ExperimentOptions, EXPERIMENTS};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let Some(name) = pos.first() else {
        eprintln!("usage: experiment NAME [OUT_DIR] [--quick]");
        for e in EXPERIMENTS {
            eprintln!("  {:<14} {}", e.name, e.about);
        }
        std::process::exit(2);
    };
    let opts = ExperimentOptions {
        out_dir: pos.get(1).map(|p| p.into()),
        quick,
        ..ExperimentOptions::default()
    };
    match run_experiment(name, &opts) {
        Ok(r) => print!("{r}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
