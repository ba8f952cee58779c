# The rayop operator image. With a Docker engine: `docker build -t rayop:0.1.0 .` (on python:3.11-slim); without
# one: `make image` (hack/build-image.sh: buildah on a Debian bookworm base made locally, then a check run).
# docs/image.md says what is inside and why. The operator needs no Ray: Ray runs in the clusters' own images.
#
# BASE is the runtime stage's image; BUILD_BASE the stage that installs the operator into a virtualenv (it needs
# `python3 -m venv` with ensurepip). Both must have python3.11 at the same path.
ARG BASE=python:3.11-slim
ARG BUILD_BASE=${BASE}

FROM ${BUILD_BASE} AS build
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY api ./api
COPY controller ./controller
# How pip reaches the package index (a pip.conf, a CA bundle) may come in as build secrets `pipconf` and `pipcert`;
# they are mounted for this step only, so nothing of them lands in a layer. Without them pip uses its defaults.
# pip compiles the installed modules (.pyc) here, so the read-only image never needs to; pip and setuptools leave
# the virtualenv afterwards, and so does kubernetes.aio, the client's asyncio twin (68 MB) that rayop never
# imports. The build stage (sources, wheels, build tools) is not part of the image at all.
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=pipcert \
    set -eu; \
    if [ -s /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi; \
    if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi; \
    python3 -m venv /opt/rayop; \
    /opt/rayop/bin/pip install --no-warn-script-location .; \
    /opt/rayop/bin/pip uninstall -y -q pip setuptools; \
    rm -rf /opt/rayop/bin/activate* /opt/rayop/bin/Activate.ps1 /opt/rayop/lib/python3*/site-packages/kubernetes/aio; \
    /opt/rayop/bin/python -c 'import kubernetes, rayop.cli, rayop.runtime.kube'

FROM ${BASE}
ENV PATH=/opt/rayop/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/rayop /opt/rayop
# A fixed non-root UID/GID, matching the Deployment's securityContext (written directly: slim bases may lack useradd).
RUN echo 'rayop:x:65532:' >> /etc/group \
    && echo 'rayop:x:65532:65532:rayop:/nonexistent:/usr/sbin/nologin' >> /etc/passwd
USER 65532:65532
WORKDIR /

EXPOSE 8080
ENTRYPOINT ["rayop", "run"]
