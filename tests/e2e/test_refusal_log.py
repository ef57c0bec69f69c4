"""Through a real mitmdump: requests the gateway refused itself are rows of the request log
(a 401 without the token, a 403 with the client's name), the reserved paths are not, and
the web UI's store finds them under its 4xx filter and by search."""
import json
import sqlite3

import openai
import pytest

from webui.store import LogFilter, Store

from .conftest import CLIENT_TOKEN, K2, pool_yaml
from .harness import GatewayProcess, get, wait_for

CLIENTS = f"""
clients:
  - name: app
    token: {CLIENT_TOKEN}
  - name: mini-only
    token: kmx-mini-only-token-999999
    models: ["gpt-4o-mini"]
"""
WRONG = "kmx-wrong-token-000000-zz"


def rows(db):
    if not db.is_file():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY id")]
        except sqlite3.OperationalError:  # the table is not there yet
            return []


def test_401_and_403_are_rows(mock, tmp_path, confdir):
    with GatewayProcess(tmp_path, pool_yaml(mock.base_url, CLIENTS), env={"MOCK_KEY_2": K2},
                        confdir=confdir) as gw:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=gw.url + "/v1", api_key=WRONG, max_retries=0, timeout=20) \
                .chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.PermissionDeniedError):
            openai.OpenAI(base_url=gw.url + "/v1", api_key="kmx-mini-only-token-999999",
                          max_retries=0, timeout=20) \
                .chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        assert get(gw, "/health")[0] == 200 and get(gw, "/metrics")[0] in (200, 401, 403)
        db = tmp_path / "state" / "keymux.db"
        assert wait_for(lambda: len(rows(db)) >= 2, timeout=10), rows(db)
        got = rows(db)
        assert mock.count() == 0
    assert [r["status"] for r in got] == [401, 403]  # and no row for /health or /metrics
    unauth, denied = got
    assert unauth["error_code"] == "invalid_client_token" and unauth["client"] is None
    assert unauth["path"] == "/v1/chat/completions" and unauth["attempts"] == "[]"
    assert denied["error_code"] == "model_not_allowed" and denied["client"] == "mini-only"
    assert denied["model"] == "gpt-4o" and "may not use model" in denied["error"]
    store = Store(db)
    assert store.requests(LogFilter(status="4xx"), 1)[1] == 2
    assert store.requests(LogFilter(status="refused", client="mini-only"), 1)[1] == 1
    assert store.requests(LogFilter(q="invalid_client_token"), 1)[1] == 1
    text = json.dumps(got)
    assert WRONG not in text and "kmx-mini-only-token-999999" not in text
