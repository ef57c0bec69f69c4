"""Cost of ConnInfo capture per attempt: the lean stamps (conncapture) vs an aiohttp
TraceConfig vs nothing; CPU time of a loopback send+read (client and server in-process)."""
import asyncio, sys, time, statistics
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "addons")); sys.path.insert(0, str(ROOT / "tests"))
import aiohttp
from glue.test_upstream_options import Server
from keypool.mitm import conncapture
from keypool.mitm.conninfo import ConnInfo

def tc():
    t = aiohttp.TraceConfig()
    async def h(s, c, p):
        i = c.trace_request_ctx
        if i is not None: i.timestamp_request_sent = time.time()
    for sig in (t.on_connection_create_end, t.on_connection_reuseconn, t.on_request_headers_sent, t.on_request_chunk_sent):
        sig.append(h)
    return t

async def run(session, url, n, mode):
    t0 = time.process_time()
    for _ in range(n):
        info = ConnInfo(("127.0.0.1", 1), timestamp_start=time.time())
        if mode == "lean":
            tok = conncapture.attempt.set(info)
            try:
                resp = await session.request("POST", url, data=b"{}")
            finally:
                conncapture.attempt.reset(tok)
            conncapture.capture(info, resp)
        elif mode == "trace":
            resp = await session.request("POST", url, data=b"{}", trace_request_ctx=info)
            conncapture.capture(info, resp)
        else:
            resp = await session.request("POST", url, data=b"{}")
        await resp.read()
    return (time.process_time() - t0) / n * 1e6

async def main():
    async with Server() as srv:
        url = srv.url + "/chat/completions"
        s = {"lean": aiohttp.ClientSession(connector=conncapture.Connector(), request_class=conncapture.Request),
             "trace": aiohttp.ClientSession(trace_configs=[tc()]),
             "none": aiohttp.ClientSession()}
        for k, v in s.items(): await run(v, url, 200, k)
        r = {k: [] for k in s}
        for _ in range(25):
            for k, v in s.items():
                r[k].append(await run(v, url, 200, k))
        for k, v in r.items():
            print(k, f"CPU per attempt (client+server): median {statistics.median(v):.1f} µs, min {min(v):.1f}")
        for v in s.values(): await v.close()
asyncio.run(main())
