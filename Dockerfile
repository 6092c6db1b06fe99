# Image for deploy/docker-compose.yml (gateways and agents). Node 24 comes from the npm dependency.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm python3 iproute2 util-linux ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/aether
COPY package.json package-lock.json ./
RUN npm ci --omit=dev
COPY . .
ENTRYPOINT []
