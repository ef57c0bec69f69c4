"""Keymux.configure in a taddons context: what it refuses, what it forces, what it says."""
import pytest
from mitmproxy import exceptions

from .conftest import GLUE_K1, GLUE_K2, GLUE_TOKEN, glue_keys_yaml, keymux_in


async def test_configure_forces_lazy_connections_the_client_host_and_the_body_limit(glue_config):
    async with keymux_in(glue_config, connection_strategy="eager",
                         keep_host_header=False, body_size_limit="1g") as (addon, tctx):
        assert tctx.options.connection_strategy == "lazy"
        assert tctx.options.keep_host_header is True
        assert tctx.options.body_size_limit == str(addon.gateway.max_body)
        assert addon.gateway.max_body == 32 << 20  # routing.max_body_mb's default


async def test_a_later_attempt_to_undo_them_is_overridden_again(glue_config):
    async with keymux_in(glue_config) as (addon, tctx):
        tctx.options.update(connection_strategy="eager", keep_host_header=False)
        assert tctx.options.connection_strategy == "lazy"
        assert tctx.options.keep_host_header is True


async def test_body_size_limit_follows_max_body_mb(tmp_path, glue_upstream):
    path = tmp_path / "keys.yaml"
    path.write_text(glue_keys_yaml(glue_upstream.base_url, extra=(
        f"  max_body_mb: 2\nstate_dir: {tmp_path / 'state'}")))
    async with keymux_in(path) as (addon, tctx):
        assert addon.gateway.max_body == 2 << 20
        assert tctx.options.body_size_limit == str(2 << 20)


async def test_stream_large_bodies_is_refused_and_rolled_back(glue_config):
    async with keymux_in(glue_config) as (addon, tctx):
        with pytest.raises(exceptions.OptionsError, match="stream_large_bodies"):
            tctx.configure(addon, stream_large_bodies="1m")
        assert not tctx.options.stream_large_bodies


async def test_an_open_bind_without_clients_is_refused(tmp_path, glue_upstream):
    path = tmp_path / "keys.yaml"
    path.write_text(glue_keys_yaml(glue_upstream.base_url, clients=False,
                                   extra=f"state_dir: {tmp_path / 'state'}"))
    with pytest.raises(exceptions.OptionsError, match="refusing to start"):
        async with keymux_in(path, listen_host="0.0.0.0"):
            pass


async def test_an_open_bind_is_served_with_clients_or_when_allowed(tmp_path, glue_upstream):
    path = tmp_path / "keys.yaml"
    path.write_text(glue_keys_yaml(glue_upstream.base_url, clients=False,
                                   extra=f"state_dir: {tmp_path / 'state'}"))
    async with keymux_in(path, listen_host="0.0.0.0", keymux_allow_open_gateway=True) as (a, _):
        assert a.gateway is not None
    async with keymux_in(path) as (a, _):  # loopback, no clients: fine
        assert a.gateway.config.clients is None


@pytest.mark.parametrize("broken", [
    "keys: [",                                           # YAML syntax
    "version: 1\nkeys:\n  - name: k1\n    provider: nope\n    key: {secret}\n",
    "version: 1\nproviders: {{}}\nkeys:\n  - name: k1\n    key: {secret}\n    bogus: {secret}\n",
])
async def test_a_broken_keys_yaml_is_an_options_error_without_the_secret(tmp_path, broken):
    path = tmp_path / "keys.yaml"
    path.write_text(broken.format(secret=GLUE_K1))
    with pytest.raises(exceptions.OptionsError) as e:
        async with keymux_in(path):
            pass
    assert str(e.value).startswith("keymux: ")
    for secret in (GLUE_K1, GLUE_K2, GLUE_TOKEN):
        assert secret not in str(e.value)


async def test_a_missing_keys_yaml_is_an_options_error(tmp_path):
    with pytest.raises(exceptions.OptionsError, match="keymux: "):
        async with keymux_in(tmp_path / "nowhere.yaml"):
            pass


async def test_a_broken_keymux_config_change_keeps_the_running_gateway(glue_config, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"keys: [{{name: k1, key: {GLUE_K1}}}")
    async with keymux_in(glue_config) as (addon, tctx):
        gw = addon.gateway
        with pytest.raises(exceptions.OptionsError) as e:
            tctx.configure(addon, keymux_config=str(bad))
        assert GLUE_K1 not in str(e.value)
        assert tctx.options.keymux_config == str(glue_config)  # mitmproxy rolled it back
        assert addon.gateway is gw


async def test_keymux_sender_chooses_the_lean_client_or_aiohttp(glue_config):
    async with keymux_in(glue_config) as (addon, tctx):
        assert addon.upstream.lean  # the default: keymux_sender=lean
        tctx.configure(addon, keymux_sender="aiohttp")
        assert not addon.upstream.lean
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(addon, keymux_sender="curl")
        tctx.configure(addon, keymux_sender="lean")
        assert addon.upstream.lean
