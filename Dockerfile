# The image of both process groups (fly.toml's [processes] choose the command).
# Python is the one the tests run on and requirements.lock was resolved for (make lock).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies exactly as locked: pip refuses a file whose hash differs and a dependency the lock
# does not pin. This layer is rebuilt only when the lock changes.
COPY requirements.lock /tmp/build/
RUN pip install --require-hashes --only-binary :all: -r /tmp/build/requirements.lock

# The project, built by the locked setuptools and installed without resolving anything else;
# `pip check` proves the lock satisfies it.
COPY pyproject.toml README.md /tmp/build/
COPY service /tmp/build/service
COPY jobs /tmp/build/jobs
RUN pip install --no-deps --no-build-isolation --no-index /tmp/build \
    && pip check \
    && rm -rf /tmp/build \
    && useradd --create-home --uid 10001 app

# Run from the installed package, outside any source folder.
WORKDIR /home/app
USER app

EXPOSE 8080 9091
CMD ["python", "-m", "service", "serve"]
