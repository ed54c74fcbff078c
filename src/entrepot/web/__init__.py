"""The web UI: server-rendered pages (Jinja2) for browsing feeds and administering the server."""
