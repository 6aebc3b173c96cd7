//! Every `KSR.kazoo.*` function through a real Kamailio running a Lua
//! script (app_lua), against RabbitMQ: the variants the edge scripts
//! (`kazoo_edge_kemi_e2e.rs`) do not use, with their return codes and
//! effects (broker messages and their headers, replies of a Kazoo-style
//! responder, variables, presentity rows), and the async query's error
//! function.
use crate::common;

use std::time::Duration;

use common::edge::Database;
use common::{amqp_cfg, int, result, sqlite, Proxy};
use kamailio_test::{
    msg_id_of, system_broker_url, unique_name, AmqpProbe, Kamailio, SipClient, SipReply,
};
use serde_json::{json, Value};

/// Dispatches on the request user; inputs are the hex headers X-A..X-D,
/// results come back as `X-RC` and hex `X-Res` / `X-KzR`.
const SCRIPT: &str = r#"
local function arg(name)
    if KSR.hdr.is_present(name) < 0 then
        return ""
    end
    return KSR.pv.get("$(hdr(" .. name .. "){s.decode.hexa})")
end

local function reply(rc, code, reason)
    KSR.hdr.append_to_reply("X-RC: " .. rc .. "\r\n")
    if not KSR.pv.is_null("$var(res)") then
        KSR.hdr.append_to_reply("X-Res: " .. KSR.pv.get("$(var(res){s.encode.hexa})") .. "\r\n")
    end
    if KSR.pv.is_null("$kzR") then
        KSR.hdr.append_to_reply("X-KzR-Null: 1\r\n")
    else
        KSR.hdr.append_to_reply("X-KzR: " .. KSR.pv.get("$(kzR{s.encode.hexa})") .. "\r\n")
    end
    KSR.sl.sl_send_reply(code or 200, reason or "OK")
end

function ksr_async_ok()
    KSR.hdr.append_to_reply("X-KzR: " .. KSR.pv.get("$(kzR{s.encode.hexa})") .. "\r\n")
    KSR.tm.t_reply(200, "ASYNC OK")
    return 1
end

function ksr_async_err()
    KSR.tm.t_reply(503, "ASYNC ERR")
    return 1
end

function ksr_request_route()
    if KSR.is_OPTIONS() then
        KSR.sl.sl_send_reply(200, "OK")
        return 1
    end
    local user = KSR.pv.get("$rU")
    local a, b, c, d = arg("X-A"), arg("X-B"), arg("X-C"), arg("X-D")
    KSR.pv.sets("$var(res)", "UNSET")
    if user == "publish_hdrs" then
        reply(KSR.kazoo.kazoo_publish_hdrs(a, b, c, d))
    elseif user == "query" then
        reply(KSR.kazoo.kazoo_query(a, b, c))
    elseif user == "query_var" then
        reply(KSR.kazoo.kazoo_query_var(a, b, c, "$var(res)"))
    elseif user == "query_hdrs" then
        reply(KSR.kazoo.kazoo_query_hdrs(a, b, c, "$var(res)", d))
    elseif user == "query_hdrs_kzr" then
        reply(KSR.kazoo.kazoo_query_hdrs(a, b, c, "", d))
    elseif user == "async_query" or user == "query_async" then
        local rc = KSR.kazoo["kazoo_" .. user](a, b, c, "ksr_async_ok", "ksr_async_err")
        if rc ~= 0 then
            reply(rc, 500, "Not suspended")
        end
    elseif user == "json" then
        reply(KSR.kazoo.kazoo_json(a, b, c))
    elseif user == "keys" then
        local rc = KSR.kazoo.kazoo_json_keys(a, b, c)
        local keys = {}
        while not KSR.pv.is_null("$avp(keys)") do
            table.insert(keys, KSR.pv.get("$avp(keys)"))
            KSR.pv.unset("$avp(keys)")
        end
        KSR.pv.sets("$var(res)", table.concat(keys, ","))
        reply(rc)
    elseif user == "encode" then
        reply(KSR.kazoo.kazoo_encode(a, b))
    elseif user == "pua" then
        reply(KSR.kazoo.kazoo_pua_publish(a))
    else
        KSR.sl.sl_send_reply(404, "Not Here")
    end
    return 1
end
"#;

/// A Kamailio running [`SCRIPT`] with `params`; `pua`: presence writes on.
fn start(params: &str, pua: bool) -> (Proxy, String) {
    let (config, node) = amqp_cfg(
        &system_broker_url(),
        &format!(
            "loadmodule \"app_lua.so\"\n\
             modparam(\"app_lua\", \"load\", \"{{{{RUNDIR}}}}/kazoo.lua\")\n\
             modparam(\"kazoo\", \"amqp_query_timeout_sec\", 1)\n\
             {params}\n\
             cfgengine \"lua\"\n"
        ),
        "",
    );
    let config = if pua {
        config.replace(
            "modparam(\"kazoo\", \"pua_mode\", 0)",
            "modparam(\"kazoo\", \"pua_mode\", 1)",
        )
    } else {
        config
    };
    let kamailio = Kamailio::builder()
        .file("kazoo.lua", SCRIPT)
        .start(&config)
        .unwrap_or_else(|e| panic!("kamailio: {e}"));
    let proxy = Proxy {
        kamailio,
        client: SipClient::new().expect("sip client"),
    };
    proxy.wait_connected(1, 1);
    (proxy, node)
}

/// The responder's answer: the request's `Question` echoed as `Answer`.
fn answer(request: &[u8]) -> Vec<(Duration, Vec<u8>)> {
    let question = serde_json::from_slice::<Value>(request)
        .map(|r| r["Question"].clone())
        .unwrap_or_default();
    let reply = json!({"Msg-ID": msg_id_of(request), "Answer": question});
    vec![(Duration::ZERO, reply.to_string().into_bytes())]
}

fn kzr(reply: &SipReply) -> Value {
    serde_json::from_slice(&result(reply, "X-KzR").expect("$kzR")).expect("JSON $kzR")
}

/// Publishes and queries in every form, and the async query's success and
/// error functions.
#[test]
fn kemi_publish_and_query_variants() {
    let (proxy, _node) = start("", false);
    let probe = AmqpProbe::connect(&system_broker_url()).expect("probe");
    let exchange = unique_name("kemi");
    probe.declare_exchange(&exchange, "topic").unwrap();
    let responder = probe.responder(&exchange, "q.#", answer).unwrap();
    let silent = unique_name("kemi-silent");
    probe.declare_exchange(&silent, "topic").unwrap();

    // kazoo_publish_hdrs: the fourth argument is headers.
    let queue = probe.capture(&exchange, "pub.#").unwrap();
    let reply = proxy.call(
        "publish_hdrs",
        &[
            exchange.as_bytes(),
            b"pub.hdrs",
            br#"{"Event-Category":"kemi","Event-Name":"hdrs"}"#,
            b"X-Kemi=yes;X-Other=2",
        ],
    );
    assert_eq!(int(&reply, "X-RC"), 1, "{reply:?}");
    let message = probe
        .get(&queue, Duration::from_secs(5))
        .unwrap()
        .expect("the publish reached the broker");
    assert_eq!(message.routing_key, "pub.hdrs");
    let headers = message.headers.expect("headers");
    assert!(
        headers.contains(&("X-Kemi".into(), 'S', "yes".into()))
            && headers.contains(&("X-Other".into(), 'S', "2".into())),
        "{headers:?}"
    );

    let question =
        |q: &str| json!({"Event-Category": "kemi", "Event-Name": "q", "Question": q}).to_string();

    // kazoo_query: the reply in $kzR.
    let reply = proxy.call(
        "query",
        &[
            exchange.as_bytes(),
            b"q.plain",
            question("plain").as_bytes(),
        ],
    );
    assert_eq!(int(&reply, "X-RC"), 1, "{reply:?}");
    assert_eq!(kzr(&reply)["Answer"], "plain");

    // kazoo_query_var: also in the named variable.
    let reply = proxy.call(
        "query_var",
        &[exchange.as_bytes(), b"q.var", question("var").as_bytes()],
    );
    assert_eq!(int(&reply, "X-RC"), 1, "{reply:?}");
    let res: Value = serde_json::from_slice(&result(&reply, "X-Res").unwrap()).unwrap();
    assert_eq!(res["Answer"], "var");
    assert_eq!(kzr(&reply)["Answer"], "var");

    // kazoo_query_hdrs: headers on the request; with a variable, or "" for
    // $kzR only.
    let reply = proxy.call(
        "query_hdrs",
        &[
            exchange.as_bytes(),
            b"q.hdrs",
            question("hdrs").as_bytes(),
            b"X-Q=1",
        ],
    );
    assert_eq!(int(&reply, "X-RC"), 1, "{reply:?}");
    let res: Value = serde_json::from_slice(&result(&reply, "X-Res").unwrap()).unwrap();
    assert_eq!(res["Answer"], "hdrs");
    let reply = proxy.call(
        "query_hdrs_kzr",
        &[
            exchange.as_bytes(),
            b"q.hdrs2",
            question("hdrs2").as_bytes(),
            b"X-Q=2",
        ],
    );
    assert_eq!(int(&reply, "X-RC"), 1, "{reply:?}");
    assert_eq!(result(&reply, "X-Res").unwrap(), b"UNSET");
    assert_eq!(kzr(&reply)["Answer"], "hdrs2");
    let requests = responder.requests();
    for (key, value) in [("q.hdrs", "1"), ("q.hdrs2", "2")] {
        let request = requests
            .iter()
            .find(|r| r.routing_key == key)
            .unwrap_or_else(|| panic!("no request {key}"));
        let headers = request.headers.clone().unwrap_or_default();
        assert!(
            headers.contains(&("X-Q".into(), 'S', value.into())),
            "{headers:?}"
        );
    }

    // A query nobody answers: -1 after the timeout, $kzR $null.
    let reply = proxy.call(
        "query",
        &[silent.as_bytes(), b"q.none", question("none").as_bytes()],
    );
    assert_eq!(int(&reply, "X-RC"), -1, "{reply:?}");
    assert!(result(&reply, "X-KzR").is_none());

    // kazoo_async_query and its alias: resumed in the success function with
    // the reply, or in the error function when none comes.
    for name in ["async_query", "query_async"] {
        let q = question(name);
        let reply = proxy.call(name, &[exchange.as_bytes(), b"q.async", q.as_bytes()]);
        assert_eq!(
            (reply.code, reply.reason.as_str()),
            (200, "ASYNC OK"),
            "{reply:?}"
        );
        assert_eq!(kzr(&reply)["Answer"], name);
        let reply = proxy.call(name, &[silent.as_bytes(), b"q.async", q.as_bytes()]);
        assert_eq!(
            (reply.code, reply.reason.as_str()),
            (503, "ASYNC ERR"),
            "{reply:?}"
        );
    }

    drop(responder);
    probe.delete_exchange(&exchange);
    probe.delete_exchange(&silent);
    proxy.assert_alive();
}

/// kazoo_json, kazoo_json_keys and kazoo_encode write the variable named by
/// their last argument, with the native return codes.
#[test]
fn kemi_json_keys_and_encode() {
    let (proxy, _node) = start("", false);
    let doc = br#"{"a":{"b":"x","n":null},"o":{"k1":1,"k2":{"z":2}}}"#;

    let reply = proxy.call("json", &[doc, b"a.b", b"$var(res)"]);
    assert_eq!(int(&reply, "X-RC"), 1);
    assert_eq!(result(&reply, "X-Res").unwrap(), b"x");
    let reply = proxy.call("json", &[doc, b"o.k2", b"$var(res)"]);
    assert_eq!(int(&reply, "X-RC"), 1);
    let value: Value = serde_json::from_slice(&result(&reply, "X-Res").unwrap()).unwrap();
    assert_eq!(value, json!({"z": 2}));
    // A read-only variable, or no variable at all, is refused.
    for target in [&b"$ci"[..], b"not a variable"] {
        let reply = proxy.call("json", &[doc, b"a.b", target]);
        assert_eq!(int(&reply, "X-RC"), -1, "{reply:?}");
        assert_eq!(result(&reply, "X-Res").unwrap(), b"UNSET");
    }

    // Keys in object order onto the AVP (read back top first).
    let reply = proxy.call("keys", &[doc, b"o", b"$avp(keys)"]);
    assert_eq!(int(&reply, "X-RC"), 1);
    assert_eq!(result(&reply, "X-Res").unwrap(), b"k2,k1");
    // Not an AVP: -1, as the native function.
    let reply = proxy.call("keys", &[doc, b"o", b"$var(keys)"]);
    assert_eq!(int(&reply, "X-RC"), -1);

    let reply = proxy.call("encode", &[b"127.0.0.1", b"$var(res)"]);
    assert_eq!(int(&reply, "X-RC"), 1);
    assert_eq!(result(&reply, "X-Res").unwrap(), b"127%2E0%2E0%2E1");
    let reply = proxy.call("encode", &[&[b'a'; 300], b"$var(res)"]);
    assert_eq!(int(&reply, "X-RC"), -1, "longer than 255 bytes");
    assert_eq!(result(&reply, "X-Res").unwrap(), b"UNSET");
    proxy.assert_alive();
}

/// kazoo_pua_publish writes the package its payload names.
#[test]
fn kemi_pua_publish_writes_the_presentity() {
    let db = Database::create();
    let file = &db.file;
    let (proxy, _node) = start(
        &format!(
            "loadmodule \"db_sqlite.so\"\nmodparam(\"kazoo\", \"db_url\", \"sqlite://{}\")",
            file.display()
        ),
        true,
    );
    let update = json!({
        "Event-Category": "presence", "Event-Name": "update", "Event-Package": "presence",
        "From": "sip:3001@example.com", "From-User": "3001", "From-Realm": "example.com",
        "To": "sip:3001@example.com", "To-User": "3001", "To-Realm": "example.com",
        "State": "confirmed", "Call-ID": "kemi-pua-1", "Expires": 3600,
    });
    let reply = proxy.call("pua", &[update.to_string().as_bytes()]);
    assert_eq!(int(&reply, "X-RC"), 1, "{reply:?}");
    let rows = sqlite(
        file,
        "SELECT username, domain, event, etag FROM presentity;",
    );
    let rows: Value = serde_json::from_str(&rows).unwrap();
    assert_eq!(
        rows,
        json!([{"username": "3001", "domain": "example.com", "event": "presence", "etag": "kemi-pua-1"}])
    );
    // Invalid JSON: -1, nothing written.
    let reply = proxy.call("pua", &[b"{not json"]);
    assert_eq!(int(&reply, "X-RC"), -1);
    drop(proxy);
}
