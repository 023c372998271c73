# sipserver: SIP edge + registrar (more components arrive with later releases).
FROM python:3.11-slim-bookworm

# MALLOC_ARENA_MAX: the model threads would each get a glibc arena that keeps freed memory;
# two arenas hold the server's resident size down (see docs/security.md, memory per call).
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MALLOC_ARENA_MAX=2
WORKDIR /opt/sipserver
# hatch_build.py: the mypyc build of the signalling modules; this slim image has no C compiler,
# so the install falls back to the pure-Python modules (pip install -v . says so).
COPY pyproject.toml README.md hatch_build.py ./
COPY sipserver ./sipserver
COPY config ./config
RUN pip install . \
 && mkdir -p /etc/sipserver /var/lib/sipserver \
 && cp config/examples/docker.yaml /etc/sipserver/sipserver.yaml \
 && useradd --system --home /var/lib/sipserver sipserver \
 && chown sipserver /var/lib/sipserver

USER sipserver
WORKDIR /var/lib/sipserver
VOLUME ["/var/lib/sipserver"]
# 8080: webhooks, websockets, dashboard, /healthz; 8081: /metrics and /status (keep it private)
EXPOSE 5060/udp 5060/tcp 8080/tcp 8081/tcp
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"
ENTRYPOINT ["sipserver"]
CMD ["run", "--config", "/etc/sipserver/sipserver.yaml", "--log-format", "json"]
