"""The WhatsApp API emulator: a development and test tool, never part of the gateway's runtime.

- :mod:`whatsapp_emulator.emulator`: a real HTTP server behaving like the On-Premises API, with
  an unauthenticated control API under ``/_emulator/`` for tests.
- :mod:`whatsapp_emulator.devserver`: what ``make run`` starts (the emulator and the gateway).

Installed from a checkout only (``pip install ./emulator``; ``make`` does it); ``identity-gateway
emulator`` runs it where it is installed.
"""
