# Stand-in for prom/prometheus:v2.55.1 (deploy/compose.yaml's `prometheus`), for CI machines that reach no
# image registry. Built by tests/containers/run from a `debootstrap --variant=minbase bookworm` base. How it
# differs from the real image:
# - Prometheus 2.42 from Debian's package (the real image: the 2.55.1 release binary on busybox);
# - the same layout compose relies on: ENTRYPOINT the prometheus binary, config under /etc/prometheus,
#   working directory /prometheus (a volume), user nobody. Debian's build stores its data in
#   /var/lib/prometheus/metrics2 by default (the real one: data/ in the working directory, /prometheus/data):
#   that path is a link to /prometheus/data here, so the data lands in the volume as with the real image.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus/data && chown -R nobody:nogroup /prometheus \
 && rm -rf /var/lib/prometheus/metrics2 && ln -s /prometheus/data /var/lib/prometheus/metrics2
WORKDIR /prometheus
USER nobody
EXPOSE 9090
VOLUME ["/prometheus"]
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
