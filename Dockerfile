# A CPU image: the base install (with torch's CPU build) and the demo's extra; runs the demo.
FROM python:3.11-slim
RUN pip install --no-cache-dir "torch==2.9.1" "torchvision==0.24.1" \
        --index-url https://download.pytorch.org/whl/cpu
WORKDIR /opt/prunepass
COPY pyproject.toml README.md ./
COPY prunepass prunepass
COPY passes passes
COPY backends backends
RUN pip install --no-cache-dir ".[demo]"
WORKDIR /work
CMD ["prunepass", "demo"]
