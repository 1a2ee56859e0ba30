# fedfleet/aggregator — one job's aggregator: `fedfleet aggregator --config FILE` (gRPC for devices over
# TLS, HTTP /metrics /healthz /readyz, checkpoints in its state volume).
#
# Documentation of the real image: it cannot be built here (no container engine or registry in this
# workplace). The local dev cluster's node agent plays this image by running `fedfleet` from the project's
# virtualenv (e2e/nodeagent/images.yaml). CPU-only torch keeps the image small.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels \
      --extra-index-url https://download.pytorch.org/whl/cpu ".[aggregator]"

FROM python:3.11-slim
RUN useradd --uid 10001 --create-home fedfleet
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
# The operator's pod spec passes `aggregator --config etc/fedfleet/run/aggregator.yaml` with workingDir /.
WORKDIR /
ENTRYPOINT ["fedfleet"]
EXPOSE 50051 9090
