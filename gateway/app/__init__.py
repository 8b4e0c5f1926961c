"""The application: the command line, the configuration, and the wiring of the layers below.

- :mod:`gateway.app.settings`: every ``serve`` setting stated once (flag, variable, default,
  check, help); the parser, the environment and the README table derive from it.
- :mod:`gateway.app.config`: :class:`GatewayConfig`, the validated values.
- :mod:`gateway.app.senders`: the senders file (``--senders``), or flag mode's one sender;
  :mod:`gateway.app.secrets` reads a secret from its file.
- :mod:`gateway.app.startup`: the one step that reads files and builds TLS contexts, and
  each sender's backend.
- :mod:`gateway.app.server`: ``GatewayServer`` and ``serve()``, with health, reflection,
  metrics, webhooks and drain.
- :mod:`gateway.app.cli`, :mod:`gateway.app.client`, :mod:`gateway.app.workers`: the
  ``identity-gateway`` command, its ``get``/``ack``, and ``--workers``.
"""
