-- The Kazoo edge registrar and presence roles as a Lua KEMI script
-- (app_lua): the flows of registrar-role.cfg and presence-role.cfg, with
-- KSR.kazoo.* in place of the native functions.

-- A value of the configuration (#!define, #!substdef in local.cfg).
local function def(name)
    return KSR.pv.get("$def(" .. name .. ")")
end

-- A JSON string literal.
local function quoted(value)
    value = tostring(value or "")
    return '"' .. value:gsub('\\', '\\\\'):gsub('"', '\\"') .. '"'
end

-- A field of a JSON document, through kazoo_json ($var(field) is $null,
-- read as nil, when the field is missing).
local function field(json, path)
    if KSR.kazoo.kazoo_json(json, path, "$var(field)") ~= 1 then
        return nil
    end
    return KSR.pv.get("$var(field)")
end

-- A value as one routing-key word.
local function encoded(value)
    KSR.kazoo.kazoo_encode(value, "$var(encoded)")
    return KSR.pv.get("$var(encoded)")
end

function ksr_request_route()
    if KSR.maxfwd.process_maxfwd(10) < 0 then
        KSR.sl.sl_send_reply(483, "Too Many Hops")
        return 1
    end
    if KSR.is_OPTIONS() then
        KSR.sl.sl_send_reply(200, "OK")
    elseif KSR.is_REGISTER() then
        registrar()
    elseif KSR.is_SUBSCRIBE() then
        presence()
    else
        KSR.sl.sl_send_reply(404, "Not Here")
    end
    return 1
end

-- REGISTER: digest challenge, credentials from Kazoo (authn_req,
-- asynchronously), resumed in ksr_authn_reply or ksr_authn_timeout.
function registrar()
    local realm = KSR.pv.get("$td")
    if KSR.hdr.is_present("Authorization") < 0 then
        KSR.auth.auth_challenge(realm, 1)
        return
    end
    KSR.pv.seti("$avp(kz_timeout)",
        tonumber(KSR.pv.get("$sel(cfg_get.kazoo.registrar_query_timeout_ms)")))
    local payload = "{" ..
        '"Event-Category": "directory", "Event-Name": "authn_req", "Method": "REGISTER", ' ..
        '"Auth-Realm": ' .. quoted(realm) .. ', "Auth-User": ' .. quoted(KSR.pv.get("$au")) .. ', ' ..
        '"From": ' .. quoted(KSR.pv.get("$fu")) .. ', "To": ' .. quoted(KSR.pv.get("$tu")) .. ', ' ..
        '"Call-ID": ' .. quoted(KSR.pv.get("$ci")) .. ', "Orig-IP": ' .. quoted(KSR.pv.get("$si")) .. ', ' ..
        '"Orig-Port": ' .. quoted(KSR.pv.get("$sp")) .. "}"
    local rc = KSR.kazoo.kazoo_async_query(def("AUTHN_EXCHANGE"), "authn.req." .. encoded(realm),
        payload, "ksr_authn_reply", "ksr_authn_timeout")
    if rc ~= 0 then
        -- Nothing was suspended.
        KSR.err("authn query for " .. KSR.pv.get("$au") .. " not sent\n")
        KSR.sl.sl_send_reply(500, "Server Error")
    end
end

-- The authn reply decides.
function ksr_authn_reply()
    local reply = KSR.pv.get("$kzR")
    if field(reply, "Event-Name") ~= "authn_resp" then
        KSR.notice("kazoo refused " .. KSR.pv.get("$au") .. "\n")
        KSR.tm.t_reply(403, "Forbidden")
        return 1
    end
    local realm = KSR.pv.get("$td")
    if KSR.auth.pv_auth_check(realm, field(reply, "Auth-Password"), 0, 0) < 0 then
        KSR.notice("wrong credentials for " .. KSR.pv.get("$au") .. "\n")
        KSR.tm.t_reply(403, "Forbidden")
        return 1
    end
    KSR.auth.consume_credentials()
    local account_id = field(reply, "Custom-Channel-Vars.Account-ID")
    if KSR.registrar.save("location", 0) < 0 then
        KSR.tm.t_reply(500, "Not Saved")
        return 1
    end
    local user = KSR.pv.get("$au")
    local success = "{" ..
        '"Event-Category": "directory", "Event-Name": "reg_success", "Status": "Registered", ' ..
        '"Event-Timestamp": ' .. KSR.pv.get("$TS") .. ', ' ..
        '"Expires": ' .. KSR.pv.get("$(hdr(Expires){s.int})") .. ', ' ..
        '"Contact": ' .. quoted(KSR.pv.get("$(ct{tobody.uri})")) .. ', ' ..
        '"Call-ID": ' .. quoted(KSR.pv.get("$ci")) .. ', "Realm": ' .. quoted(realm) .. ', ' ..
        '"Username": ' .. quoted(user) .. ', "Account-ID": ' .. quoted(account_id) .. "}"
    local rk = "registration.success." .. encoded(realm) .. "." .. encoded(user)
    if KSR.kazoo.kazoo_publish(def("REGISTRAR_EXCHANGE"), rk, success) ~= 1 then
        KSR.err("reg_success for " .. user .. " not published\n")
    end
    return 1
end

function ksr_authn_timeout()
    KSR.warn("no authn reply for " .. KSR.pv.get("$au") .. "\n")
    KSR.tm.t_reply(503, "Authentication Unavailable")
    return 1
end

-- SUBSCRIBE: handled by the presence modules.
function presence()
    if KSR.tm.t_newtran() < 0 then
        KSR.sl.sl_reply_error()
        return
    end
    if KSR.presence.handle_subscribe() < 0 then
        KSR.notice("SUBSCRIBE for " .. KSR.pv.get("$ru") .. " not handled\n")
    end
    KSR.tm.t_release()
end

-- Packages of the presence updates: the write and the watchers' event.
local updates = {
    dialog_update = { "kazoo_pua_publish_dialoginfo", "dialog" },
    mwi_update = { "kazoo_pua_publish_mwi", "message-summary" },
    update = { "kazoo_pua_publish_presence", "presence" },
}

-- The kazoo module's events (event_callback): declare the subscriptions at
-- start-up; write the presence updates consumed from the bus.
function ksr_kazoo_event(evname)
    local node = def("MY_HOSTNAME")
    if evname == "kazoo:mod-init" then
        KSR.kazoo.kazoo_subscribe_simple(def("REGISTRAR_EXCHANGE"), "topic",
            "registrar-flush-" .. node, "registration.flush.*")
        KSR.kazoo.kazoo_subscribe('{"name": "presence", "exchange": ' .. quoted(def("PRESENCE_EXCHANGE")) ..
            ', "type": "topic", "queue": ' .. quoted("presence-dialog-" .. node) ..
            ', "routing": ["dialog.*.*", "update.*.*", "mwi_updates.*.*"], "no_ack": false, "federate": true}')
        return 1
    end
    -- Connection events have no Event-Name.
    local event = KSR.pv.get("$kzE")
    local update = updates[field(event, "Event-Name") or ""]
    if update and KSR.kazoo[update[1]](event) == 1 then
        KSR.presence.pres_refresh_watchers(field(event, "From"), update[2], 1)
    end
    return 1
end
