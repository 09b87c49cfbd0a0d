# One image for every process: worker, beat, flower and the metrics exporter
# (docker-compose.yml picks the command). Build: docker build -t hatz-worker .
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY config ./config
COPY worker ./worker
COPY tasks ./tasks
# The exact versions the suite passed with (requirements/main.txt, with hashes), then the
# package itself. Flower is an optional extra; the image carries it for `celery -A worker flower`.
RUN pip install --require-hashes -r requirements/main.txt
RUN pip install --no-deps ".[flower]"

# Never run as root: a compromised task gets an unprivileged user only.
RUN useradd --system --uid 10001 --no-create-home --home-dir /app hatz
USER hatz

# Celery's warm shutdown on SIGTERM (see docs/operating.md "Stopping and upgrading").
STOPSIGNAL SIGTERM
CMD ["celery", "-A", "worker", "worker", "--loglevel", "INFO"]
