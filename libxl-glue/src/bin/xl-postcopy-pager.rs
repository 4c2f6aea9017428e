//! `xl-postcopy-pager DOMID [--dir DIR]`: the replacement pager of a
//! post-copy migration whose destination pager died after the switch
//! (`xl_postcopy::takeover`). `xl-postcopy recover DOMAIN --listen ADDR`
//! starts it when no helper of the domain answers; it runs until the
//! migration completes (exit 0) or fails (exit 1, the domain paused and
//! kept). The log goes to stderr.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut domid = None;
    let mut dir = xl_postcopy::status_file::status_dir();
    while let Some(a) = args.next() {
        match (a.as_str(), domid) {
            ("--dir", _) => match args.next() {
                Some(d) => dir = PathBuf::from(d),
                None => return usage("--dir needs a folder"),
            },
            (_, None) => match a.parse::<u32>() {
                Ok(d) => domid = Some(d),
                Err(_) => return usage(&format!("'{a}' is not a domid")),
            },
            _ => return usage(&format!("unexpected '{a}'")),
        }
    }
    let Some(domid) = domid else {
        return usage("name the domain by its id");
    };
    xl_postcopy::xtl::install();
    match xl_postcopy::takeover::serve(domid, &dir) {
        Ok(r) => {
            eprintln!(
                "xl-postcopy-pager: domain {domid}: migration completed by the replacement pager ({} pages owed at the switch; {} pauses released)",
                r.owed, r.pauses_released
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xl-postcopy-pager: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("xl-postcopy-pager: {why}\nusage: xl-postcopy-pager DOMID [--dir STATUS_DIR]");
    ExitCode::from(2)
}
