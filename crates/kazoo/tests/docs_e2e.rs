//! Every `cfg` example of the module documentation (`docs/kazoo.md`) is
//! accepted by `kamailio -c` with this module loaded: parameter examples as
//! `modparam` lines, route examples as routes, and statement examples inside
//! a `request_route`. The Lua example runs (its subscription is declared,
//! its REGISTER handling challenges), and every log line the troubleshooting
//! section lists is one the module writes.
use crate::common;

use std::time::Duration;

use common::{amqp_cfg, cfg, Proxy};
use kamailio_test::{check_config, system_broker_url, system_queue_messages, Kamailio};

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

/// The text of every Rust source the module's log lines come from, with
/// string continuations joined and `\"` unescaped, so that a documented line
/// can be found in the format string that writes it.
fn sources() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut text = String::new();
    let mut dirs: Vec<std::path::PathBuf> = [
        "crates/kazoo/src",
        "crates/kazoo-engine/src",
        "crates/kamailio/src",
    ]
    .iter()
    .map(|d| root.join(d))
    .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                text.push_str(&std::fs::read_to_string(&path).unwrap());
                text.push('\n');
            }
        }
    }
    let mut joined = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(head) = line.strip_suffix('\\') {
            joined.push_str(head);
            if let Some(next) = lines.peek() {
                let next = next.trim_start();
                joined.push_str(next);
                lines.next();
            }
        } else {
            joined.push_str(line);
        }
        joined.push('\n');
    }
    joined.replace("\\\"", "\"")
}

/// The log lines of the troubleshooting section: the backticked texts of its
/// table's first column.
fn troubleshooting_lines() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/kazoo.md");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text
        .find("## 13. Troubleshooting")
        .expect("the troubleshooting section");
    let section = &text[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            let first = l.split('|').nth(1).unwrap_or_default();
            first
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_documented_log_line_is_one_the_module_writes() {
    let sources = sources();
    let lines = troubleshooting_lines();
    assert!(lines.len() >= 15, "{lines:?}");
    for line in lines {
        // Placeholders: `<what>`, `...`, and a broker or worker number `N`/`M`;
        // a script function's name in front is the export layer's
        // (`<function>: <reason>`).
        let mut text = match line.split_once(": ") {
            Some((function, reason))
                if function.starts_with("kazoo_") && !function.contains(' ') =>
            {
                reason.to_string()
            }
            _ => line.clone(),
        };
        while let (Some(a), Some(b)) = (text.find('<'), text.find('>')) {
            if b < a {
                break;
            }
            text.replace_range(a..=b, "\u{0}");
        }
        let text = text
            .replace("...", "\u{0}")
            .replace(" N", " \u{0}")
            .replace(" M", " \u{0}");
        for fragment in text
            .split('\u{0}')
            .map(|f| f.trim().trim_start_matches(": "))
            .filter(|f| f.len() >= 3)
        {
            assert!(
                sources.contains(fragment),
                "the documented log line `{line}`: no source writes {fragment:?}"
            );
        }
    }
}

/// The documentation's one ```lua block.
fn lua_example() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/kazoo.md");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find("```lua\n").expect("a lua example") + "```lua\n".len();
    let end = start + text[start..].find("\n```").expect("its end");
    text[start..end].to_string()
}

#[test]
fn the_lua_example_runs() {
    let (config, _node) = amqp_cfg(
        &system_broker_url(),
        "loadmodule \"auth.so\"\nloadmodule \"usrloc.so\"\nloadmodule \"registrar.so\"\n\
         loadmodule \"app_lua.so\"\n\
         modparam(\"app_lua\", \"load\", \"{{RUNDIR}}/example.lua\")\n\
         modparam(\"usrloc\", \"preload\", \"location\")\n\
         modparam(\"kazoo\", \"event_callback\", \"ksr_kazoo_event\")\n\
         cfgengine \"lua\"\n",
        "",
    );
    let kamailio = Kamailio::builder()
        .file("example.lua", lua_example())
        .start(&config)
        .unwrap_or_else(|e| panic!("kamailio: {e}"));
    let proxy = Proxy::with(kamailio);
    proxy.wait_connected(1, 1);
    // kazoo:mod-init subscribed: the queue exists on the broker.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while system_queue_messages("registrar-flush").unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the example's subscription was not declared:\n{}",
            proxy.kamailio.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A REGISTER without credentials is challenged; anything else is 404.
    let register = proxy
        .client
        .send_request(
            proxy.kamailio.port(),
            "REGISTER",
            "1001",
            &[],
            b"",
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(register.code, 401, "{register:?}");
    let other = proxy
        .client
        .send_request(
            proxy.kamailio.port(),
            "MESSAGE",
            "1001",
            &[],
            b"",
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(other.code, 404, "{other:?}");
    assert!(proxy.kamailio.is_running());
}
