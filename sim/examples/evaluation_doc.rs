//! Regenerates `docs/evaluation.md` from `sim/doc/evaluation.md.in` by
//! running every experiment (writing charts and JSON to `sim/results/`).
//!
//! `cargo run --release -p postcopy-sim --example evaluation_doc` from the
//! workspace root. Markers in the template:
//! `{{table NAME N}}` (table N of experiment NAME), `{{findings NAME}}`,
//! `{{setup NAME}}`.

use std::collections::HashMap;
use std::path::Path;

use postcopy_sim::experiments::{run_experiment, ExperimentOptions, ExperimentResult, EXPERIMENTS};

fn bullets(lines: &[String]) -> String {
    lines.iter().map(|l| format!("- {l}\n")).collect()
}

fn render(template: &str, results: &HashMap<&str, ExperimentResult>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("}}")
            .ok_or_else(|| "unclosed {{".to_string())?
            + start;
        let words: Vec<&str> = rest[start + 2..end].split_whitespace().collect();
        let get = |name: &str| {
            results
                .get(name)
                .ok_or_else(|| format!("no experiment {name}"))
        };
        let text = match words.as_slice() {
            ["table", name, n] => {
                let n: usize = n.parse().map_err(|_| format!("bad table index {n}"))?;
                let r = get(name)?;
                r.tables
                    .get(n)
                    .map(ToString::to_string)
                    .ok_or_else(|| format!("{name} has no table {n}"))?
            }
            ["findings", name] => bullets(&get(name)?.findings),
            ["setup", name] => bullets(&get(name)?.setup),
            other => return Err(format!("unknown marker {other:?}")),
        };
        out.push_str(&text);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn main() {
    let template_path = Path::new("sim/doc/evaluation.md.in");
    let template = match std::fs::read_to_string(template_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "{}: {e} (run from the workspace root)",
                template_path.display()
            );
            std::process::exit(1);
        }
    };
    let opts = ExperimentOptions {
        out_dir: Some("sim/results".into()),
        ..ExperimentOptions::default()
    };
    let mut results = HashMap::new();
    for e in EXPERIMENTS {
        eprintln!("running {}", e.name);
        match run_experiment(e.name, &opts) {
            Ok(r) => {
                let txt = format!("sim/results/{}.txt", e.name);
                if let Err(err) = std::fs::write(&txt, r.to_string()) {
                    eprintln!("{txt}: {err}");
                    std::process::exit(1);
                }
                results.insert(e.name, r);
            }
            Err(err) => {
                eprintln!("{}: {err}", e.name);
                std::process::exit(1);
            }
        }
    }
    match render(&template, &results) {
        Ok(doc) => {
            if let Err(e) = std::fs::write("docs/evaluation.md", doc) {
                eprintln!("docs/evaluation.md: {e}");
                std::process::exit(1);
            }
            eprintln!("wrote docs/evaluation.md");
        }
        Err(e) => {
            eprintln!("template: {e}");
            std::process::exit(1);
        }
    }
}
