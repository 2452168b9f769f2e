# aol worker image: a wheel built in the first stage, installed into a slim runtime.
# Configuration comes from the environment only (AOL_* variables, DATABASE_URL);
# nothing secret is baked in.

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY aol ./aol
COPY migrations ./migrations
# With uvloop's wheel, so that AOL_EVENT_LOOP=uvloop works in the image (asyncio by default).
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[uvloop]'

FROM python:3.12-slim
RUN useradd --system --create-home --home-dir /home/aol --uid 10001 aol
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER aol
WORKDIR /home/aol
ENV AOL_DATA_DIR=/home/aol/data \
    AOL_HEALTH_PORT=8081 \
    AOL_HEALTH_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["aol"]
CMD ["run"]
