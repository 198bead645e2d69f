"""``paragen serve``: an OpenAI-compatible HTTP server over the public API.

``paragen.serve.app.create_app`` builds the app; it needs the ``serve`` extra (FastAPI,
uvicorn: ``pip install 'paragen[serve]'``). This package's ``__init__`` imports nothing, so
``paragen --help`` works without them.
"""
