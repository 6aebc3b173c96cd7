//! Self-test of the private RabbitMQ node: start, query, stop, start again on
//! the same port, drop.
//!
//! It fails when RabbitMQ is not installed, unless `KAZOO_TEST_SKIP_RABBIT=1`,
//! so a machine without a broker cannot pass the suite by accident.

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use kamailio_test::{system_broker_url, unique_name, HarnessError, RabbitNode};

/// Reports why a RabbitMQ test cannot run: a skip only when RabbitMQ is missing
/// and `KAZOO_TEST_SKIP_RABBIT=1`, a failure otherwise.
fn cannot_run(e: HarnessError) {
    let skip = std::env::var("KAZOO_TEST_SKIP_RABBIT").as_deref() == Ok("1");
    match e {
        HarnessError::NotInstalled { .. } if skip => {
            eprintln!("skipped (KAZOO_TEST_SKIP_RABBIT=1): {e}");
        }
        e => panic!(
            "{e}\n(set KAZOO_TEST_SKIP_RABBIT=1 to skip RabbitMQ tests when it is not installed)"
        ),
    }
}

fn accepts(port: u16) -> bool {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    TcpStream::connect_timeout(&addr.into(), Duration::from_millis(500)).is_ok()
}

#[test]
fn private_node_starts_stops_restarts_and_goes_away() {
    let started = Instant::now();
    let mut node = match RabbitNode::start() {
        Ok(node) => node,
        Err(e) => return cannot_run(e),
    };
    let port = node.amqp_port();
    assert_ne!(port, 5672);
    assert_eq!(node.url(), format!("amqp://guest:guest@127.0.0.1:{port}"));
    assert_ne!(node.url(), system_broker_url());
    assert!(node.node_name().starts_with("kztest-"));
    assert!(node.is_running());
    assert!(accepts(port));

    // A vhost made now must survive the restart: same data directory.
    let vhost = unique_name("kztest-vhost");
    node.rabbitmqctl(&["add_vhost", &vhost]).unwrap();
    let status = node.rabbitmqctl(&["status"]).unwrap();
    assert!(status.contains(node.node_name()), "{status}");

    node.stop().unwrap();
    assert!(!node.is_running());
    assert!(!accepts(port));
    assert!(node.rabbitmqctl(&["status"]).is_err());

    node.start_again().unwrap();
    assert!(node.is_running());
    assert!(accepts(port));
    assert!(node.start_again().is_err(), "start_again on a running node");
    let vhosts = node.rabbitmqctl(&["list_vhosts", "name"]).unwrap();
    assert!(vhosts.contains(&vhost), "{vhosts}");

    drop(node);
    assert!(!accepts(port));
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn system_rabbitmqctl_runs_the_installed_cli() {
    match kamailio_test::system_rabbitmqctl(&["version"]) {
        Ok(version) => assert!(version.trim().starts_with(char::is_numeric), "{version}"),
        Err(e) => cannot_run(e),
    }
}
