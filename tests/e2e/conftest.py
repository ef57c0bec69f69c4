import pytest

from keypool.demo.mock_upstream import MockUpstream

from .harness import GatewayProcess

K1, K2 = "sk-mock-key-one-00000001", "sk-mock-key-two-00000002"
A1 = "sk-ant-mock-key-00000003"
ALT1 = "sk-alt-mock-key-00000004"
SECRETS = (K1, K2, A1, ALT1)
CLIENT_TOKEN = "kmx-client-token-abcdef123456"


def pool_yaml(mock_url: str, extra: str = "") -> str:
    return f"""
version: 1
providers:
  mock:
    base_url: {mock_url}/v1
    models: ["gpt-*", "mock-*", "text-embedding-*"]
    stream_usage: true
  mockant:
    base_url: {mock_url}/v1
    auth: x-api-key
    models: ["claude-*"]
  mockalt:
    base_url: {mock_url}/alt/v1
    models: ["alt-*"]
keys:
  - name: k1
    provider: mock
    key: {K1}
  - name: k2
    provider: mock
    key: ${{MOCK_KEY_2}}
  - name: a1
    provider: mockant
    key: {A1}
  - name: alt1
    provider: mockalt
    key: {ALT1}
  - name: unset
    provider: mock
    key: ${{KEYMUX_TEST_NEVER_SET}}
{extra}
"""


@pytest.fixture(scope="session")
def mock():
    with MockUpstream() as m:
        yield m


@pytest.fixture(autouse=True)
def _fresh_mock(mock):
    mock.reset()


@pytest.fixture(scope="session")
def confdir(tmp_path_factory):
    return tmp_path_factory.mktemp("mitmproxy-conf")


@pytest.fixture(scope="module")
def gateway(mock, tmp_path_factory, confdir):
    work = tmp_path_factory.mktemp("gw")
    with GatewayProcess(work, pool_yaml(mock.base_url), env={"MOCK_KEY_2": K2},
                        confdir=confdir) as gw:
        yield gw
