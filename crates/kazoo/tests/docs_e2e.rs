//! Every `cfg` example of the module documentation (`docs/kazoo.md`) is
//! accepted by `kamailio -c` with this module loaded: parameter examples as
//! `modparam` lines, route examples as routes, and statement examples inside
//! a `request_route`.
mod common;

use common::cfg;
use kamailio_test::check_config;

/// The documentation's ```cfg blocks, in order.
fn cfg_blocks() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/kazoo.md");
    let text = std::fs::read_to_string(&path).expect("docs/kazoo.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```cfg") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "unterminated cfg block");
    blocks
}

/// Places a documentation example in a complete configuration.
fn config_for(block: &str) -> String {
    // The module itself is loaded by the test configuration from the build.
    let block: String = block
        .lines()
        .filter(|l| l.trim() != "loadmodule \"kazoo.so\"")
        .map(|l| format!("{l}\n"))
        .collect();
    let reply = "request_route { sl_send_reply(\"200\", \"OK\"); }\n";
    let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.iter().all(|l| l.starts_with("modparam(")) {
        cfg(&block, reply)
    } else if lines.iter().any(|l| l.contains("route[")) {
        let extra = if block.contains("request_route") {
            ""
        } else {
            reply
        };
        cfg("", &format!("{block}{extra}"))
    } else {
        cfg(
            "",
            &format!("request_route {{\n{block}sl_send_reply(\"200\", \"OK\");\n}}\n"),
        )
    }
}

#[test]
fn every_documented_example_is_accepted() {
    let blocks = cfg_blocks();
    assert!(blocks.len() >= 14, "only {} examples found", blocks.len());
    for (i, block) in blocks.iter().enumerate() {
        let check = check_config(&config_for(block));
        assert!(
            check.success,
            "example {} of docs/kazoo.md refused:\n{block}\n{}",
            i + 1,
            check.output
        );
    }
}

#[test]
fn a_broken_example_would_be_caught() {
    // The check above can fail: a misspelled function is refused.
    let check = check_config(&config_for("kazoo_jsn(\"{}\", \"a\", \"$var(x)\");\n"));
    assert!(!check.success);
}
