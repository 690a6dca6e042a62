# syntax=docker/dockerfile:1
# One image for every Forwarder component (operator, beat, worker, api, flower); the Helm chart
# picks the component with the container command.
#
#   make image                  # docker build -t forwarder:dev .
#
# Stage 1 builds the wheel and installs it, with its dependencies, into a virtualenv.
# Stage 2 copies only that virtualenv onto a clean base: no compilers, no build tools, no
# source tree, and a non-root user.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm
# The release, from pyproject.toml's version (`make image` passes it; tests/test_release.py keeps
# this default equal to it). The build stage refuses a wheel of another version.
ARG FORWARDER_VERSION=0.1.0

FROM ${PYTHON_IMAGE} AS build
ARG FORWARDER_VERSION
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY operator ./operator
COPY api ./api
# A wheel, never an editable install: the image must not depend on this source tree.
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
 && test -f "/dist/forwarder-${FORWARDER_VERSION}-py3-none-any.whl" \
 && python -m venv /opt/forwarder \
 && /opt/forwarder/bin/pip install /dist/forwarder-*.whl

FROM ${PYTHON_IMAGE} AS runtime
ARG FORWARDER_VERSION
LABEL org.opencontainers.image.title="forwarder" \
      org.opencontainers.image.version="${FORWARDER_VERSION}" \
      org.opencontainers.image.description="Scheduled and on-demand Python tasks on Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
# Same numeric user and group as the chart's podSecurityContext (runAsNonRoot needs a number).
# /var/lib/forwarder is the user's, for a volume to keep the exported run history in
# (FORWARDER_HISTORY_DIR, as compose.yaml sets it): a new Docker volume takes its owner.
RUN groupadd --system --gid 10001 forwarder \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/forwarder --create-home \
      --shell /usr/sbin/nologin forwarder \
 && install -d -o 10001 -g 10001 /var/lib/forwarder
COPY --from=build /opt/forwarder /opt/forwarder
# PYTHONSAFEPATH keeps the working directory off sys.path, so nothing in it can shadow a module.
ENV PATH=/opt/forwarder/bin:$PATH \
    PYTHONSAFEPATH=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/forwarder
# A working directory that holds no code; the chart mounts /tmp as the only writable path.
WORKDIR /home/forwarder
USER 10001:10001
EXPOSE 7500 7501 8080
# The chart sets the command of each component; alone, the image shows the CLI's help.
CMD ["forwarder", "--help"]
