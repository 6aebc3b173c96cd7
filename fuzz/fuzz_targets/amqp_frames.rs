//! Any bytes from a broker after the login, fed in pieces of any size to
//! the module's sans-I/O AMQP connection (the direct links' and the AMQP
//! process's client): events or a protocol error, never a panic; the read
//! buffer never holds more than one frame of `frame_max`; whatever the
//! connection answers (close-oks) is written whole.
#![no_main]

use amq_protocol::frame::{gen_frame, AMQPFrame, ProtocolVersion, WriteContext};
use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::FieldTable;
use kazoo_engine::amqp::{Conn, Event, Login, FRAME_MAX};
use libfuzzer_sys::fuzz_target;

fn bytes(frame: &AMQPFrame) -> Vec<u8> {
    gen_frame(frame)(WriteContext::from(Vec::new()))
        .expect("a frame encodes")
        .into_inner()
        .0
}

/// The broker's side of a login: start, tune, open-ok.
fn login() -> Vec<u8> {
    let mut input = bytes(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: FieldTable::default(),
            mechanisms: "PLAIN".into(),
            locales: "en_US".into(),
        })),
    ));
    input.extend(bytes(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
            channel_max: 2047,
            frame_max: FRAME_MAX,
            heartbeat: 60,
        })),
    )));
    input.extend(bytes(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
    )));
    input
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, data)) = data.split_first() else {
        return;
    };
    let mut conn = Conn::with_heartbeat(
        Login {
            user: "guest".into(),
            password: "guest".into(),
            vhost: "/".into(),
            connection_name: "fuzz".into(),
        },
        Some(0),
    );
    let header = bytes(&AMQPFrame::ProtocolHeader(ProtocolVersion::amqp_0_9_1()));
    assert!(conn.output().starts_with(&header));
    let mut input = login();
    let mut events = Vec::new();
    conn.receive(&mut input, &mut events).expect("the login");
    assert_eq!(events, [Event::Ready]);
    conn.clear_output();
    for chunk in data.chunks(usize::from(piece).max(1)) {
        input.extend_from_slice(chunk);
        events.clear();
        if conn.receive(&mut input, &mut events).is_err() {
            return;
        }
        assert!(
            input.len() < FRAME_MAX as usize + 8,
            "more than a frame kept"
        );
        let mut out = conn.output();
        while !out.is_empty() {
            let (rest, _) =
                amq_protocol::frame::parse_frame(out).expect("what the connection writes parses");
            out = rest;
        }
        conn.clear_output();
    }
});
