# whatsapp-identity-gateway: a slim, non-root image that runs `identity-gateway serve`.
#
#   docker build -t identity-gateway:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9102:9102 \
#     -e IDENTITY_GATEWAY_UPSTREAM_URL=https://whatsapp-webapp.internal:9090 \
#     -e IDENTITY_GATEWAY_UPSTREAM_USERNAME=gateway \
#     -e IDENTITY_GATEWAY_UPSTREAM_PASSWORD \
#     identity-gateway:0.1.0
#
# Settings come from IDENTITY_GATEWAY_* variables (or flags appended to `docker run ... IMAGE`).
# No secret is baked in. Pass the password at run time, as above or through a Kubernetes Secret.
#
# The base image is pinned to an exact Python patch release and Debian release. A digest pin
# (python:3.11.13-slim-bookworm@sha256:<digest>) is better in production, because a tag can be
# re-pushed and a digest cannot. The digest could not be resolved where this file was written, so
# resolve it where a registry is reachable (`docker buildx imagetools inspect <tag>`) and let
# Renovate or Dependabot bump the tag and digest together. Both stages must use the same base so
# the wheels built in the first match the interpreter (CPython 3.11, glibc) of the second.
# Python 3.11 is the version the test suite runs on.

# ---- build: the project's wheel and a wheel for every dependency --------------------------------
FROM python:3.11.13-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel is built from. README.md is the package's long description (pyproject.toml).
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
COPY generated/ generated/

# --only-binary: the slim image has no compiler. A dependency without a wheel for this platform
# fails here, with a clear message, instead of half-way through a source build.
RUN python -m pip wheel --only-binary=:all: --wheel-dir /wheels .

# ---- runtime: the wheels installed into a clean virtual environment -----------------------------
FROM python:3.11.13-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="whatsapp-identity-gateway" \
      org.opencontainers.image.description="gRPC gateway over the WhatsApp Business API's contact identity endpoints" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# A fixed numeric user, so Kubernetes can check runAsNonRoot against the image.
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin gateway

# The wheels are bind-mounted from the build stage rather than copied, so they never end up in a
# layer. The virtual environment has no pip of its own and belongs to root: the gateway's user can
# read it but not change it. pip compiles the bytecode here, so nothing is written at run time
# (the Deployment mounts the root filesystem read-only).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/venv \
 && python -m pip --python /opt/venv/bin/python install --no-index --find-links=/wheels \
        whatsapp-identity-gateway

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IDENTITY_GATEWAY_LISTEN="[::]:50051" \
    IDENTITY_GATEWAY_METRICS_LISTEN="0.0.0.0:9102"

# gRPC (IdentityService, grpc.health.v1.Health, reflection).
EXPOSE 50051
# Prometheus /metrics over HTTP.
EXPOSE 9102

USER 10001:10001

# SIGTERM starts the drain: new RPCs are refused, health goes NOT_SERVING, in-flight RPCs get
# --shutdown-grace seconds, then the process exits 0. A second SIGTERM cancels what is left. The
# gateway handles the signal itself and reaps its own workers (--workers), so it can be PID 1
# without an init such as tini.
STOPSIGNAL SIGTERM

# No HEALTHCHECK: Kubernetes ignores it and probes grpc.health.v1.Health natively (see deploy/).
ENTRYPOINT ["identity-gateway", "serve"]
