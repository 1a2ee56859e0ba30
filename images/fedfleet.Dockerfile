# fedfleet/fedfleet — the fleet gateway (`fedfleet gateway --config FILE`: gRPC for devices and publishers over
# TLS, HTTP /metrics /healthz /readyz) and its pod's init step (`python -m fedfleet.gateway.certinit`).
#
# Documentation of the real image: it cannot be built here (no container engine or registry in this
# workplace). The local dev cluster's node agent plays this image by running `fedfleet` from the project's
# virtualenv (e2e/nodeagent/images.yaml). No torch: the gateway moves and checks artifacts, it never runs them.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[gateway]"

FROM python:3.11-slim
RUN useradd --uid 10001 --create-home fedfleet
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
# The chart passes `fedfleet gateway --config etc/fedfleet/gateway/run/gateway.yaml` with workingDir /.
WORKDIR /
ENTRYPOINT ["fedfleet"]
EXPOSE 7443 9464
