"""whatsapp-identity-gateway: a gRPC gateway over WhatsApp users' identity changes.

The layers, top to bottom (ARCHITECTURE.md draws the data paths through them):

- :mod:`gateway.app`: the command line, the settings, start-up and the server wiring;
- :mod:`gateway.serving`: the RPC boundary, where requests are checked and failures become
  statuses;
- :mod:`gateway.store` (the cache, single flight, the change bus) and :mod:`gateway.backends`
  (where identities come from: one backend per sender, behind one protocol);
- :mod:`gateway.telemetry`: logs and metrics;
- the kernel: :mod:`gateway.failures`, :mod:`gateway.deadline`, :mod:`gateway.identifiers`,
  :mod:`gateway.contract`.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
