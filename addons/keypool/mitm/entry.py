"""The addon script for an installed keymux (``keymux run`` passes it to ``mitmdump -s``)."""
from keypool.mitm.addon import Keymux

addons = [Keymux()]
