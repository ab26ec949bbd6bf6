# syntax=docker/dockerfile:1
#
# The credit-ledger image. By default it runs the API (`credit-ledger serve`); the same image runs
# the scheduled jobs (`credit-ledger jobs`) and the migrations (`credit-ledger migrate`).
# TB_ADDRESSES and DATABASE_URL point it at a TigerBeetle cluster and a Postgres server (see
# compose.yaml); without them it runs the embedded engine and an embedded Postgres under /data.

# -- build: the project as a wheel, so the runtime image holds no source tree --------------------
FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels ./clients/python .

# -- runtime ------------------------------------------------------------------------------------
FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CREDIT_LEDGER_DATA_DIR=/data

# The dependencies first, read from pyproject.toml alone, so that a code change reuses this layer
# (the client's distribution, which the service uses for its wire contract, comes as a wheel).
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; deps = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if not d.startswith('credit-ledger-client')))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt /tmp/pyproject.toml

COPY --from=build /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels

# Not root: the service needs no privilege. /data holds the embedded engine and Postgres when
# TB_ADDRESSES / DATABASE_URL are not set.
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin credit \
    && mkdir -p /data && chown credit:credit /data
USER credit
WORKDIR /data

EXPOSE 8080
# Healthy means the service can go on by itself (GET /healthz is 200; 503 once it cannot
# recover: an engine that will not come back, a background task that ended). /readyz is the
# readiness probe: it is 503 for the moment the engine restarts too, which is no reason to
# restart the container. The slim image has no curl; Python's urllib raises on a 503 or a
# refused connection, which fails the check.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

CMD ["credit-ledger", "serve", "--host", "0.0.0.0", "--port", "8080"]
