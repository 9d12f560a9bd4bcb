FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY agents ./agents
COPY schemas ./schemas
COPY config ./config
RUN pip install --no-cache-dir -e .
ENTRYPOINT ["riverbed"]
CMD ["worker", "-c", "/app/config/riverbed.toml"]
