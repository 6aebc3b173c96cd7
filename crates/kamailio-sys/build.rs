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
    check_release(&version);
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
         Kamailio it will be loaded into: install Kamailio 5.6 (Debian package `kamailio`), point \
         KAMAILIO_BIN at its binary, or set KAMAILIO_MODULE_VERSION and KAMAILIO_MODULE_FLAGS \
         to the `version:` (up to the first `)`) and `flags:` lines of its `kamailio -v`"
    );
}

/// The hand-written layouts in this crate were measured for 5.6 only
/// (`pv_value_t` and `tm_binds` change in 5.7): refuse anything else at build
/// time instead of crashing at run time.
fn check_release(version: &str) {
    let release = version.split_whitespace().nth(1).unwrap_or("");
    if !release.starts_with("5.6.") {
        panic!(
            "Kamailio `{version}` is not supported by these bindings: the struct layouts are \
             those of Kamailio 5.6.x"
        );
    }
}
