"""Gateways that outlive the addon instance.

mitmproxy re-executes the ``-s`` script when it changes, creating a new addon, but keeps
imported modules: keeping the gateway here lets key state survive a script reload.
"""
from __future__ import annotations

from ..config import Config
from ..gateway import Gateway

_gateways: dict[str, Gateway] = {}


def gateway_for(path: str, config: Config, admin_token: str | None = None) -> Gateway:
    gw = _gateways.get(path)
    if gw is None:
        gw = _gateways[path] = Gateway(config, admin_token=admin_token)
    else:
        gw.update(config)
        gw.admin_token = admin_token or None
    return gw
