"""Dr.Tech gateway: the only public surface (HTTP JSON API under /api/v1 and the web UI).

Not for clinical use.
"""
