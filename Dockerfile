# syntax=docker/dockerfile:1
# One image for every Strata role: `strata broker`, `strata bookie`, `strata standalone`,
# `strata initialize-cluster` and the client commands (`strata admin`, `strata perf`).
# The k8s/ manifests run it with the role as the first argument.
#
#   docker build -t strata:0.1.0 .
#
# The base is pinned by tag; the generated gRPC stubs (make proto) are built in the builder
# stage, so the runtime stage holds one virtual environment and no build tools.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/strata \
    && /opt/strata/bin/pip install --no-cache-dir "grpcio-tools==1.85.1"
COPY pyproject.toml README.md ./
COPY proto/ proto/
COPY strata/ strata/
COPY broker/ broker/
COPY bookie/ bookie/
COPY tiered/ tiered/
# `make proto` without the .pyi stubs (they serve mypy, not the running code).
# The descriptor set with the .proto comments serves server reflection (broker/reflection.py).
RUN /opt/strata/bin/python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. \
        --include_source_info --descriptor_set_out=strata/v1/api_descriptors.binpb \
        proto/strata/v1/admin.proto proto/strata/v1/messaging.proto \
        proto/strata/storage/v1/bookie.proto \
    && /opt/strata/bin/pip install --no-cache-dir . \
    && /opt/strata/bin/strata --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="strata" \
      org.opencontainers.image.description="Strata: a Pulsar-style messaging system (broker, bookie, standalone, CLI)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/strata/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed numeric uid/gid, so that the manifests' runAsUser/fsGroup match the image.
RUN groupadd --system --gid 10001 strata \
    && useradd --system --uid 10001 --gid strata --no-create-home \
        --home-dir /var/lib/strata --shell /usr/sbin/nologin strata \
    && install -d -o strata -g strata -m 0750 /var/lib/strata
COPY --from=builder /opt/strata /opt/strata
USER 10001:10001
WORKDIR /var/lib/strata
# 6650 broker gRPC, 8080 broker metrics, 3181 bookie gRPC, 8000 bookie metrics.
EXPOSE 6650 8080 3181 8000
ENTRYPOINT ["strata"]
CMD ["--help"]
