# fedfleet/operator — the FederatedJob operator (kopf) and the aggregator pod's init step (certinit).
#
# Documentation of the real image: it cannot be built here (no container engine or registry in this
# workplace). The local dev cluster's node agent plays this image by running the same entry points from the
# project's virtualenv (e2e/nodeagent/images.yaml). No torch: the operator extra only.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[operator]"

FROM python:3.11-slim
RUN useradd --uid 10001 --create-home fedfleet
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
# The chart sets `command: [python, -m, fedfleet.operator]`; the aggregator pod's init container runs
# `python -m fedfleet.operator.certinit` from this image too.
ENTRYPOINT ["fedfleet"]
CMD ["operator"]
