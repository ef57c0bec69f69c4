"""keymux's pure core: config, providers, routing, key selection.

Nothing in this package imports mitmproxy except ``keypool.mitm`` (the addon glue).
"""
