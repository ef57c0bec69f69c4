"""keymux: one OpenAI-compatible endpoint over a pool of LLM API keys.

    mitmdump -s addons/keymux.py --mode reverse:https://api.openai.com \
             --listen-host 127.0.0.1 -p 8080 \
             --set keymux_config=config/keys.yaml

mitmproxy re-executes this file on change; the code lives in the keypool package.
"""
from keypool.mitm.addon import Keymux

addons = [Keymux()]
