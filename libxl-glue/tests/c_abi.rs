//! Compiles `tests/c/abi_caller.c` with the system C compiler against
//! `include/libxl_postcopy.h`, links it against the `libxl_postcopy.so`
//! cargo just built, runs it, and checks that what the header says matches
//! the Rust side: ABI version, SONAME, record numbers, strategy ids and the
//! layout of the parameter structs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use postcopy::prepage::StrategySpec;
use postcopy::records::{RecordType, RECORD_TABLE};
use xl_postcopy::ffi::{RestoreParams, SaveParams};

fn built_library() -> PathBuf {
    // The test binary lives in target/<profile>/deps; cargo builds the
    // cdylib next to it (and uplifts a copy to target/<profile>).
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    for dir in [deps, deps.parent().unwrap_or(deps)] {
        let p = dir.join("libxl_postcopy.so");
        if p.is_file() {
            return p;
        }
    }
    panic!("libxl_postcopy.so not found near {}", exe.display());
}

fn compile_and_run(dlopen: bool) -> (String, String, bool) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = built_library();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("libxl-glue-abi");
    std::fs::create_dir_all(&out).expect("tmp dir");
    // libxenguest dlopen()s the SONAME: give it that name, as an install would.
    let soname = out.join(xl_postcopy::SONAME);
    let _ = std::fs::remove_file(&soname);
    std::os::unix::fs::symlink(&lib, &soname).expect("symlink");
    let exe = out.join("abi_caller");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args([
            "-std=gnu99",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-D__XEN_TOOLS__=1",
        ])
        .arg("-I")
        .arg(manifest.join("include"))
        .arg("-o")
        .arg(&exe)
        .arg(manifest.join("tests/c/abi_caller.c"))
        .arg(&soname)
        .arg(format!("-Wl,-rpath,{}", out.display()))
        .arg("-ldl")
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc}: {e}"));
    assert!(
        status.success(),
        "the C caller does not compile against the header"
    );
    let status_dir = out.join(if dlopen { "status-dlopen" } else { "status" });
    std::fs::create_dir_all(&status_dir).expect("status dir");
    let mut cmd = Command::new(&exe);
    cmd.env("XEN_POSTCOPY_STATUS_DIR", &status_dir);
    if dlopen {
        cmd.arg("--dlopen").env("LD_LIBRARY_PATH", &out);
    }
    let run = cmd.output().expect("run abi_caller");
    (
        String::from_utf8_lossy(&run.stdout).into_owned(),
        String::from_utf8_lossy(&run.stderr).into_owned(),
        run.status.success(),
    )
}

fn values(stdout: &str) -> HashMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn c_caller_compiles_links_and_agrees_with_the_rust_side() {
    let (stdout, stderr, ok) = compile_and_run(true);
    assert!(ok, "abi_caller failed:\n{stdout}\n{stderr}");
    let v = values(&stdout);
    let num = |k: &str| -> u64 {
        v.get(k)
            .unwrap_or_else(|| panic!("{k} missing in:\n{stdout}"))
            .parse()
            .unwrap_or_else(|_| panic!("{k} not a number"))
    };
    assert_eq!(
        num("LIBXL_POSTCOPY_ABI_VERSION"),
        u64::from(xl_postcopy::ABI_VERSION)
    );
    assert_eq!(v["LIBXL_POSTCOPY_SONAME"], xl_postcopy::SONAME);
    assert_eq!(v.get("dlopen").map(String::as_str), Some("ok"));
    assert_eq!(v.get("failures").map(String::as_str), Some("0"));
    // libxenguest's precopy loop driven through the C ABI: N rounds, the
    // auto rule (a stalled guest: the rule decides when round 3's count is
    // known and libxenguest still sends it; a converging one: below 50
    // pages after round 5), and an admin's switch file after round 2.
    assert_eq!(
        num("LIBXL_POSTCOPY_PRECOPY_AUTO"),
        u64::from(xl_postcopy::precopy::PRECOPY_AUTO)
    );
    assert_eq!(num("policy.fixed"), 3);
    assert_eq!(num("policy.auto_stalled"), 4);
    assert_eq!(num("policy.auto_converging"), 6);
    assert_eq!(num("policy.request"), 2);

    // The header defines exactly the engine's record table...
    let header = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("include/libxl_postcopy.h"),
    )
    .expect("read the header");
    let defined: Vec<&str> = header
        .lines()
        .filter_map(|l| l.strip_prefix("#define REC_TYPE_"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for info in RECORD_TABLE {
        assert!(
            defined.contains(&info.name),
            "{} ({:#x}) is in postcopy::records::RECORD_TABLE but not in \
             include/libxl_postcopy.h: add `#define REC_TYPE_{} 0x{:08x}U` \
             there and SHOW(REC_TYPE_{}) to tests/c/abi_caller.c",
            info.name,
            info.rtype as u32,
            info.name,
            info.rtype as u32,
            info.name
        );
    }
    for name in &defined {
        assert!(
            RECORD_TABLE.iter().any(|i| i.name == *name),
            "REC_TYPE_{name} is in the header but not in the engine's table"
        );
    }
    // ...with the engine's numbers, as the C compiler sees them.
    for info in RECORD_TABLE {
        let key = format!("REC_TYPE_{}", info.name);
        assert_eq!(num(&key), u64::from(info.rtype as u32), "{key}");
    }
    assert_eq!(num("REC_TYPE_POSTCOPY_BEGIN"), RecordType::Begin as u64);

    // Strategy ids: the header's defines are the engine's wire ids.
    let ids = [
        ("LIBXL_POSTCOPY_PREPAGE_NONE", StrategySpec::None),
        ("LIBXL_POSTCOPY_PREPAGE_LINEAR", StrategySpec::Linear),
        ("LIBXL_POSTCOPY_PREPAGE_BUBBLE", StrategySpec::Bubble),
        (
            "LIBXL_POSTCOPY_PREPAGE_BUBBLE_FORWARD",
            StrategySpec::BubbleForward,
        ),
        (
            "LIBXL_POSTCOPY_PREPAGE_MULTI_PIVOT",
            StrategySpec::MultiPivot(7),
        ),
        ("LIBXL_POSTCOPY_PREPAGE_HISTORY", StrategySpec::History),
    ];
    for (key, spec) in ids {
        assert_eq!(num(key), u64::from(spec.wire_id().0), "{key}");
    }
    assert_eq!(ids.len(), StrategySpec::ALL.len());

    // What the parser answered for each name is what the engine says.
    for spec in StrategySpec::ALL
        .into_iter()
        .chain([StrategySpec::MultiPivot(3)])
    {
        let name = spec.to_string();
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("parse {name}=")))
            .or_else(|| {
                (name == "multi-pivot:7")
                    .then(|| stdout.lines().find(|l| l.starts_with("parse multi-pivot=")))
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no parse line for {name}"));
        let (_, rest) = line.split_once('=').unwrap();
        let f: Vec<i64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
        let (id, arg) = spec.wire_id();
        assert_eq!(
            (f[0], f[1], f[2]),
            (0, i64::from(id), i64::from(arg)),
            "{line}"
        );
    }
    assert!(
        stdout.contains("parse-bad bogus=-22 unknown pre-paging strategy 'bogus'"),
        "{stdout}"
    );

    // The parameter structs have the layout the header gives them.
    assert_eq!(num("save_params.size"), size_of::<SaveParams>() as u64);
    assert_eq!(
        num("save_params.xch"),
        std::mem::offset_of!(SaveParams, xch) as u64
    );
    assert_eq!(
        num("save_params.lg"),
        std::mem::offset_of!(SaveParams, lg) as u64
    );
    assert_eq!(
        num("save_params.stream_fd"),
        std::mem::offset_of!(SaveParams, stream_fd) as u64
    );
    assert_eq!(
        num("save_params.strategy"),
        std::mem::offset_of!(SaveParams, strategy) as u64
    );
    assert_eq!(
        num("save_params.flags"),
        std::mem::offset_of!(SaveParams, flags) as u64
    );
    assert_eq!(
        num("restore_params.size"),
        size_of::<RestoreParams>() as u64
    );
    assert_eq!(
        num("restore_params.back_fd"),
        std::mem::offset_of!(RestoreParams, back_fd) as u64
    );
    assert_eq!(
        num("restore_params.flags"),
        std::mem::offset_of!(RestoreParams, flags) as u64
    );

    // Failures were logged through the (NULL → stderr) logger, not hidden.
    assert!(
        stderr.contains("libxl_postcopy"),
        "no log on stderr:\n{stderr}"
    );
}

#[test]
fn the_library_carries_its_soname() {
    let lib = built_library();
    let Ok(out) = Command::new("readelf").arg("-d").arg(&lib).output() else {
        eprintln!("readelf not installed; SONAME checked through dlopen only");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("[{}]", xl_postcopy::SONAME)),
        "{text}"
    );
}
