//! `kazoo_query` through a running Kamailio and a real RabbitMQ with a
//! Kazoo-style responder (it replies to exchange `targeted` with the
//! request's `Server-ID` as routing key and echoes `Msg-ID`): every row of
//! `vectors/query.jsonl` gives what the C module gave; timeouts hold within
//! ±20%; a query from an event route works (the C module can deadlock).
use crate::common;

use std::time::{Duration, Instant};

use common::{amqp_cfg, int, result, Proxy};
use kamailio_test::{hex_decode, msg_id_of, system_broker_url, unique_name, AmqpProbe, Responder};

const ROUTES: &str = r#"
event_route[kazoo:consumer-event]
{
    xlog("L_INFO", "EVENT-AFTER rk=$kzRK e=$kzE\n");
}

onreply_route[KZ_OK]
{
    xlog("L_INFO", "ASYNC-OK kzR=$kzR\n");
    t_reply("200", "ASYNC OK");
}

failure_route[KZ_ERR]
{
    xlog("L_INFO", "ASYNC-ERR kzR=$kzR\n");
    t_reply("503", "ASYNC ERR");
}

event_route[kazoo:consumer-event-query-from-event]
{
    kazoo_query("$(kzE{kz.json,Exchange})", "q.from-event", "{'Event-Category':'q','Event-Name':'inner','X-Test-Reply-Hex':'7b224d73672d4944223a227b7b4d534749447d7d222c22416e73776572223a22696e6e6572227d'}");
    xlog("L_INFO", "INNER-QUERY rc=$rc kzR=$kzR\n");
}

request_route {
    if (is_method("OPTIONS")) { sl_send_reply("200", "OK"); exit; }
    $var(ex) = $(hdr(X-A){s.decode.hexa});
    $var(rk) = $(hdr(X-B){s.decode.hexa});
    $var(pl) = $(hdr(X-C){s.decode.hexa});
    $var(kz_timeout) = 0;
    if (is_present_hf("X-Timeout")) { $var(kz_timeout) = $(hdr(X-Timeout){s.int}); }
    $var(res) = "UNSET";
    if ($rU == "q3") {
        kazoo_query("$var(ex)", "$var(rk)", "$var(pl)");
    } else if ($rU == "q4") {
        kazoo_query("$var(ex)", "$var(rk)", "$var(pl)", "$var(res)");
    } else if ($rU == "q5") {
        $var(h) = $(hdr(X-D){s.decode.hexa});
        kazoo_query("$var(ex)", "$var(rk)", "$var(pl)", "$var(res)", "$var(h)");
    } else if ($rU == "asyncbad") {
        kazoo_async_query("$var(ex)", "$var(rk)", "$var(pl)", "NO_SUCH_ROUTE", "KZ_ERR");
        append_to_reply("X-RC: $rc\r\n");
        sl_send_reply("500", "Not suspended");
        exit;
    } else if ($rU == "async") {
        kazoo_async_query("$var(ex)", "$var(rk)", "$var(pl)", "KZ_OK", "KZ_ERR");
        # Only reached when nothing was suspended.
        append_to_reply("X-RC: $rc\r\n");
        sl_send_reply("500", "Not suspended");
        exit;
    }
    $var(rc) = $rc;
    append_to_reply("X-RC: $var(rc)\r\n");
    if ($kzR == $null) {
        append_to_reply("X-KzR-Null: 1\r\n");
    } else {
        append_to_reply("X-KzR: $(kzR{s.encode.hexa})\r\n");
        append_to_reply("X-Answer: $(kzR{kz.json,Answer})\r\n");
    }
    append_to_reply("X-Res: $(var(res){s.encode.hexa})\r\n");
    sl_send_reply("200", "OK");
}
"#;

/// The responder of the vectors: the request says how to answer
/// (`X-Test-Reply-Hex` with `{{MSGID}}`, `X-Test-Mode`, `X-Test-Delay`).
fn answer(request: &[u8]) -> Vec<(Duration, Vec<u8>)> {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(request) else {
        return vec![];
    };
    let Some(template) = json["X-Test-Reply-Hex"].as_str() else {
        return vec![];
    };
    let reply = String::from_utf8(hex_decode(template).unwrap())
        .unwrap()
        .replace("{{MSGID}}", &msg_id_of(request))
        .into_bytes();
    match json["X-Test-Mode"].as_str().unwrap_or("reply") {
        "none" => vec![],
        "twice" => vec![(Duration::ZERO, reply.clone()), (Duration::ZERO, reply)],
        "late" => {
            let delay = json["X-Test-Delay"].as_f64().unwrap_or(1.0);
            vec![(Duration::from_secs_f64(delay), reply)]
        }
        _ => vec![(Duration::ZERO, reply)],
    }
}

pub(crate) struct Bed {
    pub(crate) proxy: Proxy,
    node: String,
    // Dropped before the probe, whose runtime it uses.
    responder: Responder,
    pub(crate) probe: AmqpProbe,
    pub(crate) exchange: String,
}

impl Bed {
    fn start() -> Bed {
        Bed::start_with(|_| (String::new(), String::new()))
    }

    /// A bed whose configuration adds the parameters and routes `extra`
    /// makes from the exchange's name.
    pub(crate) fn start_with(extra: impl FnOnce(&str) -> (String, String)) -> Bed {
        Bed::start_configured(extra, |config| config)
    }

    /// [`Bed::start_with`], the whole configuration then passed through
    /// `edit`.
    fn start_configured(
        extra: impl FnOnce(&str) -> (String, String),
        edit: impl FnOnce(String) -> String,
    ) -> Bed {
        let probe = AmqpProbe::connect(&system_broker_url()).expect("probe");
        let exchange = unique_name("kzquery");
        probe.declare_exchange(&exchange, "topic").unwrap();
        let responder = probe.responder(&exchange, "q.#", answer).unwrap();
        let (params, routes) = extra(&exchange);
        let (config, node) = amqp_cfg(
            &system_broker_url(),
            &format!(
                "modparam(\"kazoo\", \"amqp_query_timeout_avp\", \"$var(kz_timeout)\")\n\
                 modparam(\"kazoo\", \"amqp_max_channels\", 4)\n{params}"
            ),
            &format!("{routes}{ROUTES}"),
        );
        let proxy = Proxy::start(&edit(config));
        // The reply queues are consumed once the consumer connection is up.
        proxy.wait_connected(1, 1);
        Bed {
            proxy,
            node,
            responder,
            probe,
            exchange,
        }
    }

    pub(crate) fn query(
        &self,
        form: &str,
        rk: &str,
        payload: &str,
        headers: &str,
        timeout_ms: Option<u64>,
    ) -> kamailio_test::SipReply {
        self.query_from(&self.proxy.client, form, rk, payload, headers, timeout_ms)
    }

    /// [`Bed::query`] from `client` (one client waits for one reply at a
    /// time).
    fn query_from(
        &self,
        client: &kamailio_test::SipClient,
        form: &str,
        rk: &str,
        payload: &str,
        headers: &str,
        timeout_ms: Option<u64>,
    ) -> kamailio_test::SipReply {
        let hex = |s: &str| kamailio_test::hex_encode(s.as_bytes());
        let (a, b, c, d) = (hex(&self.exchange), hex(rk), hex(payload), hex(headers));
        let timeout = timeout_ms.map(|t| t.to_string()).unwrap_or_default();
        let mut h: Vec<(&str, &str)> = vec![("X-A", &a), ("X-B", &b), ("X-C", &c), ("X-D", &d)];
        if timeout_ms.is_some() {
            h.push(("X-Timeout", &timeout));
        }
        client
            .send_request(
                self.proxy.kamailio.port(),
                "MESSAGE",
                form,
                &h,
                b"",
                Duration::from_secs(8),
            )
            .expect("reply")
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.probe.delete_exchange(&self.exchange);
    }
}

#[test]
fn queries_match_the_c_module_row_for_row() {
    // Through the AMQP process: replies no query waits for run their event
    // routes at once, as in the C module.
    let bed = Bed::start_with(|_| {
        (
            "modparam(\"kazoo\", \"amqp_direct\", 0)".into(),
            String::new(),
        )
    });
    check_rows(&bed, false);
}

#[test]
fn direct_queries_match_the_c_module_row_for_row() {
    // On the SIP worker's own link (the default): a reply no query waits
    // for runs its event route once that worker next uses its link (the
    // flush queries below); one worker, so that they reach the same one.
    let bed = Bed::start_configured(
        |_| (String::new(), String::new()),
        |config| config.replace("children=2", "children=1"),
    );
    check_rows(&bed, true);
}

/// Runs every row of `vectors/query.jsonl` and compares the requests, the
/// return codes, the replies and the event routes after with the C
/// module's; `flush`: keep the worker querying until a late reply's event
/// route ran.
fn check_rows(bed: &Bed, flush: bool) {
    let rows: Vec<serde_json::Value> = kamailio_test::jsonl("query.jsonl");
    let mut checked = 0;
    for row in &rows {
        let id = row["id"].as_str().unwrap();
        let call = row["call"].as_str().unwrap();
        let form = match call {
            "kazoo_query/3" => "q3",
            "kazoo_query/4" => "q4",
            "kazoo_query/5" => "q5",
            _ => "async",
        };
        let timeout_ms = row["timeout_avp_ms"].as_u64();
        let seen_before = bed.responder.requests().len();
        let started = Instant::now();
        let reply = bed.query(
            form,
            row["routing_key"].as_str().unwrap(),
            row["payload"].as_str().unwrap(),
            row["headers"].as_str().unwrap_or(""),
            timeout_ms,
        );
        let elapsed = started.elapsed();
        if form == "async" {
            // The transaction was suspended (the script stopped) and resumed
            // in the route the C module resumed it in, which replied.
            let expected = &row["async_result"];
            let status = format!("SIP/2.0 {} {}", reply.code, reply.reason);
            assert_eq!(status, expected["sip_reply"].as_str().unwrap(), "{id}");
            let requests = bed.responder.requests();
            let msg_id = requests
                .get(seen_before)
                .map(|r| msg_id_of(&r.body))
                .unwrap_or_default();
            let logged = match expected["kzR"].as_str() {
                Some(template) => {
                    let marker = "ASYNC-OK kzR=";
                    let log = bed.proxy.kamailio.log();
                    let line = log
                        .lines()
                        .rev()
                        .find(|l| l.contains(marker))
                        .unwrap_or_else(|| panic!("{id}: {marker} not logged"))
                        .to_string();
                    let actual = line.split(marker).nth(1).unwrap().to_string();
                    assert_eq!(
                        actual,
                        common::fill_placeholders(template, &actual, &msg_id, &bed.node),
                        "{id}: $kzR in the route"
                    );
                    "ASYNC-OK"
                }
                None => {
                    assert!(
                        bed.proxy.kamailio.log().contains("ASYNC-ERR kzR=<null>"),
                        "{id}"
                    );
                    "ASYNC-ERR"
                }
            };
            if let Some(ms) = timeout_ms.filter(|_| logged == "ASYNC-ERR") {
                let expect = Duration::from_millis(ms);
                assert!(
                    elapsed >= expect.mul_f64(0.8)
                        && elapsed <= expect.mul_f64(1.2) + Duration::from_millis(100),
                    "{id}: async timeout {expect:?} took {elapsed:?}"
                );
            }
            checked += 1;
            continue;
        }
        let rc = int(&reply, "X-RC");
        assert_eq!(rc, row["rc"].as_i64().unwrap(), "{id}: rc");
        let requests = bed.responder.requests();
        let msg_id = requests
            .get(seen_before)
            .map(|r| msg_id_of(&r.body))
            .unwrap_or_default();
        let kz_r = result(&reply, "X-KzR").map(|b| String::from_utf8(b).unwrap());
        match row["kzR"].as_str() {
            Some(template) => {
                let actual = kz_r.clone().unwrap_or_else(|| panic!("{id}: $kzR is null"));
                assert_eq!(
                    actual,
                    common::fill_placeholders(template, &actual, &msg_id, &bed.node),
                    "{id}: $kzR"
                );
            }
            None => assert_eq!(kz_r, None, "{id}: $kzR"),
        }
        if let Some(template) = row["target_pv_value"].as_str() {
            let actual = String::from_utf8(result(&reply, "X-Res").unwrap()).unwrap();
            assert_eq!(
                actual,
                common::fill_placeholders(template, &actual, &msg_id, &bed.node),
                "{id}: target"
            );
        }
        if let Some(request) = row["request_seen_by_responder"].as_object() {
            let got = requests
                .get(seen_before)
                .unwrap_or_else(|| panic!("{id}: no request"));
            let body = got.text();
            let template = request["body"].as_str().unwrap();
            assert_eq!(
                body,
                common::fill_placeholders(template, &body, &msg_id, &bed.node),
                "{id}: request body"
            );
        }
        if rc == -1 {
            if let Some(ms) = timeout_ms {
                let expect = Duration::from_millis(ms);
                assert!(
                    elapsed >= expect.mul_f64(0.8)
                        && elapsed <= expect.mul_f64(1.2) + Duration::from_millis(100),
                    "{id}: timeout {expect:?} took {elapsed:?}"
                );
            }
        }
        for after in row["event_routes_after"].as_array().unwrap() {
            let wanted = after["kzE"]
                .as_str()
                .unwrap()
                .replace("{{MSG_ID}}", &msg_id)
                .replace("kzvec.local", &bed.node);
            let prefix = wanted
                .split("{{AMQP_RECEIVED}}")
                .next()
                .unwrap()
                .to_string();
            let deadline = Instant::now() + Duration::from_secs(3);
            while !bed.proxy.kamailio.log().contains(&prefix) {
                assert!(
                    Instant::now() < deadline,
                    "{id}: no event route got {prefix}"
                );
                if flush {
                    // Nobody answers this one: the worker reads its link
                    // for 50 ms and hands on what it finds.
                    bed.query("q3", "q.flush", "{}", "", Some(50));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        checked += 1;
    }
    println!("{checked} queries checked against the C module");
    assert!(checked >= 10);
}

#[test]
fn an_async_query_with_a_missing_route_is_refused_before_suspending() {
    let bed = Bed::start();
    let reply = bed.query("asyncbad", "q.x", "{'Event-Category':'q'}", "", None);
    assert_eq!((reply.code, int(&reply, "X-RC")), (500, -1));
    assert!(bed
        .proxy
        .kamailio
        .log()
        .contains("kazoo_async_query: onreply_route[NO_SUCH_ROUTE] does not exist"));
    // A well-formed one right after works (nothing was left suspended).
    let reply_hex = kamailio_test::hex_encode(br#"{"Msg-ID":"{{MSGID}}","Answer":"late ok"}"#);
    let payload = format!("{{'Event-Category':'q','X-Test-Reply-Hex':'{reply_hex}'}}");
    let reply = bed.query("async", "q.after", &payload, "", None);
    assert_eq!((reply.code, reply.reason.as_str()), (200, "ASYNC OK"));
}

#[test]
fn the_default_timeout_holds_and_kzr_is_null_after_a_failure() {
    let bed = Bed::start();
    let started = Instant::now();
    let reply = bed.query(
        "q3",
        "q.nobody",
        "{'Event-Category':'q','X-Test-Mode':'none'}",
        "",
        None,
    );
    let elapsed = started.elapsed();
    assert_eq!(int(&reply, "X-RC"), -1);
    assert!(reply.header("X-KzR-Null").is_some());
    assert!(
        elapsed >= Duration::from_millis(1600) && elapsed <= Duration::from_millis(2500),
        "default 2 s timeout took {elapsed:?}"
    );
}

#[test]
fn the_scripts_own_msg_id_correlates_the_reply() {
    // The C module always waits under a generated id, so this reply never
    // matched there; here the script's Msg-ID is the correlation key.
    let bed = Bed::start();
    let reply_hex = kamailio_test::hex_encode(br#"{"Msg-ID":"{{MSGID}}","Answer":"own"}"#);
    let payload = format!(
        "{{'Msg-ID':'script-own-id-1','Event-Category':'q','X-Test-Reply-Hex':'{reply_hex}'}}"
    );
    let reply = bed.query("q3", "q.own", &payload, "", None);
    assert_eq!(int(&reply, "X-RC"), 1);
    assert_eq!(reply.header("X-Answer"), Some("own"));
    let requests = bed.responder.requests();
    assert_eq!(msg_id_of(&requests.last().unwrap().body), "script-own-id-1");
}

#[test]
fn a_query_from_an_event_route_works() {
    let bed = Bed::start();
    let trigger = format!(
        "{{\"Event-Category\":\"query\",\"Event-Name\":\"from-event\",\"Exchange\":\"{}\"}}",
        bed.exchange
    );
    // The catch-all of this config has no consumer subscription: deliver the
    // trigger as an unclaimed reply, which goes to the event routes.
    bed.probe
        .publish(
            "targeted",
            &format!("kamailio@{}-<1>-targeted-0", bed.node),
            trigger.as_bytes(),
        )
        .unwrap();
    assert!(
        bed.proxy
            .kamailio
            .wait_for_log("INNER-QUERY rc=1", Duration::from_secs(5)),
        "{}",
        bed.proxy.kamailio.log()
    );
    assert!(bed.proxy.kamailio.log().contains("\"Answer\": \"inner\""));
    bed.proxy.assert_alive();
}

/// The consumer workers' shared reply queue (`amqp_worker_replies`).
fn async_queue(bed: &Bed) -> String {
    format!("kamailio@{}-<async>-targeted", bed.node)
}

/// `kazoo.status` as JSON.
fn status(bed: &Bed) -> serde_json::Value {
    serde_json::from_str(bed.proxy.kamcmd(&["kazoo.status"]).trim()).unwrap()
}

#[test]
fn consumer_workers_take_async_replies_and_resume_the_queries() {
    // The default: published from the SIP worker's own link with the
    // workers' Server-ID; each of 8 consumer workers consumes the queue.
    let bed = Bed::start();
    let queue = async_queue(&bed);
    bed.proxy
        .wait_consumed(&bed.probe, std::slice::from_ref(&queue));
    let deadline = Instant::now() + Duration::from_secs(10);
    while bed.probe.queue_counts(&queue).unwrap().1 < 8 {
        assert!(
            Instant::now() < deadline,
            "not every worker consumes {queue}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(bed.probe.queue_counts(&queue).unwrap().1, 8);
    let reply_hex = kamailio_test::hex_encode(br#"{"Msg-ID":"{{MSGID}}","Answer":"w"}"#);
    let payload = format!("{{'Event-Category':'q','X-Test-Reply-Hex':'{reply_hex}'}}");
    let seen_before = bed.responder.requests().len();
    for _ in 0..20 {
        let reply = bed.query("async", "q.workers", &payload, "", None);
        assert_eq!((reply.code, reply.reason.as_str()), (200, "ASYNC OK"));
    }
    let requests = bed.responder.requests();
    assert_eq!(requests.len() - seen_before, 20);
    for request in &requests[seen_before..] {
        let json: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(json["Server-ID"], queue.as_str(), "{}", request.text());
    }
    // Nobody answers: the error route, after the query's own timeout.
    let started = Instant::now();
    let reply = bed.query(
        "async",
        "q.nobody",
        "{'Event-Category':'q','X-Test-Mode':'none'}",
        "",
        Some(300),
    );
    let elapsed = started.elapsed();
    assert_eq!((reply.code, reply.reason.as_str()), (503, "ASYNC ERR"));
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed <= Duration::from_millis(600),
        "a 300 ms timeout took {elapsed:?}"
    );
    let status = status(&bed);
    assert_eq!(status["async_query"]["answered"], 20, "{status}");
    assert_eq!(status["async_query"]["not_answered"], 1, "{status}");
    assert_eq!(status["query"]["answered"], 20, "{status}");
    assert_eq!(status["query"]["timed_out"], 1, "{status}");
    // None went through the AMQP process's reply queues, and replies are
    // not counted as consumed events.
    assert_eq!(status["query"]["pending"], 0, "{status}");
    assert_eq!(status["consumed"]["by_workers"], 0, "{status}");
    assert_eq!(status["consumed"]["delivered"], 0, "{status}");
    bed.proxy.assert_alive();
}

#[test]
fn a_second_reply_to_an_async_query_runs_the_event_routes() {
    // As the C module does with a reply nobody waits for.
    let bed = Bed::start();
    bed.proxy
        .wait_consumed(&bed.probe, std::slice::from_ref(&async_queue(&bed)));
    let reply_hex =
        kamailio_test::hex_encode(br#"{"Msg-ID":"{{MSGID}}","Event-Category":"twice"}"#);
    let payload =
        format!("{{'Event-Category':'q','X-Test-Mode':'twice','X-Test-Reply-Hex':'{reply_hex}'}}");
    let reply = bed.query("async", "q.twice", &payload, "", None);
    assert_eq!((reply.code, reply.reason.as_str()), (200, "ASYNC OK"));
    let msg_id = msg_id_of(&bed.responder.requests().last().unwrap().body);
    assert!(
        bed.proxy.kamailio.wait_for_log(
            &format!("EVENT-AFTER rk={}", async_queue(&bed)),
            Duration::from_secs(5)
        ),
        "{}",
        bed.proxy.kamailio.log()
    );
    assert!(bed.proxy.kamailio.log().contains(&msg_id));
}

#[test]
fn an_async_query_whose_msg_id_already_waits_is_refused_at_once() {
    // A reply could not tell the two apart: the second fails at the call
    // (-1, nothing suspended) and the first still gets its reply.
    let bed = Bed::start();
    bed.proxy
        .wait_consumed(&bed.probe, std::slice::from_ref(&async_queue(&bed)));
    let reply_hex = kamailio_test::hex_encode(br#"{"Msg-ID":"{{MSGID}}","Answer":"first"}"#);
    let payload = format!(
        "{{'Event-Category':'q','Msg-ID':'dup-{}','X-Test-Mode':'late','X-Test-Delay':1.5,'X-Test-Reply-Hex':'{reply_hex}'}}",
        bed.node
    );
    std::thread::scope(|scope| {
        let first = scope.spawn(|| bed.query("async", "q.dup", &payload, "", Some(5000)));
        let deadline = Instant::now() + Duration::from_secs(5);
        while status(&bed)["async_query"]["waiting"] != 1 {
            assert!(Instant::now() < deadline, "the first query never waited");
            std::thread::sleep(Duration::from_millis(20));
        }
        let started = Instant::now();
        let client = kamailio_test::SipClient::new().unwrap();
        let second = bed.query_from(&client, "async", "q.dup", &payload, "", Some(5000));
        assert_eq!(
            (second.code, second.reason.as_str(), second.header("X-RC")),
            (500, "Not suspended", Some("-1"))
        );
        assert!(started.elapsed() < Duration::from_millis(500));
        let first = first.join().unwrap();
        assert_eq!((first.code, first.reason.as_str()), (200, "ASYNC OK"));
    });
    // Only the first was published.
    let published = bed
        .responder
        .requests()
        .iter()
        .filter(|r| r.text().contains(&format!("dup-{}", bed.node)))
        .count();
    assert_eq!(published, 1);
    assert_eq!(status(&bed)["async_query"]["waiting"], 0);
    bed.proxy.assert_alive();
}

#[test]
fn without_worker_replies_async_queries_go_through_the_amqp_process() {
    let bed = Bed::start_with(|_| {
        (
            "modparam(\"kazoo\", \"amqp_worker_replies\", 0)".into(),
            String::new(),
        )
    });
    let reply_hex = kamailio_test::hex_encode(br#"{"Msg-ID":"{{MSGID}}","Answer":"p"}"#);
    let payload = format!("{{'Event-Category':'q','X-Test-Reply-Hex':'{reply_hex}'}}");
    let reply = bed.query("async", "q.process", &payload, "", None);
    assert_eq!((reply.code, reply.reason.as_str()), (200, "ASYNC OK"));
    let request = bed.responder.requests().last().unwrap().text();
    assert!(
        request.contains(&format!("kamailio@{}-<1>-targeted-", bed.node)),
        "{request}"
    );
    assert!(bed.probe.queue_counts(&async_queue(&bed)).is_err());
}
