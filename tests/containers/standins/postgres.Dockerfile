# Stand-in for postgres:16.6-bookworm (deploy/compose.yaml's `postgres`), for CI machines that reach no image
# registry. Built by tests/containers/run from a `debootstrap --variant=minbase bookworm` base. How it
# differs from the real image:
# - PostgreSQL 15 from Debian (the real image: 16.6 from the PGDG repository);
# - a short entrypoint (postgres-entrypoint.sh) that does what the real one does for the variables compose
#   sets: an empty $PGDATA is initialised with POSTGRES_USER as superuser, POSTGRES_PASSWORD (scram-sha-256
#   from other hosts) and POSTGRES_DB; then postgres listens on every interface. No /docker-entrypoint-initdb.d.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
 && chmod 700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
VOLUME ["/var/lib/postgresql/data"]
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
