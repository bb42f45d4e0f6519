FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY jobs ./jobs
RUN pip install . && useradd --create-home --uid 10001 app
USER app

EXPOSE 8080
# fly.toml's [processes] choose the command; this default runs the web process.
CMD ["python", "-m", "service", "serve"]
