"""What the gateway tells operators: JSON logs and the access log (:mod:`~.logs`), and
Prometheus metrics (:mod:`~.metrics`). Every layer may use it; it uses none of them."""
