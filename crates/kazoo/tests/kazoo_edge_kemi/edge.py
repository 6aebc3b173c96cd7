# The Kazoo edge registrar and presence roles as a Python KEMI script
# (app_python3): the flows of registrar-role.cfg and presence-role.cfg, with
# KSR.kazoo.* in place of the native functions.
import json

import KSR


def define(name):
    """A value of the configuration (#!define, #!substdef in local.cfg)."""
    return KSR.pv.get("$def(" + name + ")")


def field(document, path):
    """A field of a JSON document, through kazoo_json (None when missing)."""
    if KSR.kazoo.kazoo_json(document, path, "$var(field)") != 1:
        return None
    return KSR.pv.get("$var(field)")


def encoded(value):
    """A value as one routing-key word."""
    KSR.kazoo.kazoo_encode(value, "$var(encoded)")
    return KSR.pv.get("$var(encoded)")


# Presence updates: the write and the watchers' event package.
UPDATES = {
    "dialog_update": ("kazoo_pua_publish_dialoginfo", "dialog"),
    "mwi_update": ("kazoo_pua_publish_mwi", "message-summary"),
    "update": ("kazoo_pua_publish_presence", "presence"),
}


class Edge:
    def child_init(self, rank):
        return 0

    def ksr_request_route(self, msg):
        if KSR.maxfwd.process_maxfwd(10) < 0:
            KSR.sl.sl_send_reply(483, "Too Many Hops")
        elif KSR.is_OPTIONS():
            KSR.sl.sl_send_reply(200, "OK")
        elif KSR.is_REGISTER():
            self.registrar()
        elif KSR.is_SUBSCRIBE():
            self.presence()
        else:
            KSR.sl.sl_send_reply(404, "Not Here")
        return 1

    def ksr_reply_route(self, msg):
        """Replies (to the NOTIFYs): nothing to do."""
        return 1

    def registrar(self):
        """Digest challenge, credentials from Kazoo (authn_req,
        asynchronously), resumed in ksr_authn_reply or ksr_authn_timeout."""
        realm = KSR.pv.get("$td")
        if KSR.hdr.is_present("Authorization") < 0:
            KSR.auth.auth_challenge(realm, 1)
            return
        KSR.pv.seti("$avp(kz_timeout)",
                    int(KSR.pv.get("$sel(cfg_get.kazoo.registrar_query_timeout_ms)")))
        payload = json.dumps({
            "Event-Category": "directory", "Event-Name": "authn_req",
            "Method": "REGISTER", "Auth-Realm": realm,
            "Auth-User": KSR.pv.get("$au"), "From": KSR.pv.get("$fu"),
            "To": KSR.pv.get("$tu"), "Call-ID": KSR.pv.get("$ci"),
            "Orig-IP": KSR.pv.get("$si"), "Orig-Port": str(KSR.pv.get("$sp")),
        })
        rc = KSR.kazoo.kazoo_async_query(define("AUTHN_EXCHANGE"),
                                         "authn.req." + encoded(realm), payload,
                                         "ksr_authn_reply", "ksr_authn_timeout")
        if rc != 0:
            # Nothing was suspended.
            KSR.err("authn query for %s not sent\n" % KSR.pv.get("$au"))
            KSR.sl.sl_send_reply(500, "Server Error")

    def ksr_authn_reply(self, msg):
        """The authn reply decides."""
        reply = KSR.pv.get("$kzR")
        if field(reply, "Event-Name") != "authn_resp":
            KSR.notice("kazoo refused %s\n" % KSR.pv.get("$au"))
            KSR.tm.t_reply(403, "Forbidden")
            return 1
        realm = KSR.pv.get("$td")
        if KSR.auth.pv_auth_check(realm, field(reply, "Auth-Password"), 0, 0) < 0:
            KSR.notice("wrong credentials for %s\n" % KSR.pv.get("$au"))
            KSR.tm.t_reply(403, "Forbidden")
            return 1
        KSR.auth.consume_credentials()
        account_id = field(reply, "Custom-Channel-Vars.Account-ID")
        if KSR.registrar.save("location", 0) < 0:
            KSR.tm.t_reply(500, "Not Saved")
            return 1
        user = KSR.pv.get("$au")
        success = json.dumps({
            "Event-Category": "directory", "Event-Name": "reg_success",
            "Status": "Registered", "Event-Timestamp": KSR.pv.get("$TS"),
            "Expires": KSR.pv.get("$(hdr(Expires){s.int})"),
            "Contact": KSR.pv.get("$(ct{tobody.uri})"),
            "Call-ID": KSR.pv.get("$ci"), "Realm": realm, "Username": user,
            "Account-ID": account_id,
        })
        rk = "registration.success." + encoded(realm) + "." + encoded(user)
        if KSR.kazoo.kazoo_publish(define("REGISTRAR_EXCHANGE"), rk, success) != 1:
            KSR.err("reg_success for %s not published\n" % user)
        return 1

    def ksr_authn_timeout(self, msg):
        KSR.warn("no authn reply for %s\n" % KSR.pv.get("$au"))
        KSR.tm.t_reply(503, "Authentication Unavailable")
        return 1

    def presence(self):
        """SUBSCRIBE: handled by the presence modules."""
        if KSR.tm.t_newtran() < 0:
            KSR.sl.sl_reply_error()
            return
        if KSR.presence.handle_subscribe() < 0:
            KSR.notice("SUBSCRIBE for %s not handled\n" % KSR.pv.get("$ru"))
        KSR.tm.t_release()

    def ksr_kazoo_event(self, msg, evname):
        """The kazoo module's events (event_callback): declare the
        subscriptions at start-up; write the presence updates consumed from
        the bus."""
        node = define("MY_HOSTNAME")
        if evname == "kazoo:mod-init":
            KSR.kazoo.kazoo_subscribe_simple(define("REGISTRAR_EXCHANGE"), "topic",
                                             "registrar-flush-" + node,
                                             "registration.flush.*")
            KSR.kazoo.kazoo_subscribe(json.dumps({
                "name": "presence", "exchange": define("PRESENCE_EXCHANGE"),
                "type": "topic", "queue": "presence-dialog-" + node,
                "routing": ["dialog.*.*", "update.*.*", "mwi_updates.*.*"],
                "no_ack": False, "federate": True,
            }))
            return 1
        # Connection events have no Event-Name.
        event = KSR.pv.get("$kzE")
        update = UPDATES.get(field(event, "Event-Name"))
        if update and getattr(KSR.kazoo, update[0])(event) == 1:
            KSR.presence.pres_refresh_watchers(field(event, "From"), update[1], 1)
        return 1


def mod_init():
    return Edge()
