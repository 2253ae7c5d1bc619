# syntax=docker/dockerfile:1
# One image for every pinrec workload on Kubernetes: predictor (`pinrec serve`), stream consumer
# (`pinrec consume`), the feast-apply Job and the kind model bootstrap.
#   docker build -t pinrec:dev .
# torch comes from PyTorch's CPU wheel index at the version of requirements.lock (PyPI's wheel carries several
# GB of CUDA libraries); everything else is installed as locked (scripts/install-wheel.sh).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG UV_VERSION=0.13.9
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir "uv==${UV_VERSION}" && python -m venv /opt/venv
ENV UV_PYTHON=/opt/venv/bin/python \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1
WORKDIR /src
# The same steps as tests/test_wheel.py: build the sdist and, from it, the wheel; install the wheel with its
# runtime dependencies held to the lock (torch from the CPU index at the locked version).
COPY requirements.lock pyproject.toml setup.py README.md ./
COPY scripts/install-wheel.sh ./scripts/
COPY pinrec ./pinrec
COPY stream ./stream
COPY featurestore ./featurestore
COPY model ./model
COPY serving ./serving
RUN uv build --out-dir /tmp/dist . \
    && scripts/install-wheel.sh /opt/venv/bin/python /tmp/dist/pinrec-*.whl "${TORCH_INDEX}" \
    && /opt/venv/bin/python -c "import torch, faiss, feast, kserve, pinrec.cli; print('torch', torch.__version__)" \
    && /opt/venv/bin/pinrec --help > /dev/null

FROM ${PYTHON_IMAGE}
# libgomp: OpenMP runtime of faiss and torch (most wheels bundle it; this keeps the image independent of that).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 pinrec \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp/pinrec --shell /usr/sbin/nologin pinrec
COPY --from=builder /opt/venv /opt/venv
# The root filesystem is read-only on Kubernetes: everything that writes goes under /tmp (an emptyDir there).
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp/pinrec \
    PINREC_HOME=/tmp/pinrec \
    MPLCONFIGDIR=/tmp/pinrec/matplotlib \
    FEAST_USAGE=False \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /opt/pinrec
USER 10001:10001
EXPOSE 8080 8081 9400
ENTRYPOINT ["pinrec"]
CMD ["--help"]
