# syntax=docker/dockerfile:1
# shim: configured by its environment (README "Container"). The base image is pinned by digest
# (python:3.11-slim, i.e. 3.11.16-slim-trixie, at the time it was pinned); dependencies come
# hash-checked from requirements.lock, so a rebuild installs the same bytes.
FROM python:3.11-slim@sha256:be1575ed968de893bd54f4c56315ff7c4736ce522c1bca08fd521731aafc0d76 AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY deploy/install.sh ./deploy/install.sh
COPY shim ./shim
RUN sh deploy/install.sh /opt/shim /src

FROM python:3.11-slim@sha256:be1575ed968de893bd54f4c56315ff7c4736ce522c1bca08fd521731aafc0d76
RUN useradd --create-home --uid 10001 shim \
    && mkdir -p /var/lib/shim \
    && chown 10001:10001 /var/lib/shim
COPY --from=build /opt/shim /opt/shim
# SHIM_HOST wins over server.host of a config file; the SQLite store (the default
# sqlite:///./shim.db) lands in the working directory, the volume. Set SHIM_CONFIG to a mounted
# config file, SHIM_PUBLIC_URL to the URL clients use, SHIM_PORT / SHIM_STORE_URL to override.
ENV PATH=/opt/shim/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SHIM_HOST=0.0.0.0
WORKDIR /var/lib/shim
VOLUME ["/var/lib/shim"]
USER 10001
EXPOSE 8080
# Probes /healthz on the effective host and port (SHIM_CONFIG, SHIM_PORT ...), not a fixed one.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 CMD ["shim", "healthcheck"]
ENTRYPOINT ["shim"]
CMD ["serve"]
