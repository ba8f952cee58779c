# The rayop operator image: `docker build -t rayop:0.1.0 .` (see manifests/deployment.yaml).
# The operator needs no Ray: Ray runs in the clusters' own images.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY api ./api
COPY controller ./controller
RUN pip install . && rm -rf /src

# A fixed non-root UID/GID, matching the Deployment's securityContext.
RUN groupadd --system --gid 65532 rayop \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin rayop
USER 65532:65532
WORKDIR /

EXPOSE 8080
ENTRYPOINT ["rayop", "run"]
