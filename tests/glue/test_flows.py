"""What keymux's flows show (mitm/flows.py, mitm/attempts.py), in-process with tflow/taddons."""
import asyncio
import json
import time

from cryptography.hazmat.primitives.serialization import Encoding
from mitmproxy import certs
from mitmproxy.test import taddons, tflow

from keypool import answers
from keypool.mitm import attempts, flows
from keypool.mitm.conninfo import ConnInfo
from keypool.reissue import UpstreamError
from tests.unit.test_reissue import FakeReply, FakeUpstream, make, run

TOKEN = "kmx-client-token-abcdef123456"
FIELDS = ((b"content-type", b"application/json"), (b"authorization", b"Bearer " + TOKEN.encode()),
          (b"content-length", b"999"), (b"content-encoding", b"gzip"))


def client_flow():
    f = tflow.tflow()
    f.request.headers["authorization"] = "Bearer " + TOKEN
    f.request.headers["host"] = "127.0.0.1:8080"
    return f


def conninfo(t0=1000.0):
    _, cert = certs.create_ca("keymux test", "mock.example", 2048)
    return ConnInfo(("api.example", 443), peername=("10.0.0.7", 443), sockname=("10.0.0.1", 5555),
                    via="http://proxy.example:3128", sni="api.example", tls_version="TLSv1.3",
                    cipher="TLS_AES_128_GCM_SHA256", alpn="http/1.1",
                    certificates=[cert.public_bytes(Encoding.DER)], timestamp_start=t0,
                    timestamp_tcp_setup=t0 + 0.01, timestamp_tls_setup=t0 + 0.02,
                    timestamp_request_sent=t0 + 0.03, timestamp_response_start=t0 + 0.5,
                    timestamp_end=t0 + 0.6)


def test_a_gateway_answer_names_host_keymux_marks_and_explains():
    f = client_flow()
    flows.answered(f, answers.error(401, "unknown client token", "invalid_client_token"), [TOKEN])
    assert f.request.host == "keymux" and f.request.scheme == "http"
    assert f.request.port == f.client_conn.sockname[1]
    assert f.request.headers["host"] == "keymux"  # so mitmweb's list shows it too
    assert f.metadata["keymux"]["client_host"] == "127.0.0.1:8080"  # the client's, kept
    assert f.marked == flows.REFUSED and f.comment == "401 unknown client token"
    assert TOKEN not in f.request.headers["authorization"]
    assert f.response.status_code == 401


def test_the_comment_masks_any_secret_and_markers_follow_the_status():
    answer = answers.error(404, f"no provider for model x-{TOKEN}", "no_route")
    assert flows.why(answer, [TOKEN]) == "404 no provider for model x-kmx…3456"
    assert [flows.marker(s) for s in (200, 400, 429, 503, 500, 502)] == [
        flows.OWN, flows.REFUSED, flows.BUSY, flows.BUSY, flows.BROKEN, flows.FAILED]


def routed(script=None, max_attempts=3):
    gw, clock = make(max_attempts=max_attempts)
    up = FakeUpstream(clock, script)
    failures = attempts.Failures()
    out, ticket = run(gw, up, on_failed=failures.add)
    return gw, out, ticket, failures


def test_the_client_flow_shows_the_request_as_sent_and_the_real_connection():
    gw, out, ticket, failures = routed()
    assert failures.records == []  # the first attempt answered: nothing recorded
    out.reply.conn = conninfo()
    f = client_flow()
    shown = flows.sent_fields(out.plan, FIELDS)
    flows.show_routed(f, ticket, out.plan, out.reply, shown)
    f.response = tflow.tresp()
    flows.show_connection(f, out.reply, out.plan, whole=True)
    req = f.request
    assert req.pretty_url == "https://api.openai.com/v1/chat/completions"
    assert req.raw_content == ticket.body and "content-encoding" not in req.headers
    assert req.headers["content-length"] == str(len(ticket.body))
    assert req.headers["authorization"] == "Bearer sk-…0000" and TOKEN not in str(req.headers)
    assert f.comment == "k1 200 · key sk-…0000" and not f.marked
    s = f.server_conn
    assert s.address == ("api.example", 443) and s.peername == ("10.0.0.7", 443)
    assert s.tls and s.tls_version == "TLSv1.3" and s.alpn == b"http/1.1"
    assert s.certificate_list[0].cn == "mock.example" and s.via == ("http", ("proxy.example", 3128))
    assert (s.timestamp_start, s.timestamp_tls_setup) == (1000.0, 1000.02)
    assert s.timestamp_end is None  # a pooled connection is not closed
    # mitmproxy stamps a response set in the request hook with its own clock after the hook;
    # the upstream's times are put back in responseheaders and response.
    f.response.timestamp_start = f.response.timestamp_end = 2000.0
    flows.restamp(f, end=False)
    assert f.response.timestamp_start == 1000.5
    f.response.timestamp_end = 2000.0
    flows.restamp(f, end=True)
    assert (req.timestamp_end, f.response.timestamp_start, f.response.timestamp_end) == (
        1000.03, 1000.5, 1000.6)


def test_without_a_conninfo_the_server_is_the_providers_address():
    gw, out, ticket, _ = routed()
    f = client_flow()
    flows.show_connection(f, out.reply, out.plan, whole=True)
    assert f.server_conn.address == ("api.openai.com", 443)


def test_a_reissued_request_names_every_key_and_its_attempt_flows():
    gw, out, ticket, failures = routed({"k1": [FakeReply(429, body=b'{"e":"sk-k1-secret-0000"}')]})
    f = client_flow()
    flows.show_routed(f, ticket, out.plan, out.reply, flows.sent_fields(out.plan, FIELDS))
    assert f.comment == "k1 429 → k2 200 · attempt 2 of 2, key sk-…0000"
    assert f.marked == flows.REISSUED
    ids = attempts.link(f, failures.records)
    [a] = attempts.build(f, failures.records, ids, FIELDS, "POST", 8, gw.masker)
    assert a.id == ids[0] == f.metadata["keymux"]["attempt_flows"][0] and not a.live
    assert a.comment == "attempt 1 of 2 for POST /v1/chat/completions: k1 429 (re-issued)"
    assert a.metadata["keymux"] == {
        "attempt_of": f.id, "attempt": 1, "attempts": 2, "key": "k1", "provider": "openai",
        "model": "gpt-4o-mini", "status": 429, "error": None}
    assert a.response.status_code == 429 and a.response.raw_content == b'{"e":"sk'  # capped
    assert a.request.headers["authorization"] == "Bearer sk-…0000"
    assert a.request.raw_content == ticket.body and a.marked == flows.FAILED


def test_a_connection_failure_is_an_attempt_flow_with_an_error():
    gw, out, ticket, failures = routed({"k1": [UpstreamError("cannot connect: refused")]})
    f = client_flow()
    [a] = attempts.build(f, failures.records, attempts.link(f, failures.records), FIELDS,
                         "POST", 1024, gw.masker)
    assert a.response is None and a.error.msg == "cannot connect: refused"
    assert "k1 cannot connect: refused (re-issued)" in a.comment


class Recorder:
    def __init__(self):
        self.seen = []

    def requestheaders(self, f): self.seen.append(("requestheaders", f.id))
    def request(self, f): self.seen.append(("request", f.id))
    def responseheaders(self, f): self.seen.append(("responseheaders", f.id))
    def response(self, f): self.seen.append(("response", f.id))
    def error(self, f): self.seen.append(("error", f.id))


def test_attempt_flows_are_published_through_every_lifecycle_hook():
    gw, out, ticket, failures = routed({"k1": [FakeReply(500)]})
    f, rec = client_flow(), Recorder()
    ids = attempts.link(f, failures.records)

    async def go():
        pub = attempts.Publisher()
        pub.publish(lambda: attempts.build(f, failures.records, ids, FIELDS, "POST", 64,
                                           gw.masker))
        await asyncio.wait_for(asyncio.gather(*pub.tasks), 5)
        assert not pub.tasks

    with taddons.context(rec):
        asyncio.run(go())
    assert rec.seen == [(h, ids[0]) for h in
                        ("requestheaders", "request", "responseheaders", "response")]


def test_a_stream_copy_is_capped_and_never_changes_a_chunk():
    tap = lambda data: [data.upper()] if data else []  # a tap that rewrites, as SseTap may
    copy = flows.StreamCopy(tap, 5)
    assert copy(b"abc") == [b"ABC"] and copy(b"defg") == [b"DEFG"] and copy(b"") == []
    assert bytes(copy.buf) == b"ABCDE" and copy.truncated
    f = client_flow()
    f.response = tflow.tresp()
    f.response.headers["content-type"] = "text/event-stream"
    f.comment = "k1 200"
    headers = f.response.headers.copy()
    flows.keep_copy(f, copy)
    assert f.response.raw_content == b"ABCDE" and f.response.headers == headers
    assert f.comment == "k1 200; stream copy truncated at 0 KB"
    plain = flows.StreamCopy(None, 1024)
    assert plain(b"data: x\n\n") == b"data: x\n\n" and not plain.truncated


def test_the_attempt_flows_json_holds_no_token():
    gw, out, ticket, failures = routed({"k1": [FakeReply(401)]})
    f = client_flow()
    [a] = attempts.build(f, failures.records, attempts.link(f, failures.records), FIELDS,
                         "POST", 64, gw.masker)
    text = json.dumps(a.get_state(), default=repr)
    assert TOKEN not in text and "sk-k1-secret-0000" not in text
    assert time.time() - a.request.timestamp_start < 60


def test_under_mitmweb_the_flow_list_shows_the_comment_unless_the_user_chose_columns():
    from typing import Sequence

    default = ["tls", "icon", "path", "method", "status", "size", "time"]
    with taddons.context() as tctx:
        flows.comment_column()  # mitmdump: no such option, nothing to do
        tctx.options.add_option("web_columns", Sequence[str], default, "columns")
        flows.comment_column()
        assert tctx.options.web_columns == [*default, "comment"]
    with taddons.context() as tctx:
        tctx.options.add_option("web_columns", Sequence[str], default, "columns")
        tctx.options.update(web_columns=["path", "status"])
        flows.comment_column()
        assert tctx.options.web_columns == ["path", "status"]


def test_the_cheap_server_copy_is_a_real_server():
    from mitmproxy import connection
    fields = dict(address=("api.example", 443), peername=("10.0.0.7", 443), tls=True,
                  sni="api.example", tls_version="TLSv1.3", timestamp_start=1.0)
    fast, real = flows._server(**fields), connection.Server(**fields)
    assert {**fast.get_state(), "id": None} == {**real.get_state(), "id": None}
    assert fast.id != flows._server(**fields).id and fast != real
    assert connection.Server.from_state(fast.get_state()).address == ("api.example", 443)


def test_a_published_attempt_flow_is_left_alone_by_the_fail_closed_guard(monkeypatch):
    from keypool.mitm import runtime
    from keypool.mitm.failclosed import FailClosed
    monkeypatch.setattr(runtime, "active", None)  # the guard would answer any live flow 503
    gw, out, ticket, failures = routed({"k1": [FakeReply(429)]})
    f = client_flow()
    [a] = attempts.build(f, failures.records, attempts.link(f, failures.records), FIELDS,
                         "POST", 64, gw.masker)

    async def go():
        pub = attempts.Publisher()
        pub.publish(lambda: [a])
        await asyncio.wait_for(asyncio.gather(*pub.tasks), 5)

    with taddons.context(FailClosed()):
        asyncio.run(go())
    assert a.response.status_code == 429 and a.request.host == "api.openai.com"


def test_a_key_tests_flow_says_the_provider_answered_not_keymux():
    body = {"key": "k1", "provider": "openai", "ok": False, "status": 401, "outcome": "auth",
            "latency_ms": 85, "state": "dead", "error": "bad key"}
    assert flows.tested(answers.json_answer(200, body)) == "key test k1: openai 401 auth (85 ms)"
    body.update(status=None, error="timeout", outcome="timeout")
    assert flows.tested(answers.json_answer(200, body)) == "key test k1: openai timeout timeout (85 ms)"
    assert flows.tested(answers.error(404, "no key named k9", "not_found")) == "404 no key named k9"
