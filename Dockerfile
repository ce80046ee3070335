# One image for every process type: the command picks web, worker, beat, flower or migrations.
#   docker build -t orchestrator .
#   docker run --rm -e ORCH_SERVICE_AUTH_SECRET=... -p 127.0.0.1:8080:8080 orchestrator
#   docker run --rm ... orchestrator orchestrator run worker
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first, from the lock file, so code changes reuse this layer.
COPY requirements.lock /tmp/requirements.lock
RUN pip install -r /tmp/requirements.lock && rm /tmp/requirements.lock

# Then the project itself, as an installed package (migrations ship inside it).
COPY . /tmp/src
RUN pip install --no-deps /tmp/src && rm -rf /tmp/src

# Not root. ORCH_STATE_DIR (below) holds the processes' shared metrics files.
RUN useradd --system --create-home --home-dir /app --uid 10001 --user-group orchestrator
USER orchestrator
WORKDIR /app

# Inside a container the web must listen on every interface; publish the port to choose
# who can reach it. Flower's address is set the same way where Flower runs.
ENV ORCH_HOST=0.0.0.0 \
    ORCH_STATE_DIR=/app/state

EXPOSE 8080 5555

CMD ["orchestrator", "run", "web"]
