//! Reads the exact `module_version` / `module_flags` strings of the Kamailio
//! the module is built for.
//!
//! Kamailio refuses (and exits) when a module's strings differ from the core's
//! by a single byte, and that check is a real ABI guard: `pv_value_t`, the tm
//! API and the allocator signatures change between versions and build flags.
//! So the strings come from the target binary itself (`kamailio -v`), never
//! from a table of known versions. For build hosts without Kamailio both can
//! be given in the environment:
//!
//! - `KAMAILIO_MODULE_VERSION`, e.g. `kamailio 5.6.3 (x86_64/linux)`
//! - `KAMAILIO_MODULE_FLAGS`, the `flags:` line of `kamailio -v`
//! - `KAMAILIO_BIN`, the binary to ask (default: `kamailio` on `PATH`, then
//!   `/usr/sbin/kamailio`)
//!
//! The release in the version string selects the layouts: the series listed
//! in [`SUPPORTED`] are accepted (their layouts were measured), anything else
//! is refused at build time. 5.7 and later set the `kamailio_5_7` cfg, the
//! only version cfg of the workspace (used inside this crate alone).
use std::env;
use std::process::Command;

fn main() {
    for var in [
        "KAMAILIO_MODULE_VERSION",
        "KAMAILIO_MODULE_FLAGS",
        "KAMAILIO_BIN",
        "PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let (version, flags) = match (
        env::var("KAMAILIO_MODULE_VERSION"),
        env::var("KAMAILIO_MODULE_FLAGS"),
    ) {
        (Ok(version), Ok(flags)) => (version, flags),
        _ => from_binary(),
    };
    println!("cargo::rustc-check-cfg=cfg(kamailio_5_7)");
    let (major, minor) = check_release(&version);
    if (major, minor) >= (5, 7) {
        println!("cargo::rustc-cfg=kamailio_5_7");
    }
    println!("cargo:rustc-env=KAMAILIO_MODULE_VERSION={version}");
    println!("cargo:rustc-env=KAMAILIO_MODULE_FLAGS={flags}");
}

/// Runs `kamailio -v` and takes the version line up to its first `)` and the
/// flags line verbatim.
fn from_binary() -> (String, String) {
    let candidates: Vec<String> = match env::var("KAMAILIO_BIN") {
        Ok(bin) => vec![bin],
        Err(_) => vec!["kamailio".into(), "/usr/sbin/kamailio".into()],
    };
    for bin in &candidates {
        println!("cargo:rerun-if-changed={bin}");
        let Ok(out) = Command::new(bin).arg("-v").output() else {
            continue;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("version: "))
            .and_then(|v| v.find(')').map(|end| v[..=end].to_string()));
        let flags = text
            .lines()
            .find_map(|l| l.strip_prefix("flags: "))
            .map(|f| f.trim_end_matches(['\r', '\n']).to_string());
        if let (Some(version), Some(flags)) = (version, flags) {
            return (version, flags);
        }
        panic!(
            "`{bin} -v` did not print the `version:` and `flags:` lines this build needs; \
             set KAMAILIO_MODULE_VERSION and KAMAILIO_MODULE_FLAGS instead"
        );
    }
    panic!(
        "no Kamailio found (tried {candidates:?}). The kazoo module must be built for the exact \
         Kamailio it will be loaded into: install Kamailio (5.6, 5.7, 5.8 or 6.0; Debian package `kamailio`), point \
         KAMAILIO_BIN at its binary, or set KAMAILIO_MODULE_VERSION and KAMAILIO_MODULE_FLAGS \
         to the `version:` (up to the first `)`) and `flags:` lines of its `kamailio -v`"
    );
}

/// Kamailio series whose layouts were measured (a C probe over each
/// release's headers): 5.6 is one ABI family, 5.7 to 6.0 the other.
const SUPPORTED: [(u32, u32); 4] = [(5, 6), (5, 7), (5, 8), (6, 0)];

/// The `major.minor` of `kamailio X.Y.Z (arch/os)`, refused unless it is a
/// series in [`SUPPORTED`] (a crash at run time is worse than a build error).
fn check_release(version: &str) -> (u32, u32) {
    let release = version.split_whitespace().nth(1).unwrap_or("");
    let mut parts = release.split('.').map(|p| p.parse::<u32>());
    let series = match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor),
        _ => panic!(
            "cannot read the Kamailio release from `{version}` (expected `kamailio X.Y.Z (arch/os)`)"
        ),
    };
    if !SUPPORTED.contains(&series) {
        let list: Vec<String> = SUPPORTED.iter().map(|(a, b)| format!("{a}.{b}")).collect();
        panic!(
            "Kamailio `{version}` is not supported by these bindings: their struct layouts were \
             verified for the series {} only",
            list.join(", ")
        );
    }
    series
}
